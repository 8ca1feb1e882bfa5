"""The DETR-family detectors with the package's backbones (tiny variants): build-time channel
checks understand them, and a training step and an inference run."""
import copy

import pytest
import torch
from _detr_parity_utils import (NUM_CLASSES, deformable_detr_cfg, detr_cfg, make_batch,
                                preprocess, to_ours)
from mmdet.registry import MODELS

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
BACKBONES = {
    'CrossFormer': dict(type='CrossFormer', arch=dict(TINY), group_size=(4, 4, 4, 4),
                        interval=(4, 2, 1, 1), drop_path_rate=0.),
    'CFSwinTransformer': dict(type='CFSwinTransformer', arch=dict(TINY), window_size=4,
                              drop_path_rate=0.),
}
# ViT: one stride-16 map for DETR; the simple feature pyramid (strides 8/16/32) for Deformable
VIT = dict(type='CFVisionTransformer', arch=dict(embed_dim=32, depth=2, num_heads=2),
           img_size=64, patch_size=16)


def _available(name):
    return MODELS.get(name) is not None


def _train_and_predict(cfg):
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    inputs, samples = preprocess(model, *make_batch())
    model.train()
    losses = model.loss(inputs, copy.deepcopy(samples))
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters() if n.startswith('backbone.'))
    model.eval()
    with torch.no_grad():
        out = model.predict(inputs, copy.deepcopy(samples))
    assert len(out) == len(samples)
    for result in out:
        assert_valid_detections(result, cfg['test_cfg']['max_per_img'])
    # The detections come from the images: two different images do not score alike.
    assert not torch.equal(out[0].pred_instances.scores, out[1].pred_instances.scores)


def assert_valid_detections(result, max_per_img: int) -> None:
    """The post-processed top-k: ``max_per_img`` boxes inside the original image, scores in
    [0, 1] in decreasing order, labels among the classes."""
    pred = result.pred_instances
    h, w = result.ori_shape
    assert len(pred) == max_per_img
    boxes = pred.bboxes
    assert boxes.shape == (max_per_img, 4) and torch.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
    assert (pred.scores[:-1] >= pred.scores[1:]).all()
    assert ((pred.labels >= 0) & (pred.labels < NUM_CLASSES)).all()


@pytest.mark.parametrize('name', list(BACKBONES))
def test_deformable_detr_with_backbone(name):
    assert _available(name), f'{name} is not registered'
    cfg = to_ours(deformable_detr_cfg(with_box_refine=True, as_two_stage=True))
    cfg['backbone'] = dict(BACKBONES[name], out_indices=(1, 2, 3))
    cfg['neck']['in_channels'] = [32, 64, 128]
    _train_and_predict(cfg)


@pytest.mark.parametrize('name', list(BACKBONES))
def test_detr_with_backbone(name):
    assert _available(name), f'{name} is not registered'
    cfg = to_ours(detr_cfg())
    cfg['backbone'] = dict(BACKBONES[name], out_indices=(3, ))
    cfg['neck']['in_channels'] = [128]
    _train_and_predict(cfg)


def _neck_in_channels(backbone_cfg):
    return [spec.channels for spec in MODELS.build(dict(backbone_cfg)).output_shape()]


def test_deformable_detr_with_vit():
    assert _available('CFVisionTransformer'), 'CFVisionTransformer is not registered'
    cfg = to_ours(deformable_detr_cfg())
    cfg['backbone'] = dict(VIT, out_type='pyramid', pyramid_scales=(2.0, 1.0, 0.5))
    cfg['neck']['in_channels'] = _neck_in_channels(cfg['backbone'])
    assert len(cfg['neck']['in_channels']) == 3
    _train_and_predict(cfg)


def test_detr_with_vit():
    assert _available('CFVisionTransformer'), 'CFVisionTransformer is not registered'
    cfg = to_ours(detr_cfg())
    cfg['backbone'] = dict(VIT, out_type='featmap', out_indices=-1)
    cfg['neck']['in_channels'] = [32]
    _train_and_predict(cfg)


@pytest.mark.parametrize('name', list(BACKBONES))
def test_channel_mismatch_names_backbone_channels(name):
    assert _available(name), f'{name} is not registered'
    cfg = to_ours(deformable_detr_cfg())
    cfg['backbone'] = dict(BACKBONES[name], out_indices=(1, 2, 3))
    cfg['neck']['in_channels'] = [192, 384, 768]  # CrossFormer-S / Swin-T channels
    with pytest.raises(ValueError, match=r'\[32, 64, 128\]'):
        MODELS.build(cfg)
