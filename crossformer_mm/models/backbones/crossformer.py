"""CrossFormer and CrossFormer++ backbones for classification, detection and segmentation.

Papers: *CrossFormer: A Versatile Vision Transformer Hinging on Cross-scale Attention* (Wang et al.,
ICLR 2022) and *CrossFormer++* (Wang et al., TPAMI 2023). Follows the official code
(github.com/cheerss/CrossFormer, branches ``crossformer`` and ``main``) for the architecture and the
state-dict key names, so official checkpoints load as they are (after
:func:`convert_crossformer_state_dict`); the code itself is written anew on the package's shared
layers.

Differences from the official code, all on inputs the official code rejects or handles by
accident:

* Any input size: the image is zero-padded to a multiple of 4 and odd maps to even before each
  merge, so the stage outputs are ``ceil(H/4) … ceil(H/32)``; inside the blocks maps are padded to
  the group geometry and padded keys are masked (as the official dense backbones do).
* The original code permanently rewrites a block's group size after seeing a small map; here the
  geometry is computed per forward from the map size.

One class, :class:`CrossFormer`, serves every task; variants are rows of
:attr:`CrossFormer.arch_zoo`.
"""
import logging
import math
from collections import OrderedDict
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple,
                    Union)

import torch
import torch.utils.checkpoint as cp
from torch import Tensor, nn

from crossformer_mm.models.layers import (Attention, CrossScaleEmbed, CrossScalePatchMerging,
                                          DropPath, DynamicPosBias, Mlp, group_partition,
                                          group_reverse, pad_to_multiple, padding_mask_groups)
from crossformer_mm.registry import register_model

from ..utils import moved_names
from .base import BackboneBase
from .loading import backbone_state_dict

LDA_MODES = ('crossformer', 'main')


# --------------------------------------------------------------------------------------------
# Group geometry
# --------------------------------------------------------------------------------------------
class GroupGeometry(NamedTuple):
    """How one block groups an ``H×W`` map: group size, interval, padding and its mask."""

    group: Tuple[int, int]
    interval: int
    multiple: Tuple[int, int]
    pad: Tuple[int, int]
    key_padding_mask: Optional[Tensor]


