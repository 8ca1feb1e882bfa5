"""Small DETR / Deformable DETR configs and a batch, shared by the detector tests.

Each config is built twice, once with mmdet's types and once with the package's, so that the
tests can copy one state dict into the other and compare losses and predictions.
"""
import copy
from typing import List, Tuple

import mmdet.models  # noqa: F401  (registers mmdet's models and task modules)
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import crossformer_mm  # noqa: F401

init_default_scope('mmdet')

NUM_CLASSES = 5
EMBED = 64


def resnet_tiny(out_indices=(1, 2, 3)) -> dict:
    """ResNet-18 layout with 16 base channels: outputs 32/64/128 channels at strides 8/16/32."""
    return dict(type='ResNet', depth=18, base_channels=16, stem_channels=16, num_stages=4,
                out_indices=out_indices, frozen_stages=-1,
                norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch')


def deformable_detr_cfg(with_box_refine: bool = False, as_two_stage: bool = False,
                        num_queries: int = 30, num_levels: int = 4, embed: int = EMBED) -> dict:
    """mmdet's Deformable DETR config at toy size (2+2 layers, 64 dims, dropout 0).

    mmdet's two-stage proposal embedding is fixed at 128 features per coordinate, so mmdet's
    two-stage model only runs at ``embed=256``.
    """
    return dict(
        type='DeformableDETR',
        num_queries=num_queries,
        num_feature_levels=num_levels,
        with_box_refine=with_box_refine,
        as_two_stage=as_two_stage,
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=1),
        backbone=resnet_tiny(),
        neck=dict(type='ChannelMapper', in_channels=[32, 64, 128], kernel_size=1,
                  out_channels=embed, act_cfg=None, norm_cfg=dict(type='GN', num_groups=8),
                  num_outs=num_levels),
        encoder=dict(
            num_layers=2,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=embed, num_levels=num_levels, dropout=0.,
                                   batch_first=True),
                ffn_cfg=dict(embed_dims=embed, feedforward_channels=128, ffn_drop=0.))),
        decoder=dict(
            num_layers=2,
            return_intermediate=True,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=embed, num_heads=8, dropout=0., batch_first=True),
                cross_attn_cfg=dict(embed_dims=embed, num_levels=num_levels, dropout=0.,
                                    batch_first=True),
                ffn_cfg=dict(embed_dims=embed, feedforward_channels=128, ffn_drop=0.)),
            post_norm_cfg=None),
        positional_encoding=dict(num_feats=embed // 2, normalize=True, offset=-0.5),
        bbox_head=dict(
            type='DeformableDETRHead',
            num_classes=NUM_CLASSES,
            embed_dims=embed,
            sync_cls_avg_factor=True,
            loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                          loss_weight=2.0),
            loss_bbox=dict(type='L1Loss', loss_weight=5.0),
            loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
        train_cfg=dict(assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
        test_cfg=dict(max_per_img=20))


def detr_cfg(num_queries: int = 20) -> dict:
    """mmdet's DETR config at toy size (2+2 layers, 64 dims, dropout 0)."""
    attn = dict(embed_dims=EMBED, num_heads=8, dropout=0., batch_first=True)
    ffn = dict(embed_dims=EMBED, feedforward_channels=128, num_fcs=2, ffn_drop=0.,
               act_cfg=dict(type='ReLU', inplace=True))
    return dict(
        type='DETR',
        num_queries=num_queries,
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=1),
        backbone=resnet_tiny(out_indices=(3, )),
        neck=dict(type='ChannelMapper', in_channels=[128], kernel_size=1, out_channels=EMBED,
                  act_cfg=None, norm_cfg=None, num_outs=1),
        encoder=dict(num_layers=2, layer_cfg=dict(self_attn_cfg=dict(attn), ffn_cfg=dict(ffn))),
        decoder=dict(num_layers=2,
                     layer_cfg=dict(self_attn_cfg=dict(attn), cross_attn_cfg=dict(attn),
                                    ffn_cfg=dict(ffn)),
                     return_intermediate=True),
        positional_encoding=dict(num_feats=EMBED // 2, normalize=True),
        bbox_head=dict(
            type='DETRHead',
            num_classes=NUM_CLASSES,
            embed_dims=EMBED,
            loss_cls=dict(type='CrossEntropyLoss', bg_cls_weight=0.1, use_sigmoid=False,
                          loss_weight=1.0, class_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=5.0),
            loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
        train_cfg=dict(assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='ClassificationCost', weight=1.),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
        test_cfg=dict(max_per_img=20))


OURS = {'DETR': 'CFDETR', 'DeformableDETR': 'CFDeformableDETR', 'DETRHead': 'CFDETRHead',
        'DeformableDETRHead': 'CFDeformableDETRHead'}


def to_ours(cfg: dict) -> dict:
    """The same config with the package's detector and head types."""
    cfg = copy.deepcopy(cfg)
    cfg['type'] = OURS[cfg['type']]
    cfg['bbox_head']['type'] = OURS[cfg['bbox_head']['type']]
    return cfg


def build_pair(cfg: dict, seed: int = 0, noise: float = 0.02) -> Tuple[torch.nn.Module,
                                                                        torch.nn.Module]:
    """Builds mmdet's model and ours from ``cfg``; ours gets mmdet's weights (strict load).

    mmdet's model is initialised by its ``init_weights`` and then every parameter is perturbed
    by Gaussian noise, so that zero-initialised layers (sampling offsets, the last regression
    layer) take part in the comparison.
    """
    torch.manual_seed(seed)
    ref = MODELS.build(copy.deepcopy(cfg))
    ref.init_weights()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * noise)
    ours = MODELS.build(to_ours(cfg))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_batch(sizes=((96, 128), (80, 112)), num_gts=(3, 2), seed: int = 1,
               zero_size: bool = False) -> Tuple[torch.Tensor, List[DetDataSample]]:
    """A padded batch of random images (raw 0..255, as from the data preprocessor's input) and
    data samples with random boxes; images of different sizes exercise the padding masks."""
    g = torch.Generator().manual_seed(seed)
    pad_h = max(h for h, _ in sizes)
    pad_w = max(w for _, w in sizes)
    inputs = torch.zeros(len(sizes), 3, pad_h, pad_w)
    samples = []
    for i, ((h, w), n) in enumerate(zip(sizes, num_gts)):
        inputs[i, :, :h, :w] = torch.rand(3, h, w, generator=g) * 255
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             batch_input_shape=(pad_h, pad_w),
                                             pad_shape=(pad_h, pad_w), scale_factor=(1., 1.)))
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 4
        boxes = torch.cat([xy, xy + wh], 1)
        if zero_size and n > 0:
            boxes[0, 2:] = boxes[0, :2]  # a box of zero width and height
        gt = InstanceData()
        gt.bboxes = boxes
        gt.labels = torch.randint(0, NUM_CLASSES, (n, ), generator=g)
        sample.gt_instances = gt
        samples.append(sample)
    return inputs, samples


