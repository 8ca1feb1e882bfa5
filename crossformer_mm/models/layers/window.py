"""The attention mask of Swin's shifted windows (Liu et al., ICCV 2021).

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
    ids = window_partition(region, (wh, ww))[0].squeeze(-1)  # nW, N
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
        may not attend a key (they come from different regions of the unshifted map): the
        package's mask convention, which the attention turns into the additive
        :func:`~crossformer_mm.models.layers.mask_value` (a large finite negative; upstream Swin
        adds ``-100``, which gives the same softmax to float precision).
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
