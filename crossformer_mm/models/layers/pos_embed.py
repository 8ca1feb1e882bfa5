"""Position-embedding resizing and ViTDet's decomposed relative position.

* :func:`resize_abs_pos_embed` — a ViT absolute position embedding ``(1, P + gh·gw, C)`` (``P``
  prefix tokens such as the class token) resized to another token grid, the way MMSegmentation's
  ``VisionTransformer.resize_pos_embed`` does (``F.interpolate``, ``align_corners=False``), so that
  a model built on it gives MMSegmentation's results at any input size.
* :func:`resize_rel_pos_bias_table` — a Swin relative-position-bias table of one window size
  resized (bicubic over the ``(2Wh−1)×(2Ww−1)`` offset grid) to another, as MMDetection does when it
  loads a checkpoint of another window size.
* :func:`get_rel_pos` / :func:`decomposed_rel_pos_bias` — ViTDet's decomposed relative position
  (Li et al., ECCV 2022; detectron2 ``modeling/backbone/utils.py``): separate learned tables along
  H and W, combined with the query into an additive bias.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_abs_pos_embed(pos_embed: Tensor, new_hw: Tuple[int, int],
                         old_hw: Optional[Tuple[int, int]] = None, num_prefix_tokens: int = 1,
                         mode: str = 'bicubic') -> Tensor:
    """Resize an absolute position embedding to another token grid.

    Args:
        pos_embed: ``(1, P + gh·gw, C)``; the first ``P`` rows (class/distillation tokens) are
            kept as they are.
        new_hw: Target grid ``(h, w)``.
        old_hw: Grid of ``pos_embed``; default: the square grid its length implies.
        num_prefix_tokens: ``P``.
        mode: ``F.interpolate`` mode (``align_corners=False``).

    Returns:
        ``(1, P + h·w, C)``; ``pos_embed`` itself when the grid does not change.

    Raises:
        ValueError: if the length does not match ``old_hw`` (or is not square without it).
    """
    if pos_embed.ndim != 3:
        raise ValueError(f'pos_embed must be (1, L, C), got {tuple(pos_embed.shape)}')
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_hw is None:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f'pos_embed has {n} grid tokens (after {num_prefix_tokens} prefix '
                             f'tokens), not a square; pass old_hw')
        old_hw = (side, side)
    if old_hw[0] * old_hw[1] != n:
        raise ValueError(f'pos_embed has {n} grid tokens, but old_hw={old_hw}')
    if tuple(new_hw) == tuple(old_hw):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    grid = grid.reshape(1, old_hw[0], old_hw[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_hw), mode=mode, align_corners=False)
    grid = grid.to(pos_embed.dtype).flatten(2).transpose(1, 2)
    return torch.cat((prefix, grid), dim=1)


def resize_rel_pos_bias_table(table: Tensor, new_window: Tuple[int, int],
                              old_window: Optional[Tuple[int, int]] = None) -> Tensor:
    """Resize a Swin table ``((2Wh−1)(2Ww−1), heads)`` to another window size (bicubic).

    ``old_window`` defaults to the square window the table length implies.
    """
    length, heads = table.shape
    if old_window is None:
        side = int(round(length ** 0.5))
        if side * side != length:
            raise ValueError(f'table of length {length} is not square; pass old_window')
        old = (side, side)
    else:
        old = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    new = (2 * new_window[0] - 1, 2 * new_window[1] - 1)
    if old == new:
        return table
    grid = table.t().reshape(1, heads, old[0], old[1]).float()
    grid = F.interpolate(grid, size=new, mode='bicubic', align_corners=False)
    return grid.reshape(heads, -1).t().contiguous().to(table.dtype)


def get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Relative-position embeddings ``(q_size, k_size, C)`` of every (query, key) pair on one axis.

    ``rel_pos`` ``(L, C)`` is linearly resized to ``2·max(q_size, k_size) − 1`` rows if needed
    (ViTDet's behaviour for another window or input size).
    """
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=max_dist, mode='linear')
        rel_pos = rel_pos.squeeze(0).t()
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[rel.long()]


def decomposed_rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor,
                            q_hw: Tuple[int, int], k_hw: Tuple[int, int]) -> Tensor:
    """ViTDet's decomposed relative-position bias.

    Args:
        q: Unscaled queries ``(B_, heads, qh·qw, d)``.
        rel_pos_h: Table along H, ``(2·size_h − 1, d)``.
        rel_pos_w: Table along W, ``(2·size_w − 1, d)``.
        q_hw: Query grid ``(qh, qw)``.
        k_hw: Key grid ``(kh, kw)``.

    Returns:
        Additive bias ``(B_, heads, qh·qw, kh·kw)``:
        ``bias[(i, j), (k, l)] = q_ij · Rh[i, k] + q_ij · Rw[j, l]``.
    """
    qh, qw = q_hw
    kh, kw = k_hw
    rh = get_rel_pos(qh, kh, rel_pos_h).to(q.dtype)
    rw = get_rel_pos(qw, kw, rel_pos_w).to(q.dtype)
    b, heads, _, d = q.shape
    r_q = q.reshape(b, heads, qh, qw, d)
    rel_h = torch.einsum('bnhwc,hkc->bnhwk', r_q, rh)
    rel_w = torch.einsum('bnhwc,wkc->bnhwk', r_q, rw)
    bias = rel_h[..., :, None] + rel_w[..., None, :]
    return bias.reshape(b, heads, qh * qw, kh * kw)


__all__ = ['resize_abs_pos_embed', 'resize_rel_pos_bias_table', 'get_rel_pos',
           'decomposed_rel_pos_bias']
