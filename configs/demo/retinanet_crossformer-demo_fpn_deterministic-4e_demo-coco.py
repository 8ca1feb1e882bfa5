# The demo RetinaNet made bit-reproducible on the CPU, for checking that a killed run resumes with
# nothing lost (tests/tools/test_train_test.py): fixed seed, deterministic algorithms, no random
# augmentation, no drop path, no loader workers, a checkpoint every epoch.
#   python tools/train.py configs/demo/retinanet_crossformer-demo_fpn_deterministic-4e_demo-coco.py
#   (kill it at any time, then add --resume to continue)
_base_ = './retinanet_crossformer-demo_fpn_24e_demo-coco.py'

max_epochs = 4
img_scale = (128, 128)
randomness = dict(seed=0, deterministic=True)

model = dict(backbone=dict(drop_path_rate=0.0), test_cfg=dict(score_thr=0.0))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=8),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, begin=0, end=max_epochs,
         by_epoch=True, convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=3))
