"""Constructor arguments of the upstream backbones that ours also accept.

:class:`~.swin.CFSwinTransformer` takes the arguments of MMDetection's ``SwinTransformer`` and
:class:`~.vit.CFVisionTransformer` those of MMSegmentation's ``VisionTransformer``, so that a config
of either switches by ``type`` alone. The arguments both sides spell the same way share one
parameter; the ones only upstream has are checked here: an argument our backbone honours is
translated (``norm_cfg`` to a norm class, ``pretrained`` to ``init_cfg``), one it cannot honour is
refused with one line naming it and what to do.
"""
import functools
import warnings
from typing import Any, Callable, List, Mapping, Optional, Union

from torch import nn

#: ``norm_cfg`` types that build ``nn.LayerNorm`` in mmcv's registry.
LAYER_NORM_TYPES = ('LN', 'LayerNorm')


def refuse(owner: str, arg: str, value: Any, what_to_do: str) -> ValueError:
    """The one-line error for an upstream argument our backbone cannot honour."""
    return ValueError(f'{owner} does not support {arg}={value!r}; {what_to_do}')


def norm_layer_from_cfg(norm_cfg: Optional[Mapping[str, Any]],
                        owner: str) -> Callable[[int], nn.Module]:
    """``norm_cfg`` (``dict(type='LN', eps=...)``, mmcv's spelling) → a LayerNorm class.

    Raises:
        ValueError: for another norm type or keys other than ``type``, ``eps`` and
            ``requires_grad=True``.
    """
    if norm_cfg is None:
        return nn.LayerNorm
    cfg = dict(norm_cfg)
    if cfg.get('type') not in LAYER_NORM_TYPES or cfg.get('requires_grad', True) is not True or \
            set(cfg) - {'type', 'eps', 'requires_grad'}:
        raise refuse(owner, 'norm_cfg', norm_cfg,
                     "its layers are LayerNorms: use dict(type='LN') with an optional eps")
    if 'eps' in cfg:
        return functools.partial(nn.LayerNorm, eps=float(cfg['eps']))
    return nn.LayerNorm


def check_act_cfg(act_cfg: Optional[Mapping[str, Any]], owner: str) -> None:
    """Only GELU (``dict(type='GELU')``, the upstream default) is built by our MLPs."""
    if act_cfg is not None and dict(act_cfg) != {'type': 'GELU'}:
        raise refuse(owner, 'act_cfg', act_cfg, "its MLPs use GELU: use dict(type='GELU') or "
                     'leave act_cfg out')


def init_cfg_from_pretrained(pretrained: Optional[str],
                             init_cfg: Optional[Union[dict, List[dict]]],
                             owner: str) -> Optional[Union[dict, List[dict]]]:
    """Upstream's deprecated ``pretrained=PATH`` as ``init_cfg=dict(type='Pretrained', ...)``.

    MMSegmentation's ``EncoderDecoder`` still passes a config's ``model.pretrained`` to the
    backbone this way.

    Raises:
        ValueError: both given, or ``pretrained`` not a str.
    """
    if pretrained is None:
        return init_cfg
    if not isinstance(pretrained, str):
        raise ValueError(f'{owner}: pretrained must be a checkpoint path or URL (str), got '
                         f'{type(pretrained).__name__}')
    if init_cfg:
        raise ValueError(f'{owner}: give either pretrained or init_cfg, not both (pretrained='
                         f"PATH means init_cfg=dict(type='Pretrained', checkpoint=PATH))")
    warnings.warn(f'{owner}: pretrained is deprecated, use init_cfg=dict(type=\'Pretrained\', '
                  f'checkpoint=...)', DeprecationWarning, stacklevel=3)
    return dict(type='Pretrained', checkpoint=pretrained)


__all__ = ['check_act_cfg', 'init_cfg_from_pretrained', 'norm_layer_from_cfg', 'refuse']
