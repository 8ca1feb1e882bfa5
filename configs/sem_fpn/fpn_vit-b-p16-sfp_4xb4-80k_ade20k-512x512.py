# Semantic FPN with ViT-B/16 (CFVisionTransformer, timm ImageNet-21k->1k weights) and ViTDet's
# simple feature pyramid, 80k iterations, ADE20K 512x512 (recipe of the CrossFormer-S Semantic FPN
# config).
_base_ = './fpn_crossformer-s_4xb4-80k_ade20k-512x512.py'

pretrained = 'https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/jx_vit_base_p16_224-80ecf9dd.pth'  # noqa: E501
model = dict(
    backbone=dict(
        _delete_=True,
        type='CFVisionTransformer',
        arch='base',
        img_size=512,
        patch_size=16,
        with_cls_token=True,
        drop_path_rate=0.1,
        out_type='pyramid',
        pyramid_scales=(4.0, 2.0, 1.0, 0.5),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 768]))
