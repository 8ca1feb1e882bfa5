"""Chunked inference (attention and MLP) and the learned-bias training path of Attention."""
import pytest
import torch
from torch import nn

from crossformer_mm.models.backbones.crossformer import CrossFormer
from crossformer_mm.models.backbones.swin import CFSwinTransformer
from crossformer_mm.models.layers import Attention, Mlp
from crossformer_mm.models.layers import attention as attention_mod
from crossformer_mm.models.layers import mlp as mlp_mod
from crossformer_mm.models.layers.chunking import (get_inference_chunk_bytes,
                                                   inference_chunk_bytes,
                                                   set_inference_chunk_bytes)


def count_calls(module: nn.Module, monkeypatch=None):
    """Calls of ``module`` (a Linear), as a module or through ``inference_linear``."""
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    if monkeypatch is not None:
        for mod in (attention_mod, mlp_mod):
            real = mod.inference_linear

            def spy(x, layer, *args, _real=real):
                if layer is module:
                    calls.append(1)
                return _real(x, layer, *args)

            monkeypatch.setattr(mod, 'inference_linear', spy)
    return calls


@pytest.mark.parametrize('bad', [-1, 1.5, True, '8'])
def test_budget_rejects_bad_values(bad):
    with pytest.raises(ValueError, match='inference chunk budget'):
        set_inference_chunk_bytes(bad)


def test_budget_context_restores():
    before = get_inference_chunk_bytes()
    with inference_chunk_bytes(1234):
        assert get_inference_chunk_bytes() == 1234
    assert get_inference_chunk_bytes() == before


@pytest.mark.parametrize('batch,groups,per_group', [(3, 1, False), (1, 6, True), (2, 6, True)])
def test_chunked_attention_equals_whole(batch, groups, per_group, monkeypatch):
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    n_tok = 9
    x = torch.randn(batch * groups, n_tok, 32)
    bias = torch.randn(4, n_tok, n_tok)
    shift = (torch.rand(groups, n_tok, n_tok) > 0.7) if per_group else None
    kpm = (torch.rand(groups, n_tok) > 0.8) if per_group else None
    with torch.no_grad():
        with inference_chunk_bytes(0):
            whole = attn(x, attn_bias=bias, attn_mask=shift, key_padding_mask=kpm)
        calls = count_calls(attn.qkv, monkeypatch)
        rows = batch if per_group else 1  # rows of x per group index
        with inference_chunk_bytes(2 * rows * n_tok * 3 * 32 * 4):  # two per slice
            chunked = attn(x, attn_bias=bias, attn_mask=shift, key_padding_mask=kpm)
    assert len(calls) == -(-(groups if per_group else batch * groups) // 2)
    assert len(calls) > 1
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    attn.fused = False  # the explicit path is never chunked
    with torch.no_grad(), inference_chunk_bytes(1):
        explicit = attn(x, attn_bias=bias, attn_mask=shift, key_padding_mask=kpm)
    torch.testing.assert_close(explicit, whole, rtol=1e-5, atol=1e-6)


def test_chunked_attention_with_query_bias():
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    x = torch.randn(5, 4, 16)
    scale = torch.randn(2, 4, 4)

    def bias_from_q(q):
        return q.sum(-1, keepdim=True) * scale

    with torch.no_grad():
        with inference_chunk_bytes(0):
            whole = attn(x, bias_from_q=bias_from_q)
        with inference_chunk_bytes(1):
            chunked = attn(x, bias_from_q=bias_from_q)
        attn.fused = False
        explicit = attn(x, bias_from_q=bias_from_q)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked, explicit, rtol=1e-5, atol=1e-6)


def test_no_chunking_with_autograd(monkeypatch):
    attn = Attention(16, 2)
    calls = count_calls(attn.qkv, monkeypatch)
    x = torch.randn(6, 4, 16, requires_grad=True)
    with inference_chunk_bytes(1):
        attn(x).sum().backward()
    assert len(calls) == 1 and x.grad is not None


