"""The backbone contract shared by every backbone (CrossFormer, Swin, ViT).

:class:`BackboneBase` owns the ``arch`` table lookup; ``out_indices`` / ``frozen_stages``
validation; the stage loop (:meth:`~BackboneBase.forward_stages`) with the optional output norms
``norm{i}``; :meth:`~BackboneBase.output_shape` (one :class:`ShapeSpec`, channels and stride, per
output), which detectors and necks read; frozen stages and ``norm_eval``; the SDPA / explicit
attention switch; and the entry of checkpoint loading (:meth:`~BackboneBase.load_pretrained`, also
behind ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``), whose path is described
in :mod:`.loading`.
"""
import logging
from collections import OrderedDict
from typing import (Any, Callable, ClassVar, Dict, FrozenSet, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import Attention
from ..utils import moved_names
from .loading import load_backbone_checkpoint


class ShapeSpec(NamedTuple):
    """Channels and stride (input pixels per output position) of one backbone output, as
    detectron2's ``ShapeSpec``. ``stride`` is None for a ``(B, C)`` feature vector."""

    channels: int
    stride: Optional[int]


class BackboneBase(BaseModule):
    """The backbone contract of the package.

    A backbone is a sequence of stages (:meth:`stage_modules`; hierarchical stages return
    ``(output, input of the next stage)``, plain ones one tensor). ``forward`` returns the
    outputs of the stages in ``out_indices``, in that order, each after its output norm
    ``norm{i}`` when the backbone has them; :meth:`output_shape` declares their channels and
    strides, one :class:`ShapeSpec` per output, so that detectors and necks need not guess.

    Subclasses set :attr:`arch_zoo`, :attr:`arch_aliases`, :attr:`arch_required`,
    :attr:`arch_optional`, :attr:`converter_tool` and :attr:`structural_keys`; in ``__init__``
    they call :meth:`_init_outputs` first, set :attr:`num_features` and :attr:`strides` (one entry
    per stage), build the modules (:meth:`_add_out_norms` for ``norm{i}``) and end with
    :meth:`_freeze_stages`. They implement :meth:`convert_checkpoint` and may override
    :meth:`stage_modules`, :meth:`_frozen_params`, :meth:`_init_extra`,
    :meth:`_adapt_checkpoint` and :meth:`output_shape`.
    """

    arch_zoo: ClassVar[Dict[str, Dict[str, Any]]] = {}
    arch_aliases: ClassVar[Dict[str, str]] = {}
    arch_required: ClassVar[FrozenSet[str]] = frozenset()
    arch_optional: ClassVar[FrozenSet[str]] = frozenset()
    #: ``tools/model_converters/<name>.py``, named in the error for an untrusted pickle.
    converter_tool: ClassVar[str] = ''
    #: Key prefixes that describe the architecture (see :func:`.loading.load_checked_state_dict`).
    structural_keys: ClassVar[Tuple[str, ...]] = ()
    #: Key suffixes that may be missing under :attr:`structural_keys` (initialisation kept).
    optional_keys: ClassVar[Tuple[str, ...]] = ()
    frozen_stages: int
    norm_eval: bool
    num_classes: int
    num_stages: int
    out_indices: Tuple[int, ...]
    out_norms: bool
    #: Channels of each stage's output.
    num_features: List[int]
    #: Stride of each stage's output.
    strides: List[int]

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def _resolve_arch(cls, arch: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
        """The settings of a named variant, or a checked custom dict."""
        if isinstance(arch, str):
            name = cls.arch_aliases.get(arch.lower(), arch.lower())
            if name not in cls.arch_zoo:
                valid = sorted(cls.arch_zoo) + sorted(cls.arch_aliases)
                raise ValueError(f'unknown arch {arch!r} for {cls.__name__}; valid: {valid} or a '
                                 f'dict')
            return dict(cls.arch_zoo[name])
        if not isinstance(arch, Mapping):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        required, allowed = set(cls.arch_required), set(cls.arch_required | cls.arch_optional)
        missing, unknown = required - set(arch), set(arch) - allowed
        if missing or unknown:
            raise ValueError(f'custom arch needs keys {sorted(required)} and may have '
                             f'{sorted(allowed - required)}; missing {sorted(missing)}, '
                             f'unknown {sorted(unknown)}')
        return dict(arch)

    def _init_outputs(self, num_stages: int, out_indices: Union[int, Sequence[int]],
                      frozen_stages: int, norm_eval: bool) -> None:
        """Check and set ``num_stages``, ``out_indices`` (an int or increasing indices; negative
        ones count from the end), ``frozen_stages`` (-1 … ``num_stages``) and ``norm_eval``.

        Raises:
            ValueError: naming the argument and its valid range.
        """
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if not indices:
            raise ValueError('out_indices must name at least one stage')
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int) or not -num_stages <= i < num_stages:
                raise ValueError(f'out_indices must be in [-{num_stages}, {num_stages - 1}], got '
                                 f'{out_indices}')
        indices = [i % num_stages for i in indices]
        if any(a >= b for a, b in zip(indices, indices[1:])):
            raise ValueError(f'out_indices must be increasing (the outputs come in stage order), '
                             f'got {out_indices}')
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or \
                not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages}')
        self.num_stages = num_stages
        self.out_indices = tuple(indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_norms = False

    def _add_out_norms(self, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        """Add the output norms ``norm{i}`` (over ``num_features[i]``) of the ``out_indices``."""
        for i in self.out_indices:
            self.add_module(f'norm{i}', norm_layer(self.num_features[i]))
        self.out_norms = True

    def stage_modules(self) -> Sequence[nn.Module]:
        """The stages, in order (default ``self.layers``)."""
        return self.layers

    # ---------------------------------------------------------------- the contract
    def output_shape(self) -> List[ShapeSpec]:
        """Channels and stride of each output of ``forward``, in order."""
        return [ShapeSpec(self.num_features[i], self.strides[i]) for i in self.out_indices]

    def forward_stages(self, x: Tensor, *args: Any, final_norm: Optional[nn.Module] = None,
                       with_cp: bool = False) -> Tuple[List[Tensor], Tensor]:
        """Run the stages on ``x`` (``args`` go to every stage).

        Args:
            x: Input of the first stage.
            *args: Extra arguments of every stage call.
            final_norm: Applied to the last stage's output (which is also the returned last
                output), or None.
            with_cp: Gradient checkpointing of each stage in training.

        Returns:
            (outputs of the ``out_indices`` stages, each after ``norm{i}`` if the backbone has
            output norms; the last stage's output).
        """
        stages = self.stage_modules()
        outs: List[Tensor] = []
        for i, stage in enumerate(stages):
            if with_cp and self.training and x.requires_grad:
                out = cp.checkpoint(stage, x, *args, use_reentrant=False)
            else:
                out = stage(x, *args)
            feat, x = out if isinstance(out, tuple) else (out, out)
            if i == len(stages) - 1 and final_norm is not None:
                feat = x = final_norm(feat)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(feat) if self.out_norms else feat)
        return outs, x

    # ---------------------------------------------------------------- freezing, modes
    def _frozen_modules(self) -> List[nn.Module]:
        """Modules frozen by ``frozen_stages``: the embedding (``patch_embed``, ``pos_drop``),
        the first ``frozen_stages`` stages and their output norms."""
        frozen: List[nn.Module] = [self.patch_embed, self.pos_drop]
        for i, stage in enumerate(self.stage_modules()[:self.frozen_stages]):
            frozen.append(stage)
            if self.out_norms and i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        return frozen

    def _frozen_params(self) -> List[nn.Parameter]:
        """Parameters outside :meth:`_frozen_modules` that are frozen too (e.g. embeddings)."""
        return []

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        params = self._frozen_params()
        for m in self._frozen_modules():
            m.eval()
            params += list(m.parameters())
        for p in params:
            p.requires_grad = False

    def train(self, mode: bool = True) -> 'BackboneBase':
        """Set train mode, keeping frozen stages (and BatchNorms if ``norm_eval``) in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def set_fused_attn(self, fused_attn: bool) -> None:
        """Set ``fused_attn`` of every attention: ``F.scaled_dot_product_attention`` (True) or
        the explicit softmax (False)."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused_attn = fused_attn

    def forward_head(self, feats: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        """Logits of a hierarchical backbone from its last stage map (``forward``'s last output):
        average pool + ``head``. Needs ``num_classes > 0`` and the last stage in
        ``out_indices``."""
        if self.num_classes <= 0:
            raise RuntimeError('forward_head needs num_classes > 0')
        if self.num_stages - 1 not in self.out_indices:
            raise RuntimeError(f'forward_head needs the last stage in out_indices, got '
                               f'{self.out_indices}')
        x = feats if isinstance(feats, Tensor) else feats[-1]
        return self.head(x.mean(dim=(2, 3)))

    # ---------------------------------------------------------------- weights
    @staticmethod
    def _init_module(m: nn.Module) -> None:
        """timm / official init: trunc-normal Linear, zero biases, unit LayerNorm."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _init_extra(self) -> None:
        """Family-specific initialisation (position tables, tokens) run before the Linear init."""

    def convert_state_dict(self, state_dict: 'OrderedDict[str, Tensor]',
                           logger: Union[str, logging.Logger]) -> 'OrderedDict[str, Tensor]':
        """The family's step of loading: the backbone's tensors of a checkpoint (any supported
        layout, already selected by :func:`.loading.backbone_state_dict`) → this model's key
        names and shapes (e.g. resized position tables, logged)."""
        raise NotImplementedError

    def load_pretrained(self, checkpoint: Union[str, Mapping[str, Any]], strict: bool = False,
                        prefix: Optional[str] = None, strict_structure: bool = True,
                        logger: Union[str, logging.Logger] = 'current'
                        ) -> Tuple[List[str], List[str]]:
        """Load a public or converted checkpoint of this family, reporting every key.

        The one loading path of every backbone (:func:`.loading.load_backbone_checkpoint`): read
        the file, select the backbone's entries (``prefix``, default ``'backbone.'`` when the
        checkpoint has such keys), convert them to this model (:meth:`convert_state_dict`) and
        load them (:func:`.loading.load_checked_state_dict`).

        Args:
            checkpoint: Path, URL, checkpoint dict or state dict.
            strict: Raise if any key is missing or unexpected (they are always logged).
            prefix: Keep only the keys that start with it, stripped (e.g. ``'backbone.'`` for a
                detector checkpoint); see :func:`.loading.backbone_state_dict`.
            strict_structure: Refuse a checkpoint whose :attr:`structural_keys` entries differ
                from the model's (another depth or variant); other missing or extra entries
                (norms, heads) are only logged.
            logger: mmengine logger name or logger.

        Returns:
            ``(missing_keys, unexpected_keys)``.

        Raises:
            ValueError: naming the first key whose shape differs, or with ``strict_structure``
                the first structural key on one side only; a ``prefix`` no key starts with.
            KeyError: with ``strict`` and missing / unexpected keys.
        """
        return load_backbone_checkpoint(self, checkpoint, strict=strict, prefix=prefix,
                                        strict_structure=strict_structure, logger=logger)

    def init_weights(self) -> None:
        """Official init, or ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise KeyError("init_cfg of type 'Pretrained' needs a 'checkpoint' entry")
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'))
            self._is_init = True
            return
        self._init_extra()
        self.apply(self._init_module)
        super().init_weights()


__all__ = ['BackboneBase', 'ShapeSpec']

#: Checkpoint helpers that lived here before :mod:`.loading` (deprecated aliases).
__getattr__ = moved_names(__name__, {
    name: f'crossformer_mm.models.backbones.loading:{name}'
    for name in ('backbone_state_dict', 'load_checked_state_dict', 'unwrap_checkpoint')})
