"""Loading a checkpoint into a backbone: read, select, convert, check, load.

The one path of every family, from ``init_cfg=dict(type='Pretrained', checkpoint=...,
prefix=...)`` to ``load_state_dict``; each file is entered once:

1. :meth:`BackboneBase.init_weights <.base.BackboneBase.init_weights>` →
   :meth:`~.base.BackboneBase.load_pretrained` (``base.py``) hands the checkpoint to
   :func:`load_backbone_checkpoint` (this module), which
2. reads a path or URL with :func:`crossformer_mm.compat.checkpoint.load_weights`
   (weights-only, unless the file is a training checkpoint whose signature verifies; a refusal
   names the family's converter tool),
3. selects the backbone's tensors with :func:`backbone_state_dict` (the one ``prefix`` rule),
4. maps them to the model's key names and shapes with the family's
   :meth:`convert_state_dict <.base.BackboneBase.convert_state_dict>` (``crossformer.py``,
   ``swin.py``, ``vit.py``: the key mapping lives next to the model, as in timm), and
5. loads them with :func:`load_checked_state_dict`, which refuses shape or structure mismatches
   naming the first offending key and logs every missing and unexpected key.
"""
import logging
from collections import OrderedDict
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

from mmengine.logging import print_log
from torch import Tensor, nn

from ...compat.checkpoint import load_weights

__all__ = ['backbone_state_dict', 'load_backbone_checkpoint', 'load_checked_state_dict',
           'unwrap_checkpoint']


def unwrap_checkpoint(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a checkpoint (``state_dict`` / ``model`` / ``module`` key or bare)."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    for key in ('state_dict', 'model', 'module'):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def backbone_state_dict(checkpoint: Mapping[str, Any],
                        prefix: Optional[str] = None) -> 'OrderedDict[str, Tensor]':
    """The backbone's tensors in a checkpoint: the one ``prefix`` rule of every family.

    Unwraps ``state_dict`` / ``model`` / ``module`` (:func:`unwrap_checkpoint`), drops non-tensor
    entries and a leading ``module.`` (DataParallel), then keeps the keys that start with
    ``prefix``, with it removed. ``prefix=None`` means ``'backbone.'`` when any key starts with it
    (a detector, segmentor or classifier checkpoint) and everything otherwise (a bare backbone).
    Used by :func:`load_backbone_checkpoint` and by the families' ``convert_*_checkpoint``
    functions (the converter tools).

    Raises:
        ValueError: if ``prefix`` is given and no key starts with it.
    """
    sd = unwrap_checkpoint(checkpoint)
    items = [(k[len('module.'):] if k.startswith('module.') else k, v) for k, v in sd.items()
             if isinstance(v, Tensor)]
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k, _ in items) else ''
    out = OrderedDict((k[len(prefix):], v) for k, v in items if k.startswith(prefix))
    if not out:
        raise ValueError(f'no checkpoint key starts with prefix {prefix!r} (first keys: '
                         f'{[k for k, _ in items[:3]]})')
    return out


def load_backbone_checkpoint(model: nn.Module, checkpoint: Union[str, Mapping[str, Any]],
                             strict: bool = False, prefix: Optional[str] = None,
                             strict_structure: bool = True,
                             logger: Union[str, logging.Logger] = 'current'
                             ) -> Tuple[List[str], List[str]]:
    """Read, select, convert and load a checkpoint into a backbone (steps 2–5 above).

    The body of :meth:`BackboneBase.load_pretrained <.base.BackboneBase.load_pretrained>`, whose
    docstring describes the arguments; ``model`` is a :class:`~.base.BackboneBase`.
    """
    src = checkpoint if isinstance(checkpoint, str) else '<dict>'
    if isinstance(checkpoint, str):
        checkpoint = load_weights(checkpoint, map_location='cpu', converter=model.converter_tool)
    state_dict = model.convert_state_dict(backbone_state_dict(checkpoint, prefix), logger)
    return load_checked_state_dict(model, state_dict, src, model.structural_keys, strict=strict,
                                   strict_structure=strict_structure, logger=logger,
                                   optional=model.optional_keys)


def load_checked_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], src: str,
                            structural: Sequence[str], strict: bool = False,
                            strict_structure: bool = True,
                            logger: Union[str, logging.Logger] = 'current',
                            optional: Sequence[str] = ()) -> Tuple[List[str], List[str]]:
    """Load ``state_dict`` into ``model`` non-strictly, but refuse what cannot be right.

    Args:
        model: The backbone.
        state_dict: Converted state dict (the model's key names).
        src: Where it came from, for messages.
        structural: Key prefixes that describe the architecture (``'layers.'``, ...): with
            ``strict_structure``, a key under them present on one side only is an error (a
            checkpoint of another depth); other missing/unexpected keys (norms, heads) are logged.
        strict: Raise if any key is missing or unexpected.
        strict_structure: See ``structural``.
        logger: mmengine logger name or logger.
        optional: Key suffixes of model entries that may be missing under ``structural`` (their
            initialisation is kept), e.g. relative-position tables a plain checkpoint lacks.

    Returns:
        ``(missing_keys, unexpected_keys)``.

    Raises:
        ValueError: naming the first key whose shape differs, or the first structural key on one
            side only.
        KeyError: with ``strict`` and missing / unexpected keys.
    """
    own = model.state_dict()
    for k, v in own.items():
        if k in state_dict and state_dict[k].shape != v.shape:
            raise ValueError(f'checkpoint {src}: key {k!r} has shape {tuple(state_dict[k].shape)} '
                             f'but the model expects {tuple(v.shape)} (a checkpoint of another '
                             f'variant or configuration?)')
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if strict_structure:
        prefixes = tuple(structural)
        extra = [k for k in unexpected if k.startswith(prefixes)]
        lacking = [k for k in missing
                   if k.startswith(prefixes) and not k.endswith(tuple(optional))]
        if extra or lacking:
            first = (f'key {extra[0]!r} is in the checkpoint but not in the model' if extra else
                     f'model key {lacking[0]!r} is not in the checkpoint')
            raise ValueError(f'checkpoint {src} does not match the model: {first} '
                             f'({len(extra)} such extra and {len(lacking)} such missing keys; a '
                             f'checkpoint of another variant?)')
    model.load_state_dict(state_dict, strict=False)
    print_log(f'loaded {len(state_dict) - len(unexpected)} tensors from {src} into '
              f'{type(model).__name__}', logger=logger)
    for k in missing:
        print_log(f'missing key in checkpoint {src}: {k}', logger=logger, level=logging.WARNING)
    for k in unexpected:
        print_log(f'unexpected key in checkpoint {src}: {k}', logger=logger,
                  level=logging.WARNING)
    if strict and (missing or unexpected):
        raise KeyError(f'checkpoint {src}: {len(missing)} missing keys (first: '
                       f'{missing[:1]}), {len(unexpected)} unexpected (first: {unexpected[:1]})')
    return missing, unexpected
