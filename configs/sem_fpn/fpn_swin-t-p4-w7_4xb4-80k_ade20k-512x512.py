# Semantic FPN with Swin-T (CFSwinTransformer, official ImageNet-1K weights), 80k iterations,
# ADE20K 512x512 (recipe of the CrossFormer-S Semantic FPN config).
_base_ = './fpn_crossformer-s_4xb4-80k_ade20k-512x512.py'

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
