# RetinaNet with a small CrossFormer trained from scratch on the embedded demo dataset.
# Runs on 2 CPU cores: `bash tools/run_demo.sh` (or tools/train.py + tools/test.py).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './_base_/demo-coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

max_epochs = 24
model = dict(
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch=dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                  group_size=(7, 7, 7, 7), interval=(8, 4, 2, 1)),
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    # P3-P7 (strides 8-128); anchors of 16-25 px at stride 8 cover the smallest (12 px) shapes
    # without the cost of a stride-4 level.
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=96, start_level=1,
              add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(
        num_classes=5, in_channels=96, feat_channels=96, stacked_convs=2,
        anchor_generator=dict(octave_base_scale=2, scales_per_octave=3,
                              strides=[8, 16, 32, 64, 128])),
    test_cfg=dict(score_thr=0.05, max_per_img=50))

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, begin=0, end=max_epochs,
         by_epoch=True, convert_to_iter_based=True)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # torch's AdamW with its fused kernel where this torch has one (crossformer_mm.engine)
    optimizer=dict(type='FusedAdamW', lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=10.0, norm_type=2))
auto_scale_lr = dict(base_batch_size=4)

default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=1, max_keep_ckpts=2),
    # Pictures (tools/test.py --show-dir) show one box per object: the predictions above 0.3,
    # then NMS across classes. The evaluator still gets every class's detections (test_cfg).
    visualization=dict(type='CFDetVisualizationHook', score_thr=0.3, iou_threshold=0.5))
log_processor = dict(window_size=20)
