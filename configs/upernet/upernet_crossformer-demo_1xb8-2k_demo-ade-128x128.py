# UPerNet with a small CrossFormer trained from scratch on the embedded ADE20K-format demo dataset
# (`python tools/make_demo_data.py` writes data/demo_ade; 6 classes, 128x128 crops), sized for two
# CPU cores: `python tools/train.py configs/upernet/upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py`
# Backbone as configs/demo's RetinaNet (D=32, depths 1/1/2/1), narrow heads (128 / 64 channels).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    '../demo/_base_/demo-ade_semantic.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
]
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch=dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                  group_size=(7, 7, 7, 7), interval=(8, 4, 2, 1)),
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=128, num_classes=6,
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=64, num_classes=6, norm_cfg=norm_cfg))

max_iters = 2000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=max_iters, by_epoch=False)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # torch's AdamW with its fused kernel where this torch has one (crossformer_mm.engine)
    optimizer=dict(type='FusedAdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=10.0, norm_type=2))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
