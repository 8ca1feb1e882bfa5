"""The backbone contract and the plumbing shared by every backbone (CrossFormer, Swin, ViT).

* :class:`BackboneBase` — the ``arch`` table lookup; ``out_indices`` / ``frozen_stages``
  validation; the stage loop (:meth:`~BackboneBase.forward_stages`) with the optional output norms
  ``norm{i}``; :meth:`~BackboneBase.output_shape`, the channels and stride of each output, which
  detectors and necks read; frozen stages and ``norm_eval``; the SDPA / explicit attention switch;
  one checkpoint loader (:meth:`~BackboneBase.load_pretrained`, also behind
  ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``);
* checkpoint helpers — :func:`unwrap_checkpoint`, :func:`backbone_state_dict` (the one ``prefix``
  rule of every family), :func:`read_weights_file` (weights-only unless the file is a trusted
  training checkpoint, see :mod:`crossformer_mm.compat.checkpoint`) and
  :func:`load_checked_state_dict`, which refuses shape or structure mismatches naming the first
  offending key and logs every missing and unexpected key;
* :func:`run_converter_cli` — the body of ``tools/model_converters/*_to_mm.py``.
"""
import argparse
import logging
import os
import sys
from collections import OrderedDict
from typing import (Any, Callable, ClassVar, Dict, FrozenSet, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import torch
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...compat.checkpoint import WEIGHTS_ONLY_TOOL, CheckpointLoadError, load_weights
from ..layers import Attention


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
    #: Key prefixes that describe the architecture (see :func:`load_checked_state_dict`).
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

    def convert_checkpoint(self, checkpoint: Mapping[str, Any],
                           prefix: Optional[str] = None) -> 'OrderedDict[str, Tensor]':
        """A checkpoint of this family (any supported layout) → this model's key names."""
        raise NotImplementedError

    def _adapt_checkpoint(self, state_dict: 'OrderedDict[str, Tensor]',
                          logger: Union[str, logging.Logger]) -> 'OrderedDict[str, Tensor]':
        """Fit converted entries to this model (e.g. resize position tables); logs changes."""
        return state_dict

    def load_pretrained(self, checkpoint: Union[str, Mapping[str, Any]], strict: bool = False,
                        prefix: Optional[str] = None, strict_structure: bool = True,
                        logger: Union[str, logging.Logger] = 'current'
                        ) -> Tuple[List[str], List[str]]:
        """Load a public or converted checkpoint of this family, reporting every key.

        The one loading path of every backbone: read the file (:func:`read_weights_file`),
        select the backbone's entries (:func:`backbone_state_dict`: ``prefix``, default
        ``'backbone.'`` when the checkpoint has such keys), convert the key names
        (:meth:`convert_checkpoint`), fit them to the model (:meth:`_adapt_checkpoint`) and load
        them (:func:`load_checked_state_dict`). The family functions
        ``load_crossformer_checkpoint``, ``load_swin_checkpoint`` and ``load_vit_checkpoint`` are
        this method
        (``load_swin_checkpoint(model, ...)`` = ``model.load_pretrained(...)``).

        Args:
            checkpoint: Path, checkpoint dict or state dict.
            strict: Raise if any key is missing or unexpected (they are always logged).
            prefix: Keep only the keys that start with it, stripped (e.g. ``'backbone.'`` for a
                detector checkpoint); see :func:`backbone_state_dict`.
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
        src = checkpoint if isinstance(checkpoint, str) else '<dict>'
        ckpt = (read_weights_file(checkpoint, self.converter_tool)
                if isinstance(checkpoint, str) else checkpoint)
        sd = self._adapt_checkpoint(self.convert_checkpoint(ckpt, prefix=prefix), logger)
        return load_checked_state_dict(self, sd, src, self.structural_keys, strict=strict,
                                       strict_structure=strict_structure, logger=logger,
                                       optional=self.optional_keys)

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


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
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


def read_weights_file(path: str, converter: str) -> Any:
    """Read a checkpoint for a backbone loader: a local file, or an ``http(s)://`` URL downloaded
    once into the torch hub cache (``$TORCH_HOME/hub/checkpoints``).

    Weights load weights-only; a local training checkpoint whose signature verifies loads in full
    (see :mod:`crossformer_mm.compat.checkpoint`); anything else is refused with a hint to convert
    it with ``tools/model_converters/{converter}.py --unsafe-pickle``.
    """
    try:
        return load_weights(path, map_location='cpu')
    except CheckpointLoadError as err:
        raise CheckpointLoadError(str(err).replace(WEIGHTS_ONLY_TOOL,
                                                   f'tools/model_converters/{converter}.py')
                                  ) from None


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


def run_converter_cli(convert: Callable[[Mapping[str, Any]], Mapping[str, Tensor]], name: str,
                      doc: str, argv: Optional[List[str]] = None,
                      post: Optional[Callable[[argparse.Namespace, Mapping[str, Tensor]],
                                              Mapping[str, Tensor]]] = None,
                      add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """``SRC DST [--unsafe-pickle]``: convert a public checkpoint into a weights-only file.

    Args:
        convert: The family's converter (checkpoint dict → state dict).
        name: The tool's name (``crossformer_to_mm``), recorded in the output's ``meta``.
        doc: The tool's module docstring (its first line is the description).
        argv: Arguments (default ``sys.argv[1:]``).
        post: Optional transformation of the converted state dict given the parsed arguments.
        add_args: Adds tool-specific options to the parser.

    Returns:
        The exit status (1 with an ``error:`` line on a bad input file).
    """
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument('src', help='public checkpoint (.pth)')
    parser.add_argument('dst', help='output weights file')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='load SRC with weights_only=False (training checkpoints pickle more '
                        'than tensors); only for files you trust')
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.src):
        print(f'error: {args.src} does not exist', file=sys.stderr)
        return 1
    try:
        ckpt = torch.load(args.src, map_location='cpu', weights_only=not args.unsafe_pickle)
    except Exception as err:
        hint = '' if args.unsafe_pickle else '; rerun with --unsafe-pickle if you trust the file'
        print(f'error: cannot read {args.src} ({err.__class__.__name__}: '
              f'{str(err).strip().splitlines()[0] if str(err).strip() else ""}){hint}',
              file=sys.stderr)
        return 1
    try:
        state_dict = convert(ckpt)
        if post is not None:
            state_dict = post(args, state_dict)
    except (TypeError, ValueError, KeyError) as err:
        print(f'error: {args.src}: {err}', file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    meta = {'source': os.path.basename(args.src), 'converter': name}
    torch.save({'state_dict': state_dict, 'meta': meta}, args.dst)
    n = sum(v.numel() for v in state_dict.values())
    print(f'wrote {len(state_dict)} tensors ({n:,} values) to {args.dst}')
    return 0


__all__ = ['BackboneBase', 'ShapeSpec', 'backbone_state_dict', 'load_checked_state_dict',
           'read_weights_file', 'run_converter_cli', 'unwrap_checkpoint']
