# A small CrossFormer classifier trained from scratch on the embedded classification demo dataset
# (`python tools/make_demo_data.py` writes data/demo_cls: five shapes, 400 train / 100 val images
# per class, resized to 64x64). Sized for two CPU cores (top-1 >= 0.9 within 10 minutes, see
# docs/model_zoo.md):
#   python tools/train.py configs/demo/crossformer-demo_1xb32-30e_demo-cls-64x64.py
#   python tools/test.py configs/demo/crossformer-demo_1xb32-30e_demo-cls-64x64.py CHECKPOINT
# Backbone as the detection demo's (D=32, depths 1/1/2/1) with 4x4 groups for the 16x16 first stage;
# AdamW 1e-3, label smoothing 0.1, flips only (a random crop can cut the one shape away).
_base_ = ['./_base_/demo-cls_classification.py', 'mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='CrossFormer',
        arch=dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                  group_size=(4, 4, 4, 2), interval=(4, 2, 1, 1)),
        drop_path_rate=0.1,
        final_norm=True,
        out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=5,
        in_channels=256,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        topk=(1, )))

max_epochs = 30
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=2, end=max_epochs)
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=5),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='auto'))
auto_scale_lr = dict(base_batch_size=32)
