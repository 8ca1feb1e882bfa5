"""Shifted-window helpers for Swin-style attention (Liu et al., ICCV 2021).

Swin shifts the (padded) map by ``-s`` along H and W before partitioning it into windows, so that
every other block mixes tokens across window borders. Tokens that end up in one window but came
from different regions of the unshifted map must not attend each other; :func:`shifted_window_mask`
gives that mask, built once per (map size, window, shift) and cached, in the window order of
:func:`~crossformer_mm.models.layers.window_partition`.
"""
from functools import lru_cache
from typing import Optional, Tuple

import torch
from torch import Tensor

from .partition import IntPair, to_2tuple, window_partition


@lru_cache(maxsize=64)
def _shift_mask_cpu(hp: int, wp: int, wh: int, ww: int, sh: int, sw: int) -> Tensor:
    region = torch.zeros(1, hp, wp, 1)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[:, hs, ws, :] = cnt
            cnt += 1
    ids = window_partition(region, (wh, ww)).squeeze(-1)  # nW, N
    return ids.unsqueeze(1) != ids.unsqueeze(2)  # nW, N, N; True = blocked


def shifted_window_mask(hw: Tuple[int, int], window_size: IntPair, shift_size: IntPair,
                        device: Optional[torch.device] = None) -> Optional[Tensor]:
    """Mask of a cyclically shifted, window-partitioned map.

    Args:
        hw: Padded map size ``(Hp, Wp)`` (multiples of the window size).
        window_size: ``W`` or ``(Wh, Ww)``.
        shift_size: ``s`` or ``(sh, sw)``; the map is rolled by ``-s`` before the partition.
        device: Device of the returned mask.

    Returns:
        ``None`` for a zero shift, else a bool ``(nW, Wh·Ww, Wh·Ww)`` tensor, True where a query
        may not attend a key (they come from different regions of the unshifted map). Upstream
        Swin adds ``-100`` at those positions; the package adds a much larger negative number,
        which gives the same softmax to float precision.
    """
    wh, ww = to_2tuple(window_size, 'window_size')
    sh, sw = to_2tuple(shift_size, 'shift_size')
    if sh == 0 and sw == 0:
        return None
    if not (0 < sh < wh and 0 < sw < ww):
        raise ValueError(f'shift_size must be in (0, window_size), got {(sh, sw)} for window '
                         f'{(wh, ww)}')
    hp, wp = hw
    if hp % wh or wp % ww:
        raise ValueError(f'map {hp}x{wp} is not a multiple of the window {wh}x{ww}; pad it first')
    return _shift_mask_cpu(hp, wp, wh, ww, sh, sw).to(device)


__all__ = ['shifted_window_mask']


@lru_cache(maxsize=64)
def _window_index_cpu(h: int, w: int, wh: int, ww: int, sh: int, sw: int
                      ) -> Tuple[Tensor, Tensor, Tuple[int, int]]:
    hp, wp = h + (-h) % wh, w + (-w) % ww
    src = torch.full((hp, wp), h * w, dtype=torch.long)  # h·w = the zero row (padding)
    src[:h, :w] = torch.arange(h * w).view(h, w)
    src = torch.roll(src, shifts=(-sh, -sw), dims=(0, 1))
    fwd = window_partition(src.view(1, hp, wp, 1), (wh, ww)).reshape(-1)  # window order
    inv = torch.empty(h * w + 1, dtype=torch.long)
    inv[fwd] = torch.arange(fwd.numel())
    return fwd.contiguous(), inv[:h * w].contiguous(), (hp, wp)


def window_gather_index(hw: Tuple[int, int], window_size: IntPair, shift_size: IntPair = 0,
                        device: Optional[torch.device] = None
                        ) -> Tuple[Tensor, Tensor, Tuple[int, int]]:
    """Token indices that pad, cyclically shift and window-partition a map in one gather.

    Equivalent to ``pad_to_multiple`` → ``torch.roll(-shift)`` → :func:`window_partition` (and
    back: :func:`window_reverse` → ``roll(+shift)`` → crop), but as one ``index_select`` each
    way instead of three or four copies. Cached per (size, window, shift).

    Args:
        hw: Unpadded map size ``(H, W)``.
        window_size: ``W`` or ``(Wh, Ww)``.
        shift_size: ``s`` or ``(sh, sw)`` (0: plain windows).
        device: Device of the indices.

    Returns:
        ``(forward, inverse, (Hp, Wp))``: ``forward`` ``(nW·Wh·Ww,)`` indexes the tokens
        ``(H·W + 1)`` of a flattened map with one zero row appended (index ``H·W`` = padding),
        in window order; ``inverse`` ``(H·W,)`` gives each original token's position in that
        order.
    """
    wh, ww = to_2tuple(window_size, 'window_size')
    sh, sw = to_2tuple(shift_size, 'shift_size')
    fwd, inv, padded = _window_index_cpu(hw[0], hw[1], wh, ww, sh, sw)
    return fwd.to(device), inv.to(device), padded


__all__ += ['window_gather_index']
