"""Swin patch merging in the official concatenation order."""
import pytest
import torch
import torch.nn.functional as F

from crossformer_mm.models.layers import PatchMerging


def official_merge(m: PatchMerging, x: torch.Tensor) -> torch.Tensor:
    """microsoft/Swin-Transformer ``PatchMerging.forward`` on an even map."""
    x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
    x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    return m.reduction(m.norm(torch.cat([x0, x1, x2, x3], -1)))


def test_matches_official_order() -> None:
    m = PatchMerging(6)
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    x = torch.randn(2, 8, 10, 6)
    assert torch.allclose(m(x), official_merge(m, x), atol=1e-6)


def test_odd_map_is_zero_padded() -> None:
    m = PatchMerging(4, out_dim=5)
    x = torch.randn(1, 7, 9, 4)
    out = m(x)
    assert out.shape == (1, 4, 5, 5)
    padded = F.pad(x, (0, 0, 0, 1, 0, 1))
    assert torch.allclose(out, official_merge(m, padded), atol=1e-6)


def test_bad_shape() -> None:
    with pytest.raises(ValueError, match=r'\(B, H, W, 4\)'):
        PatchMerging(4)(torch.randn(1, 4, 8, 8))
