"""Shifted-window mask and the window partition pair with padding and shift (Swin, ViTDet)."""
import pytest
import torch

from crossformer_mm.models.layers import shifted_window_mask, window_partition, window_reverse


def region_ids(hp: int, wp: int, ws: int, s: int) -> torch.Tensor:
    """Independent reference: the region of each position of the shifted map."""
    def region(i: int, n: int) -> int:
        return 0 if i < n - ws else (1 if i < n - s else 2)
    ids = torch.tensor([[region(i, hp) * 3 + region(j, wp) for j in range(wp)]
                        for i in range(hp)])
    return window_partition(ids.view(1, hp, wp, 1).float(), ws)[0].squeeze(-1)


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


def _reference_windows(x: torch.Tensor, ws: int, s: int) -> torch.Tensor:
    """Independent reference: pad, roll and cut windows with explicit loops."""
    b, h, w, c = x.shape
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    padded = torch.zeros(b, hp, wp, c)
    padded[:, :h, :w] = x
    rolled = torch.roll(padded, (-s, -s), (1, 2))
    return torch.stack([rolled[n, i:i + ws, j:j + ws].reshape(ws * ws, c)
                        for n in range(b) for i in range(0, hp, ws) for j in range(0, wp, ws)])


@pytest.mark.parametrize('hw,ws,s', [((9, 11), 7, 3), ((14, 14), 7, 0), ((5, 3), 4, 2),
                                     ((8, 12), 4, 2)])
def test_window_partition_pads_shifts_and_reverses(hw, ws, s) -> None:
    x = torch.randn(2, *hw, 5)
    windows, padded = window_partition(x, ws, s)
    assert padded == (-(-hw[0] // ws) * ws, -(-hw[1] // ws) * ws)
    assert torch.equal(windows, _reference_windows(x, ws, s))
    assert torch.equal(window_reverse(windows, ws, padded, hw, s), x)
