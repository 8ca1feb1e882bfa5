"""Shifted-window mask and the one-gather pad/shift/partition of Swin blocks."""
import pytest
import torch

from crossformer_mm.models.layers import (pad_to_multiple, shifted_window_mask, window_partition,
                                          window_reverse)
from crossformer_mm.models.layers.window import window_gather_index


def region_ids(hp: int, wp: int, ws: int, s: int) -> torch.Tensor:
    """Independent reference: the region of each position of the shifted map."""
    def region(i: int, n: int) -> int:
        return 0 if i < n - ws else (1 if i < n - s else 2)
    ids = torch.tensor([[region(i, hp) * 3 + region(j, wp) for j in range(wp)]
                        for i in range(hp)])
    return window_partition(ids.view(1, hp, wp, 1).float(), ws).squeeze(-1)


@pytest.mark.parametrize('hw,ws,s', [((14, 21), 7, 3), ((7, 7), 7, 3), ((12, 8), 4, 2)])
def test_shifted_window_mask(hw, ws, s) -> None:
    mask = shifted_window_mask(hw, ws, s)
    ids = region_ids(hw[0], hw[1], ws, s)
    assert mask.dtype == torch.bool and mask.shape == (ids.shape[0], ws * ws, ws * ws)
    assert torch.equal(mask, ids[:, :, None] != ids[:, None, :])
    # The shift splits the last window row and column: the top-left window is whole unless it
    # is also in the last row or column.
    top_left_split = hw[0] == ws or hw[1] == ws
    assert bool(mask[0].any()) == top_left_split
    # The bottom-right window is cut in four regions of (ws-s)^2, (ws-s)s, s(ws-s) and s^2
    # tokens; a token may attend only within its own region.
    sizes = ((ws - s) ** 2, (ws - s) * s, s * (ws - s), s ** 2)
    assert int((~mask[-1]).sum()) == sum(n * n for n in sizes)


def test_shifted_window_mask_errors() -> None:
    assert shifted_window_mask((14, 14), 7, 0) is None
    with pytest.raises(ValueError, match='shift_size'):
        shifted_window_mask((14, 14), 7, 7)
    with pytest.raises(ValueError, match='pad it first'):
        shifted_window_mask((15, 14), 7, 3)


@pytest.mark.parametrize('hw,ws,s', [((9, 11), 7, 3), ((14, 14), 7, 0), ((5, 3), 4, 2),
                                     ((8, 12), 4, 2)])
def test_window_gather_equals_pad_roll_partition(hw, ws, s) -> None:
    b, c = 2, 5
    x = torch.randn(b, *hw, c)
    fwd, inv, (hp, wp) = window_gather_index(hw, ws, s)
    tokens = torch.cat((x.reshape(b, -1, c), torch.zeros(b, 1, c)), dim=1)
    got = tokens.index_select(1, fwd).view(-1, ws * ws, c)
    ref, _ = pad_to_multiple(x, ws)
    assert ref.shape[1:3] == (hp, wp)
    if s:
        ref = torch.roll(ref, (-s, -s), (1, 2))
    ref = window_partition(ref, ws)
    assert torch.equal(got, ref)
    back = got.view(b, -1, c).index_select(1, inv).view(b, *hw, c)
    rev = window_reverse(ref, ws, (hp, wp))
    if s:
        rev = torch.roll(rev, (s, s), (1, 2))
    assert torch.equal(back, rev[:, :hw[0], :hw[1]])
    assert torch.equal(back, x)
