# Mask R-CNN with Swin-T (the package's CFSwinTransformer), 1x schedule, COCO
# (8 GPUs x 2 images). Inherits MMDetection's config of the same name (its data, schedule and
# AdamW recipe) and swaps SwinTransformer for CFSwinTransformer.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
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
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
