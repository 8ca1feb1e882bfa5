"""Relative position biases for grouped attention.

* :class:`DynamicPosBias` — CrossFormer's dynamic position bias (DPB, Wang et al., ICLR 2022,
  official code ``cheerss/CrossFormer``): an MLP maps every relative offset ``(Δh, Δw)`` of a
  group to one bias per head, so one module serves any group size (plain and residual forms).
* :class:`RelativePositionBias` — Swin's learned table (Liu et al., ICCV 2021) of
  ``(2Wh−1)(2Ww−1)`` biases per head for a fixed window, indexed by relative offset.

Offsets and pair indices depend only on the group size; they are built once per size
(:func:`relative_offsets` / :func:`relative_position_index` are cached) instead of in every forward.
"""
from functools import lru_cache
from typing import Tuple

import torch
from torch import Tensor, nn

from .partition import IntPair, to_2tuple


@lru_cache(maxsize=64)
def _offsets_cpu(gh: int, gw: int) -> Tensor:
    dh = torch.arange(1 - gh, gh)
    dw = torch.arange(1 - gw, gw)
    grid = torch.stack(torch.meshgrid(dh, dw, indexing='ij'))  # 2, 2gh-1, 2gw-1
    return grid.flatten(1).t().contiguous().float()


@lru_cache(maxsize=64)
def _index_cpu(gh: int, gw: int) -> Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing='ij'))
    coords = coords.flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
    return ((rel[..., 0] + gh - 1) * (2 * gw - 1) + rel[..., 1] + gw - 1).contiguous()


def relative_offsets(group_size: IntPair, device: torch.device = torch.device('cpu')) -> Tensor:
    """All relative offsets of a ``Gh×Gw`` group, ``((2Gh−1)(2Gw−1), 2)`` float, Δh-major.

    Cached per group size (and moved to ``device`` on use).
    """
    gh, gw = to_2tuple(group_size, 'group_size')
    return _offsets_cpu(gh, gw).to(device)


def relative_position_index(group_size: IntPair,
                            device: torch.device = torch.device('cpu')) -> Tensor:
    """Index ``(N, N)`` into the offset table for each (query, key) pair of a ``Gh×Gw`` group.

    ``index[i, j] = (h_i − h_j + Gh − 1)·(2Gw − 1) + (w_i − w_j + Gw − 1)``, the layout of Swin's
    ``relative_position_index`` and of CrossFormer. Cached per group size.
    """
    gh, gw = to_2tuple(group_size, 'group_size')
    return _index_cpu(gh, gw).to(device)


class DynamicPosBias(nn.Module):
    """CrossFormer's dynamic position bias: ``(Δh, Δw) → heads`` biases through a small MLP.

    ``pos_proj: Linear(2→p)``, then ``pos1``, ``pos2``, ``pos3`` = ``[LayerNorm, ReLU,
    Linear]``, the last to ``num_heads``; parameter names are the official ones (``pos1.0`` is
    the LayerNorm, ``pos1.2`` the Linear).

    Args:
        pos_dim: Hidden width ``p`` (CrossFormer uses ``(dim // 4) // 4``).
        num_heads: Number of heads (outputs).
        residual: Residual form ``p = proj(o); p += pos1(p); p += pos2(p); out = pos3(p)``.
    """

    def __init__(self, pos_dim: int, num_heads: int, residual: bool = False) -> None:
        super().__init__()
        if pos_dim < 1:
            raise ValueError(f'pos_dim must be >= 1, got {pos_dim}')
        self.pos_dim = pos_dim
        self.num_heads = num_heads
        self.residual = residual
        self.pos_proj = nn.Linear(2, pos_dim)
        self.pos1 = self._mlp_layer(pos_dim, pos_dim)
        self.pos2 = self._mlp_layer(pos_dim, pos_dim)
        self.pos3 = self._mlp_layer(pos_dim, num_heads)

    @staticmethod
    def _mlp_layer(in_dim: int, out_dim: int) -> nn.Sequential:
        return nn.Sequential(nn.LayerNorm(in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))

    def forward_offsets(self, offsets: Tensor) -> Tensor:
        """Biases ``(M, heads)`` of ``M`` offsets given as ``(M, 2)`` floats."""
        pos = self.pos_proj(offsets)
        if self.residual:
            pos = pos + self.pos1(pos)
            pos = pos + self.pos2(pos)
            return self.pos3(pos)
        return self.pos3(self.pos2(self.pos1(pos)))

    def forward(self, group_size: IntPair) -> Tensor:
        """Bias of a ``Gh×Gw`` group, ``(heads, N, N)`` with ``N = Gh·Gw`` (row-major tokens)."""
        gh, gw = to_2tuple(group_size, 'group_size')
        device = self.pos_proj.weight.device
        offsets = relative_offsets((gh, gw), device).to(self.pos_proj.weight.dtype)
        table = self.forward_offsets(offsets)  # (2gh-1)(2gw-1), heads
        index = relative_position_index((gh, gw), device)
        n = gh * gw
        # index_select: the same gather as table[index], far faster on CPU for these sizes
        bias = table.index_select(0, index.view(-1))
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()

    def extra_repr(self) -> str:
        return f'pos_dim={self.pos_dim}, num_heads={self.num_heads}, residual={self.residual}'


class RelativePositionBias(nn.Module):
    """Swin-style learned relative position bias for a fixed window size.

    Holds ``relative_position_bias_table`` ``((2Wh−1)(2Ww−1), heads)`` (truncated-normal init,
    std 0.02) and the index buffer ``relative_position_index`` ``(N, N)``; the names are those of
    Swin / mmdet ``WindowMSA`` checkpoints.

    Args:
        window_size: ``W`` or ``(Wh, Ww)``.
        num_heads: Number of heads.
        persistent_index: Save the index buffer in the state dict (Swin checkpoints have it).
    """

    def __init__(self, window_size: IntPair, num_heads: int,
                 persistent_index: bool = True) -> None:
        super().__init__()
        self.window_size: Tuple[int, int] = to_2tuple(window_size, 'window_size')
        wh, ww = self.window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer('relative_position_index',
                             relative_position_index(self.window_size).clone(),
                             persistent=persistent_index)

    def forward(self) -> Tensor:
        """Bias ``(heads, N, N)`` of the window."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table.index_select(
            0, self.relative_position_index.view(-1))
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous()

    def extra_repr(self) -> str:
        return f'window_size={self.window_size}, num_heads={self.num_heads}'


__all__ = ['DynamicPosBias', 'RelativePositionBias', 'relative_offsets',
           'relative_position_index']