@pytest.mark.parametrize('act', [nn.GELU, nn.ReLU, nn.SiLU])
@pytest.mark.parametrize('bias', [True, False])
def test_chunked_mlp_equals_whole(act, bias, monkeypatch):
    torch.manual_seed(0)
    mlp = Mlp(8, 32, act_layer=act, bias=bias).eval()
    x = torch.randn(2, 5, 7, 8)
    with torch.no_grad():
        with inference_chunk_bytes(0):
            whole = mlp(x)
        calls = count_calls(mlp.fc1, monkeypatch)
        with inference_chunk_bytes(32 * 4 * 16):  # 16 tokens per slice
            chunked = mlp(x)
        mlp.fast = False  # the plain path: whole tensors, F.linear
        plain = mlp(x)
    assert len(calls) == 5 + 1  # 70 tokens in 5 slices, then the plain call
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
    assert chunked.shape == (2, 5, 7, 8)


@pytest.mark.parametrize('groups,per_group_bias,masked', [(1, False, False), (4, False, True),
                                                           (4, True, True)])
def test_learned_bias_path_matches_explicit(groups, per_group_bias, masked, monkeypatch):
    """Training with a bias that needs a gradient: the custom autograd function (no stored
    softmax) gives the explicit path's outputs and gradients, and passes gradcheck."""
    torch.manual_seed(0)
    attn = Attention(16, 2).double()
    n_tok, batch = 5, 2
    x = torch.randn(batch * groups, n_tok, 16, dtype=torch.double, requires_grad=True)
    shape = (groups, 2, n_tok, n_tok) if per_group_bias else (2, n_tok, n_tok)
    bias = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    shift = kpm = None
    if masked:  # no query loses every key (gradcheck cannot see through -inf-like logits)
        shift = torch.rand(groups, n_tok, n_tok) > 0.6
        shift[:, :, 0] = False
        kpm = torch.zeros(groups, n_tok, dtype=torch.bool)
        kpm[::2, -1] = True
    used = []
    apply = attention_mod._BiasedSoftmaxAttention.apply
    monkeypatch.setattr(attention_mod._BiasedSoftmaxAttention, 'apply',
                        lambda *a: used.append(1) or apply(*a))

    def run(x, bias):
        return attn(x, attn_bias=bias, attn_mask=shift, key_padding_mask=kpm)

    out = run(x, bias)
    grads = torch.autograd.grad(out.pow(2).sum(), (x, bias, attn.qkv.weight))
    assert used
    attn.fused = False
    ref = run(x, bias)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), (x, bias, attn.qkv.weight))
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    attn.fused = True
    assert torch.autograd.gradcheck(run, (x, bias))


@pytest.mark.parametrize('build', [lambda: CrossFormer('tiny'), lambda: CrossFormer('pp-small'),
                                   lambda: CFSwinTransformer('tiny')],
                         ids=['crossformer', 'crossformer++', 'swin'])
def test_backbones_chunked_inference(build):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        with inference_chunk_bytes(0):
            whole = model(x)
        with inference_chunk_bytes(100_000):
            chunked = model(x)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_inference_linear_matches_linear():
    """oneDNN (float32 CPU, fused activations) and the F.linear fallback compute F.linear."""
    from crossformer_mm.models.layers.chunking import inference_linear
    torch.manual_seed(0)
    layer = nn.Linear(48, 80)
    x = torch.randn(3, 37, 48)
    for act in (None, nn.GELU(), nn.GELU(approximate='tanh'), nn.ReLU(), nn.SiLU()):
        ref = layer(x) if act is None else act(layer(x))
        with torch.no_grad():
            torch.testing.assert_close(inference_linear(x, layer, act), ref, rtol=1e-5,
                                       atol=1e-5)
            torch.testing.assert_close(inference_linear(x.double(), layer.double(), act),
                                       ref.double(), rtol=1e-5, atol=1e-5)
        layer.float()


def test_set_fused_attn_switches_mlp_too():
    model = CFSwinTransformer('tiny')
    model.set_fused_attn(False)
    assert all(not m.fast for m in model.modules() if isinstance(m, Mlp))
    assert all(not m.fused for m in model.modules() if isinstance(m, Attention))
    model.set_fused_attn(True)
    assert all(m.fast for m in model.modules() if isinstance(m, Mlp))
