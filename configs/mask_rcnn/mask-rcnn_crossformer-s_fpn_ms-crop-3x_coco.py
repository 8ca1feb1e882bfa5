# Mask R-CNN with a CrossFormer-S backbone, multi-scale 3x, COCO
# (8 GPUs x 2 images).
# Data pipeline and 36-epoch schedule (steps 27/33) from MMDetection's Swin 3x config (multi-scale
# 480-800 short side, half of the images first resized and cropped, as in DETR / Swin); the
# optimizer is the official CrossFormer one (AdamW lr 1e-4 / wd 1e-4, 500-iter warm-up).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
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

max_epochs = 36
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))

train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
