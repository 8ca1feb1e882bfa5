# DINO (4 scales) with a CrossFormer-S backbone (strides 8/16/32 + one extra level from the neck),
# MMDetection's 12-epoch DINO recipe. mmdet's DINO builds mmcv's MultiScaleDeformableAttention;
# MSDAKernelHook switches every one of them to the package's kernels (C++ on the CPU, Triton on
# CUDA) before the run, keeping parameters, initialisation and state-dict keys.
# Convert the official ImageNet-1K CrossFormer-S checkpoint with
# `python tools/model_converters/crossformer_to_mm.py crossformer-s.pth
# checkpoints/crossformer-s_in1k.pth`.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='CrossFormer',
        arch='s',
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/crossformer-s_in1k.pth')),
    neck=dict(in_channels=[192, 384, 768]))

custom_hooks = [dict(type='MSDAKernelHook')]
