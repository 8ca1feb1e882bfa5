# The embedded ImageNet-style classification demo dataset: one shape per image, five classes in
# alphabetical order, read through the annotation files (meta/{train,val}.txt, `<class>/<file>
# <label>` lines; dropping `ann_file` reads the class folders instead, with the same labels).
# Generate it with `python tools/make_demo_data.py` (writes data/demo_cls).
dataset_type = 'CustomDataset'
data_root = 'data/demo_cls/'
metainfo = dict(classes=('circle', 'cross', 'square', 'star', 'triangle'))
img_size = 64

data_preprocessor = dict(
    num_classes=5,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size)),
    dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size)),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='meta/train.txt',
                 data_prefix='train', metainfo=metainfo, pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=50,
    num_workers=1,
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='meta/val.txt',
                 data_prefix='val', metainfo=metainfo, pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
