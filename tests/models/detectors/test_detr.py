"""CFDETR (SDPA attention) against mmdet 3.3.0's DETR: state dicts, losses, gradients,
predictions; the SDPA attention module against mmcv's wrapper; build-time checks."""
import copy

import pytest
import torch
import torch.nn.functional as F
from _detr_parity_utils import (assert_grads_close, assert_predictions_match,
                                assert_raw_outputs_match, build_pair, detr_cfg, make_batch,
                                preprocess, rel_diff, to_ours, total_loss)
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmdet.registry import MODELS

from crossformer_mm.models.detectors.detr_layers import SDPAMultiheadAttention


@pytest.fixture(scope='module')
def pair():
    return build_pair(detr_cfg())


def test_uses_sdpa_attention(pair):
    _, ours = pair
    for layer in ours.encoder.layers:
        assert type(layer.self_attn) is SDPAMultiheadAttention
    for layer in ours.decoder.layers:
        assert type(layer.self_attn) is SDPAMultiheadAttention
        assert type(layer.cross_attn) is SDPAMultiheadAttention


def test_sdpa_is_called(pair, monkeypatch):
    """The attention really goes through F.scaled_dot_product_attention (2 + 2 * 2 calls)."""
    _, ours = pair
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    ours.eval()
    inputs, samples = preprocess(ours, *make_batch())
    with torch.no_grad():
        ours.predict(inputs, samples)
    assert len(calls) == 6


def test_state_dict_keys_and_shapes_match(pair):
    ref, ours = pair
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    assert 'encoder.layers.0.self_attn.attn.in_proj_weight' in b
    assert 'decoder.layers.1.cross_attn.attn.out_proj.bias' in b


def test_predictions_match(pair):
    ref, ours = pair
    inputs, samples = preprocess(ref, *make_batch())
    ref.eval()
    ours.eval()
    assert_raw_outputs_match(ref, ours, inputs, samples)
    with torch.no_grad():
        r = ref.predict(inputs, copy.deepcopy(samples))
        o = ours.predict(inputs, copy.deepcopy(samples))
    assert_predictions_match(r, o)


@pytest.mark.parametrize('num_gts', [(3, 2), (0, 2)])
def test_losses_and_gradients_match(pair, num_gts):
    ref, ours = pair
    inputs, samples = preprocess(ref, *make_batch(num_gts=num_gts))
    ref.train()
    ours.train()
    lr = ref.loss(inputs, copy.deepcopy(samples))
    lo = ours.loss(inputs, copy.deepcopy(samples))
    assert lr.keys() == lo.keys()
    for k in lr:
        assert torch.isfinite(lo[k]), k
        assert rel_diff(lo[k], lr[k]) <= 1e-4, (k, lo[k], lr[k])
    ref.zero_grad()
    ours.zero_grad()
    total_loss(lr).backward()
    total_loss(lo).backward()
    assert assert_grads_close(ours, ref) > 30


def test_zero_size_boxes(pair):
    ref, ours = pair
    inputs, samples = preprocess(ref, *make_batch(zero_size=True))
    ref.train()
    ours.train()
    lo = ours.loss(inputs, copy.deepcopy(samples))
    lr = ref.loss(inputs, copy.deepcopy(samples))
    for k in lr:
        assert torch.isfinite(lo[k]), k
        assert rel_diff(lo[k], lr[k]) <= 1e-4, k


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('masks', ['none', 'padding', 'attn_bool', 'attn_float', 'both'])
def test_sdpa_attention_matches_mmcv(batch_first, masks):
    torch.manual_seed(0)
    ref = MultiheadAttention(embed_dims=32, num_heads=4, batch_first=batch_first).eval()
    ours = SDPAMultiheadAttention(embed_dims=32, num_heads=4, batch_first=batch_first).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    bs, nq, nk = 2, 7, 11
    shape = (lambda n: (bs, n, 32)) if batch_first else (lambda n: (n, bs, 32))
    q, k, v = torch.randn(shape(nq)), torch.randn(shape(nk)), torch.randn(shape(nk))
    qp, kp = torch.randn(shape(nq)), torch.randn(shape(nk))
    kw = {}
    if masks in ('padding', 'both'):
        pad = torch.zeros(bs, nk, dtype=torch.bool)
        pad[0, -3:] = True
        kw['key_padding_mask'] = pad
    if masks in ('attn_bool', 'both'):
        kw['attn_mask'] = torch.rand(nq, nk) > 0.7
        kw['attn_mask'][:, 0] = False
    if masks == 'attn_float':
        kw['attn_mask'] = torch.randn(nq, nk)
    r = ref(q, k, v, query_pos=qp, key_pos=kp, **kw)
    o = ours(q, k, v, query_pos=qp, key_pos=kp, **kw)
    torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_sdpa_attention_checks_heads():
    with pytest.raises(ValueError, match='divisible by num_heads'):
        SDPAMultiheadAttention(embed_dims=30, num_heads=4)


@pytest.mark.parametrize('num_queries', [0, -1])
def test_bad_num_queries(num_queries):
    with pytest.raises(ValueError, match='num_queries'):
        MODELS.build(to_ours(detr_cfg(num_queries=num_queries)))


def test_backbone_channels_must_match_neck():
    cfg = to_ours(detr_cfg())
    cfg['neck']['in_channels'] = [2048]
    with pytest.raises(ValueError, match=r'neck.in_channels=\[2048\].*\[128\]'):
        MODELS.build(cfg)
