"""Padding and group partition helpers for grouped (windowed / dilated) self-attention.

All helpers work on channels-last feature maps ``(B, H, W, C)``.

One function, :func:`group_partition` (with :func:`group_reverse`), covers the three token
groupings used by the package; :func:`window_partition` / :func:`window_reverse` add the
padding, Swin's cyclic shift and the crop around its ``interval=1`` case:

* Swin windows, ViTDet windows and CrossFormer short-distance attention (SDA): ``interval=1``,
  group ``(G, G)``.
* CrossFormer long-distance attention (LDA), ``main`` branch (CrossFormer++): ``interval=I``,
  group ``(G, G)``, map padded to a multiple of ``G·I``; tokens ``I`` apart inside each
  ``(G·I)×(G·I)`` region form a group.
* CrossFormer LDA, original ``crossformer`` branch (ICLR 2022 dense backbones): ``interval=I``,
  group ``(Hp/I, Wp/I)``, map padded to a multiple of ``I``; all tokens ``I`` apart in the whole map
  form a group (``I²`` groups whose size grows with the image).

Token ``(h, w)`` with ``h = (r·Gh + g)·I + i`` belongs to group ``(r_h, r_w, i_h, i_w)`` at position
``(g_h, g_w)``; groups are ordered ``(B, Rh, Rw, I, I)`` (batch-major) and tokens inside a group
``(Gh, Gw)`` (row-major). This is exactly the order of the official code, so a position bias indexed
by ``(g_h, g_w)`` offsets matches it.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

IntPair = Union[int, Sequence[int]]


def to_2tuple(value: IntPair, name: str = 'value') -> Tuple[int, int]:
    """Return ``(value, value)`` for an int, or the pair itself for a sequence of two ints.

    Raises:
        ValueError: naming ``name`` if a sequence does not have two elements.
    """
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f'{name} must be an int or a pair of ints, got {value}')
    return value  # type: ignore[return-value]


def pad_amount(size: int, multiple: int) -> int:
    """Right/bottom padding that makes ``size`` a multiple of ``multiple``."""
    return (multiple - size % multiple) % multiple


def pad_to_multiple(x: Tensor, multiple: IntPair, channels_last: bool = True,
                    value: float = 0.0) -> Tuple[Tensor, Tuple[int, int]]:
    """Zero-pad a feature map at the bottom/right so that H and W are multiples of ``multiple``.

    Args:
        x: ``(B, H, W, C)`` if ``channels_last`` else ``(B, C, H, W)``.
        multiple: One int, or ``(mh, mw)``.
        channels_last: Layout of ``x``.
        value: Fill value.

    Returns:
        The padded tensor (``x`` itself when nothing is padded) and ``(pad_h, pad_w)``.
    """
    mh, mw = to_2tuple(multiple, 'multiple')
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[-2], x.shape[-1])
    pad_h, pad_w = pad_amount(h, mh), pad_amount(w, mw)
    if pad_h == 0 and pad_w == 0:
        return x, (0, 0)
    pads = (0, 0, 0, pad_w, 0, pad_h) if channels_last else (0, pad_w, 0, pad_h)
    return F.pad(x, pads, value=value), (pad_h, pad_w)


def group_partition(x: Tensor, group_size: IntPair, interval: int = 1) -> Tensor:
    """Split a map into groups of ``Gh×Gw`` tokens sampled every ``interval`` tokens.

    Args:
        x: ``(B, Hp, Wp, C)`` with ``Hp`` a multiple of ``Gh·interval`` and ``Wp`` of
            ``Gw·interval``.
        group_size: ``G`` or ``(Gh, Gw)``: tokens per group along H and W.
        interval: Sampling stride inside a group (1 gives plain windows).

    Returns:
        ``(B·Rh·Rw·I·I, Gh·Gw, C)`` groups, ``Rh = Hp / (Gh·I)``, ``Rw = Wp / (Gw·I)``.

    Raises:
        ValueError: if the map is not divisible (pad it first with :func:`pad_to_multiple`).
    """
    gh, gw = to_2tuple(group_size, 'group_size')
    b, hp, wp, c = x.shape
    if hp % (gh * interval) or wp % (gw * interval):
        raise ValueError(f'feature map {hp}x{wp} is not divisible by group_size·interval '
                         f'({gh}·{interval}, {gw}·{interval}); pad it first')
    rh, rw = hp // (gh * interval), wp // (gw * interval)
    x = x.reshape(b, rh, gh, interval, rw, gw, interval, c)
    x = x.permute(0, 1, 4, 3, 6, 2, 5, 7)
    return x.reshape(-1, gh * gw, c)


def group_reverse(groups: Tensor, group_size: IntPair, interval: int,
                  hw: Tuple[int, int]) -> Tensor:
    """Inverse of :func:`group_partition`.

    Args:
        groups: ``(B·Rh·Rw·I·I, Gh·Gw, C)``.
        group_size: ``G`` or ``(Gh, Gw)`` used for the partition.
        interval: Interval used for the partition.
        hw: Padded map size ``(Hp, Wp)``.

    Returns:
        ``(B, Hp, Wp, C)``.
    """
    gh, gw = to_2tuple(group_size, 'group_size')
    hp, wp = hw
    rh, rw = hp // (gh * interval), wp // (gw * interval)
    c = groups.shape[-1]
    x = groups.reshape(-1, rh, rw, interval, interval, gh, gw, c)
    x = x.permute(0, 1, 5, 3, 2, 6, 4, 7)
    return x.reshape(-1, hp, wp, c)


def window_partition(x: Tensor, window_size: IntPair, shift_size: IntPair = 0
                     ) -> Tuple[Tensor, Tuple[int, int]]:
    """Windows of a map: zero-pad at the bottom/right to a multiple of the window, roll by
    ``-shift_size`` (Swin's cyclic shift), split (:func:`group_partition`, ``interval=1``).

    The one window split of the package (Swin, ViTDet windowed attention; CrossFormer's SDA
    groups are the same split, through :func:`group_partition`). Undo with
    :func:`window_reverse`.

    Args:
        x: ``(B, H, W, C)``.
        window_size: ``W`` or ``(Wh, Ww)``.
        shift_size: ``s`` or ``(sh, sw)``; 0 for plain windows.

    Returns:
        ``(B·nW, Wh·Ww, C)`` windows (batch-major, windows row-major) and the padded size
        ``(Hp, Wp)``.
    """
    wh, ww = to_2tuple(window_size, 'window_size')
    sh, sw = to_2tuple(shift_size, 'shift_size')
    x, _ = pad_to_multiple(x, (wh, ww))
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    return group_partition(x, (wh, ww), 1), (x.shape[1], x.shape[2])


def window_reverse(windows: Tensor, window_size: IntPair, padded_hw: Tuple[int, int],
                   hw: Tuple[int, int], shift_size: IntPair = 0) -> Tensor:
    """Inverse of :func:`window_partition`: merge, roll back by ``+shift_size``, crop to ``hw``.

    Args:
        windows: ``(B·nW, Wh·Ww, C)``.
        window_size: As for the partition.
        padded_hw: ``(Hp, Wp)`` returned by the partition.
        hw: The map size ``(H, W)`` before padding.
        shift_size: As for the partition.

    Returns:
        ``(B, H, W, C)``.
    """
    sh, sw = to_2tuple(shift_size, 'shift_size')
    x = group_reverse(windows, window_size, 1, padded_hw)
    if sh or sw:
        x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    if tuple(padded_hw) != tuple(hw):
        x = x[:, :hw[0], :hw[1]]
    return x


def padding_mask_groups(hw: Tuple[int, int], pad: Tuple[int, int], group_size: IntPair,
                        interval: int = 1, device: Optional[torch.device] = None
                        ) -> Optional[Tensor]:
    """Key-padding mask of the groups of a padded map.

    Args:
        hw: Padded size ``(Hp, Wp)``.
        pad: ``(pad_h, pad_w)`` added at the bottom/right.
        group_size: As for :func:`group_partition`.
        interval: As for :func:`group_partition`.
        device: Device of the mask.

    Returns:
        ``None`` without padding, else a bool ``(nG, Gh·Gw)`` tensor, True at padded tokens
        (the package's mask convention: True = blocked; the attention turns it into the additive
        :func:`~crossformer_mm.models.layers.mask_value`), in the group order of
        :func:`group_partition` for one image.
    """
    pad_h, pad_w = pad
    if pad_h == 0 and pad_w == 0:
        return None
    hp, wp = hw
    mask = torch.zeros(1, hp, wp, 1, dtype=torch.bool, device=device)
    if pad_h:
        mask[:, hp - pad_h:] = True
    if pad_w:
        mask[:, :, wp - pad_w:] = True
    return group_partition(mask, group_size, interval).squeeze(-1)


__all__ = ['to_2tuple', 'pad_amount', 'pad_to_multiple', 'group_partition', 'group_reverse',
           'window_partition', 'window_reverse', 'padding_mask_groups']
