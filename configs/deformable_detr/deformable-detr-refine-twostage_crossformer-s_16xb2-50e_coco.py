# Deformable DETR (refine, two-stage) with a CrossFormer-S backbone (strides 8/16/32 + one extra
# level from the neck). Convert the official ImageNet-1K CrossFormer-S checkpoint with
# `python tools/model_converters/crossformer_to_mm.py crossformer-s.pth
# checkpoints/crossformer-s_in1k.pth` (or give the official file directly).
_base_ = './deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch='s',
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/crossformer-s_in1k.pth')),
    neck=dict(in_channels=[192, 384, 768]))

optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'backbone.norm': dict(lr_mult=0.1, decay_mult=0.),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1)
        }))
