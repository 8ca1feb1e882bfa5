"""Attention: the fused (SDPA) and explicit paths against each other and a naive per-group
reference, with biases and masks; gradients; masks don't leak; the switch reaches every attention;
bad input raises."""
import pytest
import torch

from crossformer_mm.models.backbones.swin import CFSwinTransformer
from crossformer_mm.models.layers import Attention, build_attn_mask, fold_attn_mask, mask_value


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


def bias_and_masks(n_groups: int, n: int, heads: int, dtype: torch.dtype):
    """Every combination the backbones use: shared / per-group bias, padding, shift mask."""
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(heads, n, n, generator=g, dtype=dtype)
    kpm = torch.zeros(n_groups, n, dtype=torch.bool)
    kpm[1, n - 5:] = True
    kpm[-1, ::3] = True
    shift = torch.rand(n_groups, n, n, generator=g) > 0.7
    shift.diagonal(dim1=1, dim2=2).fill_(False)
    return [{}, dict(attn_bias=bias), dict(key_padding_mask=kpm), dict(attn_mask=shift),
            dict(attn_mask=torch.where(shift, -30.0, 0.5).to(dtype)),
            dict(attn_bias=bias, key_padding_mask=kpm),
            dict(attn_bias=bias, attn_mask=shift, key_padding_mask=kpm),
            dict(attn_bias=bias[None].repeat(n_groups, 1, 1, 1), attn_mask=shift)]


@pytest.mark.parametrize('dtype,atol', [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_equals_explicit(dtype, atol):
    torch.manual_seed(0)
    attn = Attention(48, 3).to(dtype).eval()
    n_groups, n = 4, 25
    x = torch.randn(2 * n_groups, n, 48, dtype=dtype)
    for kwargs in bias_and_masks(n_groups, n, 3, dtype):
        attn.fused_attn = True
        y_fused = attn(x, **kwargs)
        attn.fused_attn = False
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
    per_group_bias = torch.randn(n_groups, 2, n, n, dtype=torch.float64)
    for fused in (True, False):
        attn.fused_attn = fused
        torch.testing.assert_close(attn(x, bias, key_padding_mask=kpm),
                                   naive_attention(attn, x, bias, kpm), atol=1e-12, rtol=0)
        torch.testing.assert_close(attn(x, bias, attn_mask=shift),
                                   naive_attention(attn, x, bias, shift_mask=shift),
                                   atol=1e-12, rtol=0)
        torch.testing.assert_close(attn(x, per_group_bias, key_padding_mask=kpm),
                                   naive_attention(attn, x, per_group_bias, kpm),
                                   atol=1e-12, rtol=0)


@pytest.mark.parametrize('per_group_bias', [False, True])
def test_gradients_fused_equal_explicit(per_group_bias):
    """Training: a learned bias (Swin's table, CrossFormer's DPB) and the input get the same
    gradients on both paths, and the fused path passes gradcheck."""
    torch.manual_seed(0)
    attn = Attention(16, 2).double()
    n_groups, n_tok = 4, 5
    x = torch.randn(2 * n_groups, n_tok, 16, dtype=torch.double, requires_grad=True)
    shape = (n_groups, 2, n_tok, n_tok) if per_group_bias else (2, n_tok, n_tok)
    bias = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    shift = torch.rand(n_groups, n_tok, n_tok) > 0.6
    shift[:, :, 0] = False  # no query loses every key (gradcheck cannot see through those)
    kpm = torch.zeros(n_groups, n_tok, dtype=torch.bool)
    kpm[::2, -1] = True

    def run(x, bias):
        return attn(x, attn_bias=bias, attn_mask=shift, key_padding_mask=kpm)

    wrt = (x, bias, attn.qkv.weight, attn.proj.bias)
    out = run(x, bias)
    grads = torch.autograd.grad(out.pow(2).sum(), wrt)
    attn.fused_attn = False
    ref = run(x, bias)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), wrt)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    attn.fused_attn = True
    assert torch.autograd.gradcheck(run, (x, bias))


