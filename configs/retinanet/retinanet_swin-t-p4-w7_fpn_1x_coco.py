# RetinaNet with Swin-T (the package's CFSwinTransformer), 1x schedule, COCO (8 GPUs x 2 images).
# Inherits MMDetection's Swin-T RetinaNet config and swaps in CFSwinTransformer; the optimizer is
# the AdamW recipe of the Swin / CrossFormer detection papers (lr 1e-4, wd 0.05, no decay on norms
# and position tables) instead of MMDetection's SGD lr 0.01, so the backbones compare on one recipe.
_base_ = 'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

# Official ImageNet-1K weights; the loader reads the official layout directly.
pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth'  # noqa: E501
model = dict(
    backbone=dict(
        _delete_=True,
        type='CFSwinTransformer',
        arch='tiny',
        window_size=7,
        drop_path_rate=0.2,
        out_indices=(1, 2, 3),  # stride 8..32 only, so no norm of an unused stage
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768], start_level=0, num_outs=5))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
