"""Attention: fused (SDPA) path == explicit path == naive per-group reference; masks don't leak."""
import pytest
import torch

from crossformer_mm.models.layers import Attention, build_attn_mask


def naive_attention(attn: Attention, x, bias=None, kpm=None, shift_mask=None):
    """Loop over groups and heads; drop masked keys instead of adding a large negative value."""
    b_, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x).reshape(b_, n, 3, h, d)
    groups = 1
    for t in (bias if bias is not None and bias.ndim == 4 else None, kpm, shift_mask):
        if t is not None:
            groups = t.shape[0]
    out = torch.zeros(b_, n, h, d, dtype=x.dtype)
    for i in range(b_):
        g = i % groups
        for hd in range(h):
            q, k, v = qkv[i, :, 0, hd], qkv[i, :, 1, hd], qkv[i, :, 2, hd]
            logits = q @ k.t() * attn.scale
            if bias is not None:
                logits = logits + (bias[g, hd] if bias.ndim == 4 else bias[hd])
            allowed = torch.ones(n, n, dtype=torch.bool)
            if kpm is not None:
                allowed &= ~kpm[g][None, :]
            if shift_mask is not None:
                allowed &= ~shift_mask[g]
            for r in range(n):
                keep = allowed[r]
                if keep.any():
                    w = torch.softmax(logits[r, keep], -1)
                    out[i, r, hd] = w @ v[keep]
    return attn.proj(out.reshape(b_, n, c))


@pytest.mark.parametrize('dtype,atol', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_equals_explicit(dtype, atol):
    torch.manual_seed(0)
    attn = Attention(48, 3).to(dtype).eval()
    n_groups, n = 4, 25
    x = torch.randn(2 * n_groups, n, 48, dtype=dtype)
    bias = torch.randn(3, n, n, dtype=dtype)
    kpm = torch.zeros(n_groups, n, dtype=torch.bool)
    kpm[1, 20:] = True
    kpm[3, ::3] = True
    for kwargs in ({}, dict(attn_bias=bias), dict(key_padding_mask=kpm),
                   dict(attn_bias=bias, key_padding_mask=kpm),
                   dict(attn_bias=bias[None].repeat(n_groups, 1, 1, 1), key_padding_mask=kpm)):
        attn.fused = True
        y_fused = attn(x, **kwargs)
        attn.fused = False
        y_explicit = attn(x, **kwargs)
        torch.testing.assert_close(y_fused, y_explicit, atol=atol, rtol=0)


def test_matches_naive_reference_float64():
    torch.manual_seed(1)
    attn = Attention(32, 2).double().eval()
    n_groups, n = 3, 9
    x = torch.randn(2 * n_groups, n, 32, dtype=torch.float64)
    bias = torch.randn(2, n, n, dtype=torch.float64)
    kpm = torch.zeros(n_groups, n, dtype=torch.bool)
    kpm[0, 6:] = True
    kpm[2, 1] = True
    shift = torch.rand(n_groups, n, n) > 0.7
    shift.diagonal(dim1=1, dim2=2).fill_(False)  # every query keeps itself
    for fused in (True, False):
        attn.fused = fused
        torch.testing.assert_close(attn(x, bias, key_padding_mask=kpm),
                                   naive_attention(attn, x, bias, kpm), atol=1e-12, rtol=0)
        torch.testing.assert_close(attn(x, bias, attn_mask=shift),
                                   naive_attention(attn, x, bias, shift_mask=shift),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize('fused', [True, False])
def test_masked_keys_do_not_leak(fused):
    torch.manual_seed(2)
    attn = Attention(16, 2, fused=fused).eval()
    x = torch.randn(4, 10, 16)
    kpm = torch.zeros(2, 10, dtype=torch.bool)
    kpm[:, 7:] = True
    y = attn(x, key_padding_mask=kpm)
    x2 = x.clone()
    x2[:, 7:] = 1e3 * torch.randn(4, 3, 16)  # garbage in the padded tokens
    y2 = attn(x2, key_padding_mask=kpm)
    torch.testing.assert_close(y[:, :7], y2[:, :7], atol=1e-6, rtol=0)
    assert not torch.equal(y[:, 7:], y2[:, 7:])


def test_fully_masked_group_is_finite():
    attn = Attention(16, 2)
    x = torch.randn(2, 5, 16, requires_grad=True)
    kpm = torch.ones(1, 5, dtype=torch.bool)
    for fused in (True, False):
        attn.fused = fused
        y = attn(x, key_padding_mask=kpm)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_errors():
    with pytest.raises(ValueError, match='num_heads'):
        Attention(10, 3)
    attn = Attention(16, 2)
    with pytest.raises(ValueError, match='channels'):
        attn(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match='multiple'):
        attn(torch.randn(5, 4, 16), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='broadcast'):
        attn(torch.randn(2, 4, 16), attn_bias=torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match='bool'):
        build_attn_mask(2, 4, torch.float32, key_padding_mask=torch.zeros(1, 4))