def preprocess(model: torch.nn.Module, inputs: torch.Tensor,
               samples: List[DetDataSample]) -> Tuple[torch.Tensor, List[DetDataSample]]:
    """Normalises the inputs like the data preprocessor (no padding, no BGR flip needed)."""
    pre = model.data_preprocessor
    return (inputs - pre.mean) / pre.std, samples


def total_loss(losses: dict) -> torch.Tensor:
    return sum(v for k, v in losses.items() if 'loss' in k)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def assert_grads_close(ours: torch.nn.Module, ref: torch.nn.Module, rtol: float = 2e-3,
                       atol_global: float = 1e-6) -> int:
    """Per parameter: ``max|g - g_ref| <= rtol * max|g_ref| + atol_global * (largest gradient
    of the model)``; the second term covers gradients that are zero up to rounding (e.g. the
    query/key projections of DETR's first decoder self-attention, whose values are all equal).

    Returns:
        The number of parameters compared.
    """
    grads_ref = {n: p.grad for n, p in ref.named_parameters()}
    scale = max(float(g.abs().max()) for g in grads_ref.values() if g is not None)
    checked = 0
    for name, p in ours.named_parameters():
        g_ref = grads_ref[name]
        if g_ref is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        diff = float((p.grad - g_ref).abs().max())
        bound = rtol * float(g_ref.abs().max()) + atol_global * scale
        assert diff <= bound, (name, diff, bound)
        checked += 1
    return checked


def assert_predictions_match(ref_samples, our_samples, box_atol: float = 1e-3,
                             score_atol: float = 1e-5) -> None:
    """Post-processed detections agree: the same number per image, and each of ours has a
    counterpart in mmdet's with the same label, a score within ``score_atol`` and a box within
    ``box_atol`` px. Matched greedily, so queries whose scores tie up to rounding may come out
    of the top-k in either order."""
    for rs, os_ in zip(ref_samples, our_samples):
        rp, op = rs.pred_instances, os_.pred_instances
        assert len(rp) == len(op) > 0
        free = torch.ones(len(rp), dtype=torch.bool)
        for i in range(len(op)):
            ok = free & (rp.labels == op.labels[i]) & \
                ((rp.scores - op.scores[i]).abs() <= score_atol)
            assert ok.any(), f'no counterpart for detection {i}'
            dist = (rp.bboxes - op.bboxes[i]).abs().max(1).values.masked_fill(~ok, float('inf'))
            j = int(dist.argmin())
            assert dist[j] <= box_atol, (i, float(dist[j]))
            free[j] = False


def assert_raw_outputs_match(ref, ours, inputs, samples, atol: float = 1e-5) -> None:
    """The head's raw outputs for every query and decoder layer (class logits, normalised
    boxes) agree, before any top-k."""
    with torch.no_grad():
        r = ref._forward(inputs, copy.deepcopy(samples))
        o = ours._forward(inputs, copy.deepcopy(samples))
    for a, b in zip(r, o):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=atol)
