# CrossFormer-T on ImageNet-1K, the official recipe (300 epochs, AdamW, 8 GPUs x 128 images,
# 224x224, RandAugment + Mixup/CutMix + label smoothing, the Swin data pipeline) in mmpretrain form.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'

model = dict(
    type='ImageClassifier',
    # final_norm: the official classifier applies `norm` to the last stage before pooling.
    backbone=dict(type='CrossFormer', arch='tiny', drop_path_rate=0.1, final_norm=True,
                  out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        init_cfg=None,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
    ],
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

# the schedule's lr (1e-3 for 1024 images per step) scales with the real batch size
auto_scale_lr = dict(base_batch_size=1024)
