# Conditional DETR with a CrossFormer-S backbone (last stage, stride 32), MMDetection's 50-epoch
# recipe. Conditional DETR has no multi-scale deformable attention: only the backbone changes.
# Convert the official ImageNet-1K CrossFormer-S checkpoint with
# `python tools/model_converters/crossformer_to_mm.py crossformer-s.pth
# checkpoints/crossformer-s_in1k.pth`.
_base_ = 'mmdet::conditional_detr/conditional-detr_r50_8xb2-50e_coco.py'
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch='s',
        out_indices=(3, ),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/crossformer-s_in1k.pth')),
    neck=dict(in_channels=[768]))
