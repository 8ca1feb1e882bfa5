"""CFDeformableDETR against mmdet 3.3.0's DeformableDETR (mmcv's MSDA): state dicts, losses,
gradients and predictions, for plain, +refine and +two-stage; build-time checks; edge cases."""
import copy

import pytest
import torch
from _detr_parity_utils import (assert_grads_close, assert_predictions_match,
                                assert_raw_outputs_match, build_pair, deformable_detr_cfg,
                                make_batch, preprocess, rel_diff, to_ours, total_loss)
from mmcv.ops import MultiScaleDeformableAttention
from mmdet.registry import MODELS

from crossformer_mm.models.detectors.detr_layers import SDPAMultiheadAttention
from crossformer_mm.models.msda import MMCVMSDeformAttnOnKernels

VARIANTS = {
    'plain': dict(),
    'refine': dict(with_box_refine=True),
    'twostage': dict(with_box_refine=True, as_two_stage=True, embed=256),
}


@pytest.fixture(scope='module', params=list(VARIANTS))
def pair(request):
    cfg = deformable_detr_cfg(**VARIANTS[request.param])
    return build_pair(cfg)


def test_registered_names_do_not_collide():
    for name in ('CFDeformableDETR', 'CFDeformableDETRHead', 'DeformableDETR',
                 'DeformableDETRHead'):
        assert MODELS.get(name) is not None
    assert MODELS.get('CFDeformableDETR') is not MODELS.get('DeformableDETR')


def test_uses_package_attention(pair):
    ref, ours = pair
    assert isinstance(ref.encoder.layers[0].self_attn, MultiScaleDeformableAttention)
    for layer in ours.encoder.layers:
        assert type(layer.self_attn) is MMCVMSDeformAttnOnKernels
    for layer in ours.decoder.layers:
        assert type(layer.self_attn) is SDPAMultiheadAttention
        assert type(layer.cross_attn) is MMCVMSDeformAttnOnKernels
    assert not any(type(m) is MultiScaleDeformableAttention for m in ours.modules())


def test_state_dict_keys_and_shapes_match(pair):
    ref, ours = pair
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    # a fresh model loads mmdet's checkpoint with nothing missing or unexpected
    fresh = MODELS.build(to_ours(deformable_detr_cfg(**_variant_of(ref), embed=ref.embed_dims)))
    result = fresh.load_state_dict(a, strict=False)
    assert not result.missing_keys and not result.unexpected_keys


def _variant_of(model):
    return dict(with_box_refine=model.with_box_refine, as_two_stage=model.as_two_stage)


def test_same_seed_same_init():
    """init_weights follows mmdet's order: the same seed gives the same weights."""
    cfg = deformable_detr_cfg(with_box_refine=True)
    torch.manual_seed(3)
    ref = MODELS.build(copy.deepcopy(cfg))
    ref.init_weights()
    torch.manual_seed(3)
    ours = MODELS.build(to_ours(cfg))
    ours.init_weights()
    a, b = ref.state_dict(), ours.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


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


def test_channels_last_inputs(pair, monkeypatch):
    """The backbone gets channels-last images; the features equal those of NCHW images."""
    _, ours = pair
    ours.eval()
    inputs = torch.randn(1, 3, 64, 96)
    seen = []
    hook = ours.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            fast = ours.extract_feat(inputs)
            monkeypatch.setattr(type(ours), 'channels_last_inputs', False)
            plain = ours.extract_feat(inputs)
    finally:
        hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not seen[0].is_contiguous() and seen[1].is_contiguous()
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_losses_and_gradients_match(pair):
    ref, ours = pair
    inputs, samples = preprocess(ref, *make_batch())
    ref.train()
    ours.train()
    lr = ref.loss(inputs, copy.deepcopy(samples))
    lo = ours.loss(inputs, copy.deepcopy(samples))
    assert lr.keys() == lo.keys()
    for k in lr:
        assert rel_diff(lo[k], lr[k]) <= 1e-4, (k, lo[k], lr[k])
    ref.zero_grad()
    ours.zero_grad()
    total_loss(lr).backward()
    total_loss(lo).backward()
    assert assert_grads_close(ours, ref) > 50


