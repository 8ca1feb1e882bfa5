"""Native group-attention kernel: values against the PyTorch reference, broadcasting, bad input."""
import pytest
import torch

from crossformer_mm.models.layers.attention import mask_value
from crossformer_mm.ops import (group_attention, group_attention_available,
                                group_attention_reference)


def test_available_for_float32_cpu():
    assert group_attention_available(torch.empty(0))
    assert not group_attention_available(torch.empty(0, dtype=torch.float64))


@pytest.mark.parametrize('groups,n_tok,heads,dim', [(6, 49, 3, 32), (4, 70, 2, 48), (3, 7, 2, 64),
                                                    (2, 1, 1, 8), (5, 130, 1, 16)])
@pytest.mark.parametrize('nb,nm,key_padding', [(0, 0, False), (1, 0, False), (-1, -1, False),
                                               (1, -1, True)])
def test_matches_reference(groups, n_tok, heads, dim, nb, nm, key_padding):
    torch.manual_seed(0)
    qkv = torch.randn(groups, n_tok, 3, heads, dim)
    nb = groups if nb == -1 else nb
    nm = groups if nm == -1 else nm
    bias = torch.randn(nb, heads, n_tok, n_tok) if nb else None
    mask = None
    if nm:
        rows = 1 if key_padding else n_tok
        blocked = torch.rand(nm, 1, rows, n_tok) > 0.6
        mask = torch.zeros(blocked.shape).masked_fill_(blocked, mask_value(torch.float32))
    out = group_attention(qkv, bias, mask, 0.21)
    ref = group_attention_reference(qkv.double(), None if bias is None else bias.double(),
                                    None if mask is None else mask.double(), 0.21)
    assert out.shape == (groups, n_tok, heads, dim)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-6)


def test_fully_masked_rows_are_uniform():
    qkv = torch.randn(2, 5, 3, 1, 8)
    mask = torch.full((1, 1, 5, 5), mask_value(torch.float32))
    out = group_attention(qkv, None, mask)
    torch.testing.assert_close(out, qkv[:, :, 2].mean(1, keepdim=True).expand_as(out),
                               rtol=1e-4, atol=1e-5)


def test_default_scale_and_thread_counts():
    torch.manual_seed(1)
    qkv = torch.randn(16, 49, 3, 3, 32)
    ref = group_attention_reference(qkv)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.testing.assert_close(group_attention(qkv), ref, rtol=1e-5, atol=2e-6)
    finally:
        torch.set_num_threads(threads)


def test_bad_inputs():
    qkv = torch.randn(4, 9, 3, 2, 8)
    with pytest.raises(ValueError, match='qkv must be'):
        group_attention(torch.randn(4, 9, 2, 2, 8))
    with pytest.raises(ValueError, match='bias of shape'):
        group_attention(qkv, torch.randn(3, 2, 9, 9))  # 3 does not divide 4 groups
    with pytest.raises(ValueError, match='mask of shape'):
        group_attention(qkv, None, torch.randn(1, 1, 9, 8))


def test_other_dtypes_run_the_pytorch_formulation():
    """Without the native kernel (here: float64) the op computes the same function in PyTorch."""
    qkv = torch.randn(4, 9, 3, 2, 8, dtype=torch.float64)
    bias = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    assert not group_attention_available(qkv)
    torch.testing.assert_close(group_attention(qkv, bias), group_attention_reference(qkv, bias))


@pytest.mark.parametrize('mask_rows', [1, 5])
def test_registered_backward_matches_autograd(mask_rows):
    """The op's registered backward (closed form) against autograd through the reference, for
    qkv, a per-group bias and a broadcast mask, in float64 (gradcheck) and through the float32
    native forward."""
    torch.manual_seed(0)
    qkv = torch.randn(4, 5, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(4, 1, mask_rows, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: group_attention(*a, scale=0.3), (qkv, bias, mask),
                                    fast_mode=True)
    leaves = [t.detach().float().requires_grad_() for t in (qkv, bias, mask)]
    out = group_attention(*leaves)
    grads = torch.autograd.grad(out.square().sum(), leaves)
    ref_leaves = [t.detach().requires_grad_() for t in (qkv, bias, mask)]
    ref = group_attention_reference(*ref_leaves)
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_leaves)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    qkv = torch.randn(6, 7, 3, 2, 8)
    bias = torch.randn(3, 2, 7, 7)
    compiled = torch.compile(group_attention, fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(qkv, bias, None, 0.25),
                               group_attention(qkv, bias, None, 0.25))
    torch._dynamo.reset()
