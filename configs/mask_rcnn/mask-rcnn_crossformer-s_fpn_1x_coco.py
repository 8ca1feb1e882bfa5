# Mask R-CNN with a CrossFormer-S backbone, 1x schedule, COCO (8 GPUs x 2 images).
# Recipe of the official CrossFormer detection configs (github.com/cheerss/CrossFormer,
# detection/configs/mask_rcnn_crossformer_s_fpn_1x_coco.py): G=[7,7,7,7], I=[8,4,2,1], AdamW
# lr 1e-4 / wd 1e-4, 500-iter linear warm-up, LR steps at epochs 8 and 11, 1333x800.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

# Converted ImageNet-1K weights (see docs/usage.md: tools/model_converters/crossformer_to_mm.py).
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

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))

train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
