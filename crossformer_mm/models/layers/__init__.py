"""Pieces shared by every backbone: attention, position biases, embeddings, partitions.

Stable API (used by CrossFormer, Swin and ViT):

* :class:`Attention` — ``qkv``/``proj`` multi-head attention over token groups with a
  ``fused_attn`` switch (SDPA with bias and masks folded into ``attn_mask``, or explicit softmax);
  takes an additive ``attn_bias`` ``(heads, N, N)`` / ``(n, heads, N, N)``, a per-group
  ``attn_mask`` ``(n, N, N)`` and a ``key_padding_mask`` ``(n, N)``; :func:`fold_attn_mask`
  (through :func:`build_attn_mask`) folds them.
* :class:`DynamicPosBias` (CrossFormer DPB), :class:`RelativePositionBias` (Swin table),
  :func:`relative_position_index`, :func:`relative_offsets` (cached per group size).
* :class:`CrossScaleEmbed` (multi- or single-kernel patch embedding, pads to the stride),
  :class:`CrossScalePatchMerging` (norm + strided convs), :func:`split_channels`.
* :func:`pad_to_multiple`, :func:`group_partition` / :func:`group_reverse` (CrossFormer SDA and
  both LDA groupings), :func:`window_partition` / :func:`window_reverse` (the one window split:
  pad, Swin's shift, crop; used by Swin and ViTDet), :func:`padding_mask_groups`.
* Masks: boolean, True where a query may not attend a key (padding, Swin's shifted windows,
  DETR's masks); they become one additive float mask with :func:`mask_value`, a large finite
  negative (so that a fully masked row gives a uniform softmax, not NaN).
* :class:`Mlp`, :class:`DropPath`, :func:`drop_path`, :func:`to_2tuple`.
* :func:`add_sdpa_handle` / :func:`sdpa_flop_jit`: count fused attention in mmengine's FlopAnalyzer.
* :class:`PatchMerging` (Swin: space-to-depth, norm over 4C, linear), :func:`shifted_window_mask`
  (Swin's shifted windows), :func:`resize_abs_pos_embed`,
  :func:`resize_rel_pos_bias_table`,
  :func:`get_rel_pos` / :func:`decomposed_rel_pos_bias` (ViTDet).
"""
from .attention import Attention, build_attn_mask, fold_attn_mask, mask_value
from .drop import DropPath, drop_path
from .embed import CrossScaleEmbed, CrossScalePatchMerging, split_channels
from .flops import SDPA_OP, add_sdpa_handle, sdpa_flop_jit
from .merging import PatchMerging
from .mlp import Mlp
from .partition import (group_partition, group_reverse, pad_amount, pad_to_multiple,
                        padding_mask_groups, to_2tuple, window_partition, window_reverse)
from .pos_bias import (DynamicPosBias, RelativePositionBias, relative_offsets,
                       relative_position_index)
from .pos_embed import (decomposed_rel_pos_bias, get_rel_pos, resize_abs_pos_embed,
                        resize_rel_pos_bias_table)
from .window import shifted_window_mask

__all__ = [
    'Attention', 'build_attn_mask', 'fold_attn_mask', 'mask_value', 'DropPath', 'drop_path',
    'CrossScaleEmbed', 'CrossScalePatchMerging', 'split_channels', 'Mlp', 'group_partition',
    'group_reverse', 'pad_amount', 'pad_to_multiple', 'padding_mask_groups', 'to_2tuple',
    'window_partition', 'window_reverse', 'DynamicPosBias', 'RelativePositionBias',
    'relative_offsets', 'relative_position_index', 'PatchMerging', 'shifted_window_mask',
    'resize_abs_pos_embed', 'resize_rel_pos_bias_table', 'get_rel_pos', 'decomposed_rel_pos_bias',
    'SDPA_OP', 'add_sdpa_handle', 'sdpa_flop_jit'
]