def group_geometry(hw: Tuple[int, int], group_size: int, interval: int, lda: bool,
                   lda_mode: str, device: Optional[torch.device] = None) -> GroupGeometry:
    """Grouping of an ``H×W`` map for an SDA (``lda=False``) or LDA block.

    * ``min(H, W) <= G``: attention over the whole map (SDA). ``main`` uses one ``H×W`` group
      (the official code pads to a ``max(H, W)`` square and masks, which is the same function
      since the position bias depends only on offsets); ``crossformer`` uses ``m×m`` windows,
      ``m = min(H, W)``, as the original code.
    * SDA: ``G×G`` windows, map padded to a multiple of ``G``.
    * LDA ``main``: ``G×G`` groups at interval ``I``, map padded to a multiple of ``G·I``.
    * LDA ``crossformer``: ``(Hp/I)×(Wp/I)`` groups at interval ``I``, map padded to a multiple of
      ``I``.
    """
    h, w = hw
    if min(h, w) <= group_size:
        if lda_mode == 'main':
            group, step, multiple = (h, w), 1, (h, w)
        else:
            m = min(h, w)
            group, step, multiple = (m, m), 1, (m, m)
    elif not lda:
        group, step, multiple = (group_size, group_size), 1, (group_size, group_size)
    elif lda_mode == 'main':
        group, step = (group_size, group_size), interval
        multiple = (group_size * interval, group_size * interval)
    else:
        hp, wp = math.ceil(h / interval) * interval, math.ceil(w / interval) * interval
        group, step, multiple = (hp // interval, wp // interval), interval, (interval, interval)
    pad = ((-h) % multiple[0], (-w) % multiple[1])
    mask = padding_mask_groups((h + pad[0], w + pad[1]), pad, group, step, device)
    return GroupGeometry(group, step, multiple, pad, mask)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class CrossFormerAttention(Attention):
    """Group attention with CrossFormer's dynamic position bias (``attn.pos.*``).

    Args:
        dim: Channels.
        num_heads: Heads.
        dpb_residual: Residual form of the DPB MLP.
        **attn_args: Forwarded to :class:`~crossformer_mm.models.layers.Attention`
            (``qkv_bias``, ``qk_scale``, ``attn_drop``, ``proj_drop``, ``fused_attn``).
    """

    def __init__(self, dim: int, num_heads: int, dpb_residual: bool = False,
                 **attn_args: Any) -> None:
        super().__init__(dim, num_heads, **attn_args)
        self.pos = DynamicPosBias((dim // 4) // 4, num_heads, residual=dpb_residual)

    def forward_groups(self, x: Tensor, geometry: GroupGeometry) -> Tensor:
        """Attention within the groups of ``x`` ``(B_, N, C)`` laid out by ``geometry``."""
        return self.forward(x, attn_bias=self.pos(geometry.group),
                            key_padding_mask=geometry.key_padding_mask)


class CrossFormerBlock(nn.Module):
    """CrossFormer block: SDA or LDA with DPB, MLP, optional cooling layer (CrossFormer++).

    Args:
        dim: Channels.
        num_heads: Heads.
        group_size: ``G``.
        interval: LDA interval ``I``.
        lda: Long-distance (True) or short-distance (False) attention.
        lda_mode: ``'crossformer'`` (original grouping) or ``'main'``.
        mlp_ratio: MLP hidden ratio.
        qkv_bias: qkv bias.
        qk_scale: Logit scale override.
        drop: Dropout after proj and in the MLP.
        attn_drop: Attention dropout.
        drop_path: Stochastic depth rate.
        dpb_residual: Residual DPB.
        use_acl: Adaptive cooling layer: the block output is replaced by
            ``LayerNorm(depthwise3x3(x))`` (``ex_conv``, ``ex_ln``), no skip.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the explicit softmax (False);
            see :class:`~crossformer_mm.models.layers.Attention`.
        norm_layer: Norm class.
        act_layer: MLP activation class.
    """

    def __init__(self, dim: int, num_heads: int, group_size: int, interval: int, lda: bool,
                 lda_mode: str = 'crossformer', mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, dpb_residual: bool = False, use_acl: bool = False,
                 fused_attn: bool = True,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.dim = dim
        self.group_size = group_size
        self.interval = interval
        self.lda = lda
        self.lda_mode = lda_mode
        self.use_acl = use_acl
        self.norm1 = norm_layer(dim)
        self.attn = CrossFormerAttention(dim, num_heads, dpb_residual=dpb_residual,
                                         qkv_bias=qkv_bias, qk_scale=qk_scale,
                                         attn_drop=attn_drop, proj_drop=drop,
                                         fused_attn=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        if use_acl:
            self.ex_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.ex_ln = norm_layer(dim)

    def geometry(self, hw: Tuple[int, int], device: torch.device,
                 cache: Optional[Dict[tuple, GroupGeometry]] = None) -> GroupGeometry:
        """Grouping for an ``H×W`` map, memoised in ``cache`` (shared by a stage's blocks)."""
        key = (hw, self.group_size, self.interval, self.lda, self.lda_mode)
        if cache is not None and key in cache:
            return cache[key]
        geo = group_geometry(hw, self.group_size, self.interval, self.lda, self.lda_mode, device)
        if cache is not None:
            cache[key] = geo
        return geo

    def forward(self, x: Tensor, cache: Optional[Dict[tuple, GroupGeometry]] = None) -> Tensor:
        """``(B, H, W, C)`` → ``(B, H, W, C)``."""
        b, h, w, c = x.shape
        geo = self.geometry((h, w), x.device, cache)
        shortcut = x
        x, _ = pad_to_multiple(self.norm1(x), geo.multiple)
        hp, wp = x.shape[1], x.shape[2]
        groups = group_partition(x, geo.group, geo.interval)
        groups = self.attn.forward_groups(groups, geo)
        x = group_reverse(groups, geo.group, geo.interval, (hp, wp))
        if hp != h or wp != w:
            x = x[:, :h, :w]
        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_acl:
            x = self.ex_ln(self.ex_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return x

    def extra_repr(self) -> str:
        kind = 'LDA' if self.lda else 'SDA'
        return (f'{kind}, group_size={self.group_size}, interval={self.interval}, '
                f'lda_mode={self.lda_mode}, use_acl={self.use_acl}')


class CrossFormerStage(nn.Module):
    """A stage: blocks alternating SDA (even) / LDA (odd), then an optional patch merging.

    Args:
        dim: Channels.
        depth: Number of blocks.
        num_heads: Heads.
        group_sizes: Group size of each block (length ``depth``).
        interval: LDA interval.
        drop_paths: Stochastic depth rate of each block.
        downsample: Merging module applied after the blocks, or None.
        use_acl: Put a cooling layer after every 3rd block except the last (CrossFormer++).
        with_cp: Gradient checkpointing of each block in training.
        **block_args: Forwarded to :class:`CrossFormerBlock`.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, group_sizes: Sequence[int],
                 interval: int, drop_paths: Sequence[float],
                 downsample: Optional[nn.Module] = None, use_acl: bool = False,
                 with_cp: bool = False, **block_args: Any) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.blocks = nn.ModuleList(
            CrossFormerBlock(dim, num_heads, group_sizes[i], interval, lda=i % 2 == 1,
                             drop_path=drop_paths[i],
                             use_acl=use_acl and (i + 1) % 3 == 0 and i < depth - 1, **block_args)
            for i in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(B, H, W, C)`` → (stage output ``(B, H, W, C)``, merged map or the output)."""
        cache: Dict[tuple, GroupGeometry] = {}
        for blk in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(blk, x, cache, use_reentrant=False)
            else:
                x = blk(x, cache)
        return x, (self.downsample(x) if self.downsample is not None else x)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def _arch(embed_dim: int, depths: Tuple[int, ...], num_heads: Tuple[int, ...],
          drop_path_rate: float, pp: bool = False) -> Dict[str, Any]:
    if pp:
        return dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads,
                    group_size=(4, 4, 14, 7), interval=(4, 2, 1, 1), use_acl=True,
                    lda_mode='main', drop_path_rate=drop_path_rate)
    return dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, group_size=(7, 7, 7, 7),
                interval=(8, 4, 2, 1), use_acl=False, lda_mode='crossformer',
                drop_path_rate=drop_path_rate)


@register_model()
class CrossFormer(BackboneBase):
    """CrossFormer / CrossFormer++ backbone (one class for classification, detection, segmentation).

    Args:
        arch: A name of :attr:`arch_zoo` (``tiny``/``t``, ``small``/``s``, ``base``/``b``,
            ``large``/``l``, ``pp-small``/``pp-s``, ``pp-base``, ``pp-large``, ``pp-huge``) or a
            dict with ``embed_dim``, ``depths``, ``num_heads`` and optionally ``group_size``,
            ``interval``, ``use_acl``, ``lda_mode``, ``drop_path_rate``.
        in_channels: Image channels.
        patch_kernels: Kernel sizes of the cross-scale embedding (stride 4).
        merge_kernels: Kernel sizes of each of the three patch mergings (stride 2).
        group_size: Per stage: an int, or a sequence with one size per block. Overrides the arch.
        interval: LDA interval per stage. Overrides the arch.
        lda_mode: ``'crossformer'`` (original grouping, default for T/S/B/L; the released
            detection/segmentation checkpoints expect it) or ``'main'`` (default for ++).
        use_acl: Adaptive cooling layers (CrossFormer++). Overrides the arch.
        mlp_ratio: MLP hidden ratio.
        qkv_bias: Bias of the qkv projection.
        qk_scale: Attention logit scale override.
        drop_rate: Dropout rate.
        attn_drop_rate: Attention dropout rate.
        drop_path_rate: Stochastic depth (linear over blocks); default from the arch.
        dpb_residual: Residual dynamic position bias.
        patch_norm: LayerNorm after the embedding.
        out_indices: Stages whose outputs are returned (increasing; negative counts from the
            end); :meth:`output_shape` gives their channels and strides (4, 8, 16, 32).
        frozen_stages: Freeze the embedding (0) and stages ``< frozen_stages`` (with their
            ``norm{i}``); -1 freezes nothing.
        norm_eval: Keep BatchNorm layers (if a custom norm uses them) in eval mode in training.
        out_norms: Add a LayerNorm ``norm{i}`` on each returned stage (new weights).
        final_norm: Add ``norm`` on the last stage, as the official classification model;
            default ``num_classes > 0``.
        num_classes: > 0 adds the official ``head`` Linear, used by :meth:`forward_head`.
        with_cp: Gradient checkpointing of the blocks.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the explicit softmax (False)
            in every attention; see :class:`~crossformer_mm.models.layers.Attention`.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=path)`` loads a
            (converted or official) checkpoint with :meth:`load_pretrained` (``prefix``
            optional).
    """

    arch_zoo: Dict[str, Dict[str, Any]] = {
        'tiny': _arch(64, (1, 1, 8, 6), (2, 4, 8, 16), 0.1),
        'small': _arch(96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
        'base': _arch(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
        'large': _arch(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5),
        'pp-small': _arch(64, (2, 2, 18, 2), (2, 4, 8, 16), 0.2, pp=True),
        'pp-base': _arch(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3, pp=True),
        'pp-large': _arch(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5, pp=True),
        'pp-huge': _arch(128, (6, 6, 18, 2), (4, 8, 16, 32), 0.5, pp=True),
    }
    arch_aliases: Dict[str, str] = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large',
                                    'pp-s': 'pp-small', 'pp-b': 'pp-base', 'pp-l': 'pp-large',
                                    'pp-h': 'pp-huge'}
    arch_required = frozenset({'embed_dim', 'depths', 'num_heads'})
    arch_optional = frozenset({'group_size', 'interval', 'use_acl', 'lda_mode',
                               'drop_path_rate'})
    converter_tool = 'crossformer_to_mm'
    structural_keys = ('patch_embed.', 'layers.')

    def __init__(self, arch: Union[str, Mapping[str, Any]] = 'small', in_channels: int = 3,
                 patch_kernels: Sequence[int] = (4, 8, 16, 32),
                 merge_kernels: Sequence[Sequence[int]] = ((2, 4), (2, 4), (2, 4)),
                 group_size: Optional[Sequence[Union[int, Sequence[int]]]] = None,
                 interval: Optional[Sequence[int]] = None, lda_mode: Optional[str] = None,
                 use_acl: Optional[bool] = None, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: Optional[float] = None,
                 dpb_residual: bool = False, patch_norm: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, out_norms: bool = False,
                 final_norm: Optional[bool] = None, num_classes: int = 0, with_cp: bool = False,
                 fused_attn: bool = True,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = self._resolve_arch(arch)
        self.arch_settings = cfg
        self.embed_dim = embed_dim = int(cfg['embed_dim'])
        depths = tuple(int(d) for d in cfg['depths'])
        num_heads = tuple(int(h) for h in cfg['num_heads'])
        n_st = len(depths)
        self._init_outputs(n_st, out_indices, frozen_stages, norm_eval)
        self.depths = depths
        self._check_len('num_heads', num_heads, n_st)
        group_size = tuple(group_size if group_size is not None else cfg.get('group_size',
                                                                             (7,) * n_st))
        interval = tuple(interval if interval is not None else cfg.get(
            'interval', tuple(2 ** (n_st - 1 - i) for i in range(n_st))))
        self._check_len('group_size', group_size, n_st)
        self._check_len('interval', interval, n_st)
        if len(merge_kernels) != n_st - 1:
            raise ValueError(f'merge_kernels must have {n_st - 1} entries (one per merging), '
                             f'got {len(merge_kernels)}')
        block_groups = []
        for i, (g, d) in enumerate(zip(group_size, depths)):
            sizes = (int(g),) * d if isinstance(g, int) else tuple(int(s) for s in g)
            if len(sizes) != d:
                raise ValueError(f'group_size[{i}] must be an int or have one entry per block '
                                 f'({d}), got {g}')
            block_groups.append(sizes)
        self.group_size = tuple(block_groups)
        self.interval = tuple(int(i) for i in interval)
        if any(i < 1 for i in self.interval) or any(g < 1 for s in block_groups for g in s):
            raise ValueError(f'group_size and interval must be >= 1, got {group_size}, {interval}')
        self.lda_mode = lda_mode if lda_mode is not None else cfg.get('lda_mode', 'crossformer')
        if self.lda_mode not in LDA_MODES:
            raise ValueError(f'lda_mode must be one of {LDA_MODES}, got {self.lda_mode!r}')
        self.use_acl = bool(use_acl if use_acl is not None else cfg.get('use_acl', False))
        drop_path_rate = (drop_path_rate if drop_path_rate is not None
                          else cfg.get('drop_path_rate', 0.1))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.final_norm = num_classes > 0 if final_norm is None else final_norm
        self.num_features = [embed_dim * 2 ** i for i in range(n_st)]
        self.strides = [4 * 2 ** i for i in range(n_st)]

        self.patch_embed = CrossScaleEmbed(in_channels, embed_dim, patch_kernels, stride=4,
                                           norm_layer=nn.LayerNorm if patch_norm else None)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i in range(n_st):
            dim = self.num_features[i]
            downsample = (CrossScalePatchMerging(dim, 2 * dim, merge_kernels[i], stride=2)
                          if i < n_st - 1 else None)
            self.layers.append(CrossFormerStage(
                dim, depths[i], num_heads[i], block_groups[i], self.interval[i],
                dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=downsample,
                use_acl=self.use_acl, with_cp=with_cp, lda_mode=self.lda_mode,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, dpb_residual=dpb_residual, fused_attn=fused_attn))
        if out_norms:
            self._add_out_norms()
        if self.final_norm:
            self.norm = nn.LayerNorm(self.num_features[-1])
        if num_classes > 0:
            self.head = nn.Linear(self.num_features[-1], num_classes)
        self._freeze_stages()

    # ---------------------------------------------------------------- construction helpers
    @staticmethod
    def _check_len(name: str, value: Sequence[Any], n: int) -> None:
        if len(value) != n:
            raise ValueError(f'{name} must have one entry per stage ({n}), got {tuple(value)}')

    def convert_state_dict(self, state_dict: 'OrderedDict[str, Tensor]',
                           logger: Union[str, logging.Logger]) -> 'OrderedDict[str, Tensor]':
        """Official key names are this model's: only the dropped buffers differ."""
        return convert_crossformer_state_dict(state_dict)

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images ``(B, C, H, W)`` → the ``out_indices`` stage maps ``(B, C_i, ⌈H/2^(i+2)⌉, …)``."""
        if x.ndim != 4:
            raise ValueError(f'CrossFormer expects a 4-D (B, C, H, W) input, got shape '
                             f'{tuple(x.shape)}')
        outs, _ = self.forward_stages(self.pos_drop(self.patch_embed(x)),
                                      final_norm=self.norm if self.final_norm else None)
        return tuple(f.permute(0, 3, 1, 2).contiguous() for f in outs)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
DROPPED_SUFFIXES = ('attn.biases', 'attn.relative_position_index', 'attn_mask')


def convert_crossformer_state_dict(state_dict: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The backbone's tensors of an official CrossFormer checkpoint → state dict of
    :class:`CrossFormer`: the key names are the official ones already; the position-index buffers
    (``attn.biases``, ``attn.relative_position_index``) that the model rebuilds are dropped."""
    return OrderedDict((k, v) for k, v in state_dict.items() if not k.endswith(DROPPED_SUFFIXES))


def convert_crossformer_checkpoint(checkpoint: Mapping[str, Any],
                                   prefix: Optional[str] = None) -> 'OrderedDict[str, Tensor]':
    """Official CrossFormer checkpoint (any task) → state dict of :class:`CrossFormer` (what
    ``tools/model_converters/crossformer_to_mm.py`` writes).

    Selects the backbone's entries with :func:`~.loading.backbone_state_dict` (unwraps
    ``state_dict`` / ``model``, strips ``module.``, keeps the ``prefix`` entries, by default the
    ``backbone.`` ones of detector / segmentor checkpoints), then
    :func:`convert_crossformer_state_dict`.
    """
    return convert_crossformer_state_dict(backbone_state_dict(checkpoint, prefix))


__all__ = ['CrossFormer', 'CrossFormerBlock', 'CrossFormerStage', 'CrossFormerAttention',
           'group_geometry', 'convert_crossformer_checkpoint', 'convert_crossformer_state_dict']

#: ``load_crossformer_checkpoint(model, ...)`` is ``model.load_pretrained(...)`` (deprecated).
__getattr__ = moved_names(__name__, {
    'load_crossformer_checkpoint':
        'crossformer_mm.models.backbones.base:BackboneBase.load_pretrained'})
