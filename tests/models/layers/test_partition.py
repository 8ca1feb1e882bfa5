"""Group partitions against independent naive index-arithmetic references."""
import pytest
import torch

from crossformer_mm.models.layers import (group_partition, group_reverse, pad_to_multiple,
                                          padding_mask_groups, window_partition, window_reverse)


def naive_groups(x, group_of, n_groups, n_tokens):
    """Scatter every token by an explicit (group, slot) formula."""
    b, h, w, c = x.shape
    out = torch.full((b, n_groups, n_tokens, c), float('nan'), dtype=x.dtype)
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    g, s = group_of(hh.flatten(), ww.flatten())
    out[:, g, s] = x.reshape(b, h * w, c)
    return out.reshape(b * n_groups, n_tokens, c)


def sda_reference(x, G):
    _, h, w, _ = x.shape
    return naive_groups(x, lambda hh, ww: ((hh // G) * (w // G) + ww // G,
                                           (hh % G) * G + ww % G), h * w // G ** 2, G * G)


def lda_main_reference(x, G, I):
    """``main`` LDA: inside each (G·I)² region, tokens I apart form a G×G group."""
    _, h, w, _ = x.shape
    R = G * I
    rw = w // R

    def group_of(hh, ww):
        region = (hh // R) * rw + ww // R
        phase = (hh % I) * I + ww % I
        slot = ((hh % R) // I) * G + (ww % R) // I
        return region * I * I + phase, slot

    return naive_groups(x, group_of, (h // R) * rw * I * I, G * G)


def lda_original_reference(x, I):
    """``crossformer``-branch LDA: all tokens I apart in the whole map form one group."""
    _, h, w, _ = x.shape
    gh, gw = h // I, w // I
    return naive_groups(x, lambda hh, ww: ((hh % I) * I + ww % I, (hh // I) * gw + ww // I),
                        I * I, gh * gw)


@pytest.mark.parametrize('hw', [(14, 14), (28, 42)])
def test_sda_matches_reference(hw):
    x = torch.randn(2, *hw, 3)
    g, padded = window_partition(x, 7)
    assert padded == hw
    torch.testing.assert_close(g, sda_reference(x, 7), rtol=0, atol=0)
    torch.testing.assert_close(group_partition(x, 7), g, rtol=0, atol=0)
    torch.testing.assert_close(window_reverse(g, 7, padded, hw), x, rtol=0, atol=0)


@pytest.mark.parametrize('G,I,hw', [(2, 3, (12, 18)), (4, 2, (8, 16)), (7, 8, (56, 56))])
def test_lda_main_matches_reference(G, I, hw):
    x = torch.randn(2, *hw, 3)
    g = group_partition(x, G, I)
    torch.testing.assert_close(g, lda_main_reference(x, G, I), rtol=0, atol=0)
    torch.testing.assert_close(group_reverse(g, G, I, hw), x, rtol=0, atol=0)


@pytest.mark.parametrize('I,hw', [(2, (6, 10)), (4, (12, 8)), (8, (56, 56))])
def test_lda_original_matches_reference(I, hw):
    x = torch.randn(2, *hw, 3)
    size = (hw[0] // I, hw[1] // I)
    g = group_partition(x, size, I)
    torch.testing.assert_close(g, lda_original_reference(x, I), rtol=0, atol=0)
    torch.testing.assert_close(group_reverse(g, size, I, hw), x, rtol=0, atol=0)


def test_groupings_agree_when_map_is_one_region():
    # 56 = 7 · 8: the two LDA groupings coincide (stage 1 at 224) ...
    x = torch.randn(1, 56, 56, 4)
    torch.testing.assert_close(group_partition(x, 7, 8), group_partition(x, (7, 7), 8))
    # ... and differ when the map holds several (G·I)² regions (800×1216 → 200×304).
    x = torch.randn(1, 112, 56, 4)
    assert not torch.equal(group_partition(x, 7, 8), group_partition(x, (14, 7), 8))


def test_padding_helpers():
    x = torch.randn(1, 5, 7, 2)
    xp, pad = pad_to_multiple(x, (4, 4))
    assert xp.shape == (1, 8, 8, 2) and pad == (3, 1)
    assert pad_to_multiple(x, 1)[0] is x
    assert pad_to_multiple(torch.randn(1, 2, 5, 7), 4, channels_last=False)[0].shape == (1, 2, 8, 8)
    mask = padding_mask_groups((8, 8), pad, 2, 2)
    ref = torch.zeros(1, 8, 8, 1, dtype=torch.bool)
    ref[:, 5:] = True
    ref[:, :, 7:] = True
    torch.testing.assert_close(mask, group_partition(ref, 2, 2).squeeze(-1))
    assert padding_mask_groups((8, 8), (0, 0), 2) is None
    with pytest.raises(ValueError, match='divisible'):
        group_partition(x, 2, 2)
