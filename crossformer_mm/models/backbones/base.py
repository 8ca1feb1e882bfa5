"""Plumbing shared by every backbone of the package (CrossFormer, Swin, ViT).

* :class:`BackboneBase` — the ``arch`` table lookup, frozen stages, ``norm_eval``, the SDPA /
  explicit attention switch, and ``init_cfg=dict(type='Pretrained', checkpoint=...)`` routed to
  the family's own loader;
* checkpoint helpers — :func:`unwrap_checkpoint`, :func:`read_weights_file` (weights-only unless
  the file is a trusted training checkpoint, see :mod:`crossformer_mm.compat.checkpoint`) and
  :func:`load_checked_state_dict`, which refuses shape or structure mismatches naming the first
  offending key and logs every missing and unexpected key;
* :func:`run_converter_cli` — the body of ``tools/model_converters/*_to_mm.py``.
"""
import argparse
import logging
import os
import sys
from collections import OrderedDict
from typing import (Any, Callable, ClassVar, Dict, FrozenSet, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...compat.checkpoint import CheckpointLoadError, load_weights
from ..layers import Attention, Mlp


class BackboneBase(BaseModule):
    """Base of the package's backbones.

    Subclasses set :attr:`arch_zoo`, :attr:`arch_aliases`, :attr:`arch_required` and
    :attr:`arch_optional`, implement :meth:`_frozen_modules` and :meth:`load_pretrained`, and may
    extend :meth:`_frozen_params` and :meth:`_init_extra`. They must set ``frozen_stages`` and
    ``norm_eval`` before calling :meth:`_freeze_stages`.
    """

    arch_zoo: ClassVar[Dict[str, Dict[str, Any]]] = {}
    arch_aliases: ClassVar[Dict[str, str]] = {}
    arch_required: ClassVar[FrozenSet[str]] = frozenset()
    arch_optional: ClassVar[FrozenSet[str]] = frozenset()
    frozen_stages: int
    norm_eval: bool
    num_classes: int
    num_stages: int
    out_indices: Tuple[int, ...]

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

    # ---------------------------------------------------------------- freezing, modes
    def _frozen_modules(self) -> List[nn.Module]:
        """Modules frozen by ``frozen_stages`` (called only when it is >= 0)."""
        raise NotImplementedError

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

    def set_fused_attn(self, fused: bool) -> None:
        """Switch every attention and MLP between the fast path (True) and the plain path
        (False: explicit softmax attention, whole-tensor ``F.linear`` layers)."""
        for m in self.modules():
            if isinstance(m, Attention):
                m.fused = fused
            elif isinstance(m, Mlp):
                m.fast = fused

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

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None) -> None:
        """Load a public or converted checkpoint of this family (``init_cfg`` Pretrained)."""
        raise NotImplementedError

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


def strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> 'OrderedDict[str, Any]':
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return OrderedDict((k[len(prefix):], v) for k, v in state_dict.items() if k.startswith(prefix))


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
        raise CheckpointLoadError(str(err).replace('tools/model_converters/*_to_mm.py',
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


__all__ = ['BackboneBase', 'load_checked_state_dict', 'read_weights_file', 'run_converter_cli',
           'strip_prefix', 'unwrap_checkpoint']
