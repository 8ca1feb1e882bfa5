# DETR with a CrossFormer-S backbone (last stage, stride 32).
_base_ = './detr_r50_8xb2-150e_coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch='s',
        out_indices=(3, ),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/crossformer-s_in1k.pth')),
    neck=dict(in_channels=[768]))