def test_bias_from_q_with_per_group_mask():
    """A per-sample bias (ViTDet) adds to the per-group bias and masks on both paths."""
    torch.manual_seed(0)
    attn = Attention(8, 2).double().eval()
    n_groups, n_tok = 3, 4
    x = torch.randn(2 * n_groups, n_tok, 8, dtype=torch.double)
    extra = torch.randn(2 * n_groups, 2, n_tok, n_tok, dtype=torch.double)
    bias = torch.randn(2, n_tok, n_tok, dtype=torch.double)
    kpm = torch.zeros(n_groups, n_tok, dtype=torch.bool)
    kpm[1, -1] = True
    seen = []

    def from_q(q):
        seen.append(q.shape)
        return extra

    outs = []
    for fused in (True, False):
        attn.fused_attn = fused
        outs.append(attn(x, attn_bias=bias, key_padding_mask=kpm, bias_from_q=from_q))
    pad = torch.zeros(kpm.shape, dtype=torch.double).masked_fill(kpm, mask_value(torch.double))
    folded = bias + extra.view(2, n_groups, 2, n_tok, n_tok) + pad[None, :, None, None]
    attn.fused_attn = False
    ref = attn(x, bias_from_q=lambda q: folded.view(2 * n_groups, 2, n_tok, n_tok))
    assert seen == [(2 * n_groups, 2, n_tok, 4)] * 2  # unscaled (B_, heads, N, d) queries
    torch.testing.assert_close(outs[0], ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(outs[1], ref, atol=1e-12, rtol=0)


def test_fold_attn_mask_layout():
    """A per-group mask is laid out as (1, n·heads, N, N) for the (B, n·heads) view of q, k, v;
    a shared one stays (1, heads|1, N, N); nothing gives None."""
    q = torch.randn(6, 2, 4, 8)
    assert fold_attn_mask(q) == (None, 1)
    shared, n = fold_attn_mask(q, attn_bias=torch.randn(2, 4, 4))
    assert n == 1 and shared.shape == (1, 2, 4, 4)
    kpm = torch.zeros(3, 4, dtype=torch.bool)
    kpm[2, 1] = True
    mask, n = fold_attn_mask(q, key_padding_mask=kpm)
    assert n == 3 and mask.shape == (1, 6, 4, 4)
    assert (mask[0, 4:, :, 1] == mask_value(torch.float32)).all()  # group 2, both heads
    assert (mask[0, :4] == 0).all()


@pytest.mark.parametrize('fused', [True, False])
def test_masked_keys_do_not_leak(fused):
    torch.manual_seed(2)
    attn = Attention(16, 2, fused_attn=fused).eval()
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
        attn.fused_attn = fused
        y = attn(x, key_padding_mask=kpm)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attn = Attention(16, 2, attn_drop=0.5)
    x = torch.randn(2, 6, 16)
    for fused in (True, False):
        attn.fused_attn = fused
        attn.eval()
        plain = attn(x)
        attn.fused_attn = not fused
        torch.testing.assert_close(attn(x), plain)  # eval: no dropout on either path
        attn.fused_attn = fused
        attn.train()
        assert not torch.allclose(attn(x), plain)


def test_switch_reaches_every_attention():
    """The constructor flag and ``set_fused_attn`` set the one switch of every attention."""
    model = CFSwinTransformer('tiny', fused_attn=False)
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == 12 and not any(m.fused_attn for m in attns)
    model.set_fused_attn(True)
    assert all(m.fused_attn for m in attns)


def test_errors():
    with pytest.raises(ValueError, match='num_heads'):
        Attention(10, 3)
    attn = Attention(16, 2)
    with pytest.raises(ValueError, match='channels'):
        attn(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match='multiple'):
        attn(torch.randn(5, 4, 16), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='attn_bias of shape'):
        attn(torch.randn(2, 4, 16), attn_bias=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match='attn_mask of shape'):
        attn(torch.randn(2, 4, 16), attn_mask=torch.zeros(2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r'key_padding_mask of shape .*\(2 groups\)'):
        attn(torch.randn(6, 4, 16), attn_mask=torch.zeros(2, 4, 4, dtype=torch.bool),
             key_padding_mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match='bool'):
        build_attn_mask(2, 4, torch.float32, key_padding_mask=torch.zeros(1, 4))
