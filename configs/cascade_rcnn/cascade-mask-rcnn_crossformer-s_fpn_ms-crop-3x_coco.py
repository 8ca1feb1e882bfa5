# Cascade Mask R-CNN with a CrossFormer-S backbone, 3x schedule with multi-scale training, COCO
# (8 GPUs x 2 images). MMDetection's Cascade Mask R-CNN (three stages, shared 2-fc box heads);
# backbone and optimizer of the CrossFormer-S Mask R-CNN configs (official CrossFormer recipe:
# G=[7,7,7,7], I=[8,4,2,1], AdamW lr 1e-4 / wd 1e-4); data pipeline and 36-epoch schedule
# (steps 27/33) of MMDetection's Swin 3x config.
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

pretrained = 'checkpoints/crossformer-s_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch='small',
        group_size=(7, 7, 7, 7),
        interval=(8, 4, 2, 1),
        lda_mode='crossformer',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# Multi-scale training: short side 480-800 (long side <= 1333); for half of the images first a
# 400-600 resize and a random 384-600 crop (the DETR / Swin 3x augmentation, as in
# mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py).
ms_scales = [(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
             (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=ms_scales, keep_ratio=True)
            ],
        ]),
    dict(type='PackDetInputs')
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
auto_scale_lr = dict(enable=False, base_batch_size=16)
