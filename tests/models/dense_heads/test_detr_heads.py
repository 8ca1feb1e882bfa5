"""CFDETRHead / CFDeformableDETRHead against mmdet 3.3.0's DETRHead / DeformableDETRHead."""
import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import crossformer_mm  # noqa: F401

init_default_scope('mmdet')

DETR_HEAD = dict(
    num_classes=4,
    embed_dims=32,
    loss_cls=dict(type='CrossEntropyLoss', bg_cls_weight=0.1, use_sigmoid=False,
                  loss_weight=1.0, class_weight=1.0),
    loss_bbox=dict(type='L1Loss', loss_weight=5.0),
    loss_iou=dict(type='GIoULoss', loss_weight=2.0),
    train_cfg=dict(assigner=dict(
        type='HungarianAssigner',
        match_costs=[
            dict(type='ClassificationCost', weight=1.),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)
        ])),
    test_cfg=dict(max_per_img=10))

DEFORMABLE_HEAD = dict(
    num_classes=4,
    embed_dims=32,
    num_pred_layer=2,
    share_pred_layer=False,
    loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
    loss_bbox=dict(type='L1Loss', loss_weight=5.0),
    loss_iou=dict(type='GIoULoss', loss_weight=2.0),
    train_cfg=dict(assigner=dict(
        type='HungarianAssigner',
        match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)
        ])),
    test_cfg=dict(max_per_img=10))


def _samples(num_gts=(2, 0)):
    g = torch.Generator().manual_seed(0)
    out = []
    for n in num_gts:
        s = DetDataSample(metainfo=dict(img_shape=(64, 80), ori_shape=(64, 80),
                                        batch_input_shape=(64, 80), scale_factor=(1., 1.)))
        xy = torch.rand(n, 2, generator=g) * 30
        gt = InstanceData()
        gt.bboxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 1], 1)
        gt.labels = torch.randint(0, 4, (n, ), generator=g)
        s.gt_instances = gt
        out.append(s)
    return out


def _build(ref_type, our_type, cfg):
    torch.manual_seed(0)
    ref = MODELS.build(dict(copy.deepcopy(cfg), type=ref_type))
    ref.init_weights()
    ours = MODELS.build(dict(copy.deepcopy(cfg), type=our_type))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def test_detr_head_keeps_class_weighting():
    """mmdet applies bg_cls_weight only when the class *is* DETRHead; ours applies it too."""
    ref, ours = _build('DETRHead', 'CFDETRHead', DETR_HEAD)
    assert ours.bg_cls_weight == ref.bg_cls_weight == 0.1
    torch.testing.assert_close(ours.loss_cls.class_weight, ref.loss_cls.class_weight)
    hidden = torch.randn(2, 2, 7, 32)
    lr = ref.loss(hidden, _samples())
    lo = ours.loss(hidden, _samples())
    assert lr.keys() == lo.keys()
    for k in lr:
        torch.testing.assert_close(lo[k], lr[k])


def test_deformable_head_matches():
    ref, ours = _build('DeformableDETRHead', 'CFDeformableDETRHead', DEFORMABLE_HEAD)
    hidden = torch.randn(2, 2, 7, 32)
    refs = [torch.rand(2, 7, 2), torch.rand(2, 7, 2)]
    lr = ref.loss(hidden, refs, None, None, _samples())
    lo = ours.loss(hidden, refs, None, None, _samples())
    for k in lr:
        torch.testing.assert_close(lo[k], lr[k])
    ref.eval()
    ours.eval()
    pr = ref.predict(hidden, refs, _samples())
    po = ours.predict(hidden, refs, _samples())
    for a, b in zip(pr, po):
        torch.testing.assert_close(b.bboxes, a.bboxes)
        assert torch.equal(b.labels, a.labels)


@pytest.mark.parametrize('head,cfg', [('CFDETRHead', DETR_HEAD),
                                      ('CFDeformableDETRHead', DEFORMABLE_HEAD)])
@pytest.mark.parametrize('num_classes', [0, -2])
def test_bad_num_classes(head, cfg, num_classes):
    with pytest.raises(ValueError, match='num_classes'):
        MODELS.build(dict(copy.deepcopy(cfg), type=head, num_classes=num_classes))


def test_bad_class_weight_type():
    cfg = copy.deepcopy(DETR_HEAD)
    cfg['loss_cls']['class_weight'] = 1
    with pytest.raises(TypeError, match='class_weight'):
        MODELS.build(dict(cfg, type='CFDETRHead'))