def test_empty_annotations_train():
    """Images without boxes (one, or the whole batch) give finite losses, like mmdet."""
    ref, ours = build_pair(deformable_detr_cfg(with_box_refine=True, as_two_stage=True, embed=256))
    ref.train()
    ours.train()
    for num_gts in ((0, 2), (0, 0)):
        inputs, samples = preprocess(ref, *make_batch(num_gts=num_gts))
        lo = ours.loss(inputs, copy.deepcopy(samples))
        lr = ref.loss(inputs, copy.deepcopy(samples))
        loss = total_loss(lo)
        assert torch.isfinite(loss)
        for k in lr:
            assert rel_diff(lo[k], lr[k]) <= 1e-4, (num_gts, k)
        ours.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)


def test_zero_size_boxes():
    """A zero-size ground-truth box is a valid target: finite losses equal to mmdet's, finite
    gradients, and predictions keep x1 <= x2, y1 <= y2 inside the image."""
    ref, ours = build_pair(deformable_detr_cfg())
    inputs, samples = preprocess(ref, *make_batch(zero_size=True))
    ref.train()
    ours.train()
    lo = ours.loss(inputs, copy.deepcopy(samples))
    lr = ref.loss(inputs, copy.deepcopy(samples))
    for k in lr:
        assert torch.isfinite(lo[k]), k
        assert rel_diff(lo[k], lr[k]) <= 1e-4, k
    total_loss(lo).backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)
    ours.eval()
    with torch.no_grad():
        out = ours.predict(inputs, copy.deepcopy(samples))
    for s in out:
        b = s.pred_instances.bboxes
        h, w = s.metainfo['img_shape']
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert b.min() >= 0 and (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all()


# ----------------------------------------------------------------------------------------------
# Build-time checks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize('num_queries', [0, -3, 2.5])
def test_bad_num_queries(num_queries):
    with pytest.raises(ValueError, match='num_queries'):
        MODELS.build(to_ours(deformable_detr_cfg(num_queries=num_queries)))


def test_num_feature_levels_must_match_neck():
    cfg = to_ours(deformable_detr_cfg())
    cfg['num_feature_levels'] = 3
    for key in ('encoder', 'decoder'):
        attn = 'self_attn_cfg' if key == 'encoder' else 'cross_attn_cfg'
        cfg[key]['layer_cfg'][attn]['num_levels'] = 3
    with pytest.raises(ValueError, match=r'num_feature_levels=3 .*neck.num_outs=3'):
        MODELS.build(cfg)


def test_num_feature_levels_must_match_attention():
    cfg = to_ours(deformable_detr_cfg())
    cfg['num_feature_levels'] = 3
    with pytest.raises(ValueError, match=r'num_levels=4 must equal num_feature_levels=3'):
        MODELS.build(cfg)


def test_backbone_channels_must_match_neck():
    cfg = to_ours(deformable_detr_cfg())
    cfg['neck']['in_channels'] = [64, 128, 256]
    with pytest.raises(ValueError, match=r'neck.in_channels=\[64, 128, 256\].*\[32, 64, 128\]'):
        MODELS.build(cfg)


def test_neck_out_channels_must_match_embed_dims():
    cfg = to_ours(deformable_detr_cfg())
    cfg['neck']['out_channels'] = 32
    cfg['neck']['norm_cfg'] = None
    with pytest.raises(ValueError, match='neck.out_channels=32'):
        MODELS.build(cfg)


def test_two_stage_at_any_width():
    """The two-stage proposal embedding follows embed_dims (mmdet's is fixed for 256)."""
    cfg = to_ours(deformable_detr_cfg(with_box_refine=True, as_two_stage=True, embed=64))
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    inputs, samples = preprocess(model, *make_batch())
    losses = model.loss(inputs, samples)
    assert torch.isfinite(total_loss(losses))


def test_two_stage_needs_enough_tokens():
    _, ours = build_pair(deformable_detr_cfg(as_two_stage=True, num_queries=200))
    ours.eval()
    inputs, samples = preprocess(ours, *make_batch(sizes=((64, 64), (64, 64))))
    with pytest.raises(ValueError, match='num_queries=200'):
        ours.predict(inputs, samples)
