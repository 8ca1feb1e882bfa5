# UPerNet with Swin-T (the package's CFSwinTransformer), 160k iterations, ADE20K 512x512
# (8 GPUs x 2 images). Inherits MMSegmentation's config of the same recipe and swaps its
# SwinTransformer for CFSwinTransformer (same function, same official ImageNet-1K weights).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth'  # noqa: E501
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='CFSwinTransformer',
        arch='tiny',
        window_size=7,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
