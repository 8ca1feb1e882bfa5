"""Cross-scale embedding / merging: official channel split, any input size, single-kernel case,
the space-to-depth form of the large kernels."""
import pytest
import torch
import torch.nn.functional as F

from crossformer_mm.models.layers import (CrossScaleEmbed, CrossScalePatchMerging, DropPath, Mlp,
                                          split_channels)
from crossformer_mm.models.layers.embed import strided_conv_as_s2d


def test_split_channels():
    assert split_channels(96, 4) == [48, 24, 12, 12]
    assert split_channels(64, 4) == [32, 16, 8, 8]
    assert split_channels(192, 2) == [96, 96]
    assert split_channels(96, 1) == [96]


@pytest.mark.parametrize('hw', [(224, 224), (333, 517), (30, 9)])
def test_embed_any_size_equals_padded_input(hw):
    torch.manual_seed(0)
    emb = CrossScaleEmbed(3, 32).eval()
    x = torch.randn(1, 3, *hw)
    y = emb(x)
    assert y.shape == (1, -(-hw[0] // 4), -(-hw[1] // 4), 32)
    xp = F.pad(x, (0, (-hw[1]) % 4, 0, (-hw[0]) % 4))
    torch.testing.assert_close(y, emb(xp), rtol=0, atol=0)
    assert [p.out_channels for p in emb.projs] == [16, 8, 4, 4]
    assert [p.padding for p in emb.projs] == [(0, 0), (2, 2), (6, 6), (14, 14)]


def test_single_kernel_is_plain_patch_embed():
    emb = CrossScaleEmbed(3, 24, kernel_sizes=(16,), stride=16, norm_layer=None)
    x = torch.randn(2, 3, 64, 48)
    ref = emb.projs[0](x).permute(0, 2, 3, 1)
    torch.testing.assert_close(emb(x), ref)


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize('k,s,cin,cout', [(32, 4, 3, 4), (16, 4, 3, 5), (8, 2, 5, 3)])
def test_s2d_conv_equals_strided_conv(k, s, cin, cout, dtype, tol):
    """Values and gradients (input, weight, bias) of the space-to-depth form match the conv."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, k, stride=s, padding=(k - s) // 2).to(dtype)
    x = torch.randn(2, cin, 4 * s, 6 * s, dtype=dtype, requires_grad=True)
    ref = conv(x)
    out = strided_conv_as_s2d(conv, x)
    assert out.shape == ref.shape == (2, cout, 4, 6)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    ref_grads = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 10)


def test_embed_large_kernels_match_plain_convs():
    """CEL's 16 and 32 kernels go through the space-to-depth form; the output is the convs'."""
    torch.manual_seed(0)
    emb = CrossScaleEmbed(3, 32, norm_layer=None).double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    ref = torch.cat([p(x) for p in emb.projs], 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(emb(x), ref, rtol=1e-10, atol=1e-10)


def test_merging_odd_sizes():
    torch.manual_seed(0)
    m = CrossScalePatchMerging(16).eval()
    x = torch.randn(2, 7, 5, 16)
    y = m(x)
    assert y.shape == (2, 4, 3, 32)
    ref = F.pad(m.norm(x), (0, 0, 0, 1, 0, 1)).permute(0, 3, 1, 2)
    ref = torch.cat([r(ref) for r in m.reductions], 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(y, ref)
    assert [r.out_channels for r in m.reductions] == [16, 16]


def test_embed_errors():
    emb = CrossScaleEmbed(3, 32)
    with pytest.raises(ValueError, match='in_channels=3'):
        emb(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match='4-D'):
        emb(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='kernel_sizes'):
        CrossScaleEmbed(3, 32, kernel_sizes=(5,), stride=4)


def test_mlp_and_drop_path():
    mlp = Mlp(8, 32)
    assert mlp(torch.randn(2, 3, 8)).shape == (2, 3, 8)
    dp = DropPath(0.5)
    x = torch.ones(1000, 4)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 0.3 < (y[:, 0] > 0).float().mean() < 0.7
    with pytest.raises(ValueError, match='drop_prob'):
        DropPath(1.0)
