# UPerNet with ViT-B/16 (CFVisionTransformer) and ViTDet's simple feature pyramid, 160k iterations,
# ADE20K 512x512 (8 GPUs x 2 images).
# Inherits MMSegmentation's ViT-B + MLN UPerNet config (recipe: AdamW lr 6e-5 / wd 0.01, no decay
# on norms / position embedding / class token, 1500-iter warm-up, poly) and replaces its backbone
# and MultiLevelNeck by CFVisionTransformer with the simple feature pyramid (strides 4..32 from the
# last block, native channels 192/384/768/768). Weights: timm's ViT-B/16 (ImageNet-21k, fine-tuned
# on 1k), the file MMSegmentation's config converts.
_base_ = 'mmseg::vit/vit_vit-b16_mln_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

pretrained = 'https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/jx_vit_base_p16_224-80ecf9dd.pth'  # noqa: E501
model = dict(
    pretrained=None,
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
    neck=None,
    decode_head=dict(in_channels=[192, 384, 768, 768]),
    auxiliary_head=dict(in_channels=768, in_index=2))
