# DETR with a Swin-T backbone (last stage, stride 32).
_base_ = './detr_r50_8xb2-150e_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth'  # noqa: E501
model = dict(
    backbone=dict(
        _delete_=True,
        type='CFSwinTransformer',
        arch='tiny',
        out_indices=(3, ),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[768]))
