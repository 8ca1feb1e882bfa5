# Mask R-CNN with ViT-B/16 (CFVisionTransformer, MAE weights, simple feature pyramid), 3x schedule
# with multi-scale training, COCO (8 GPUs x 2 images). Data pipeline and 36-epoch schedule
# (steps 27/33) of MMDetection's Swin 3x config; backbone and optimizer of the ViT-B 1x config.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

pretrained = 'https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='CFVisionTransformer',
        arch='base',
        img_size=1024,
        patch_size=16,
        with_cls_token=False,
        final_norm=False,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        use_rel_pos=True,
        drop_path_rate=0.1,
        out_type='pyramid',
        pyramid_scales=(4.0, 2.0, 1.0, 0.5),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 768]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1),
    paramwise_cfg=dict(custom_keys={
        'pos_embed': dict(decay_mult=0.),
        'rel_pos': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))
train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
