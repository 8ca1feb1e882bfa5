# Semantic FPN with a CrossFormer-S backbone, 80k iterations, ADE20K 512x512 (4 GPUs x 4 images,
# batch 16). Recipe of the official CrossFormer configs (github.com/cheerss/CrossFormer,
# segmentation/configs/fpn_crossformer_s_ade20k_40k.py, which trains 80k iterations): AdamW
# lr 1e-4 / wd 1e-4, poly LR (power 0.9). Backbone G=[7,7,7,7], I=[8,4,2,1].
# Multi-scale + flip testing: `tools/test.py CONFIG CKPT --tta`.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
# Converted ImageNet-1K weights (see docs/usage.md: tools/model_converters/crossformer_to_mm.py).
pretrained = 'checkpoints/crossformer-s_in1k.pth'
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch='small',
        group_size=(7, 7, 7, 7),
        interval=(8, 4, 2, 1),
        lda_mode='crossformer',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]),
    decode_head=dict(num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False)
]
train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
