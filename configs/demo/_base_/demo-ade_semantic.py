# The embedded ADE20K-format demo dataset: 'wall'/'floor' scenes with shapes labelled as ADE20K
# classes. Generate it with `python tools/make_demo_data.py` (writes data/demo_ade).
_base_ = 'mmseg::_base_/datasets/ade20k.py'

data_root = 'data/demo_ade'
metainfo = dict(classes=('wall', 'floor', 'box', 'ball', 'tent', 'flower'),
                palette=[[120, 120, 120], [80, 50, 50], [255, 0, 102], [0, 255, 163],
                         [255, 0, 20], [255, 184, 184]])
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
