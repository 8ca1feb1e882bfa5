# RetinaNet with ViT-B/16 (CFVisionTransformer, MAE weights) and ViTDet's simple feature pyramid,
# 1x schedule, COCO (8 GPUs x 2 images).
# Backbone as ViTDet-B (Li et al., ECCV 2022): 14x14 windows with global attention in blocks
# 2/5/8/11, decomposed relative positions, no class token, drop path 0.1. The pyramid gives
# strides 8/16/32 (scales 2, 1, 0.5; native channels 384/768/768) to the usual FPN. Recipe: AdamW
# lr 1e-4, wd 0.1, no decay on norms and position tables, 1x steps; not ViTDet's LSJ 100-epoch
# recipe with layer-wise LR decay.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
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
        pyramid_scales=(2.0, 1.0, 0.5),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384, 768, 768], start_level=0, add_extra_convs='on_input',
              num_outs=5))

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
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
