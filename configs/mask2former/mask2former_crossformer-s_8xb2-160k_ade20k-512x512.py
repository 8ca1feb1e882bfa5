# Mask2Former with a CrossFormer-S backbone, 160k iterations, ADE20K 512x512 (8 GPUs x 2 images),
# MMSegmentation's Mask2Former recipe (AdamW 1e-4, wd 0.05, backbone lr x0.1, poly LR). Its pixel
# decoder (mmdet's MSDeformAttnPixelDecoder) builds mmcv's MultiScaleDeformableAttention;
# MSDAKernelHook switches every one of them to the package's kernels before the run, keeping
# parameters, initialisation and state-dict keys. Backbone G=[7,7,7,7], I=[8,4,2,1].
_base_ = 'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'
# mmdet.models as in the base (the pixel decoder and losses are mmdet's), then the package.
custom_imports = dict(imports=['mmdet.models', 'crossformer_mm'], allow_failed_imports=False)

# Converted ImageNet-1K weights (see docs/usage.md: tools/model_converters/crossformer_to_mm.py).
pretrained = 'checkpoints/crossformer-s_in1k.pth'
model = dict(
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
    decode_head=dict(in_channels=[96, 192, 384, 768]))

custom_hooks = [dict(type='MSDAKernelHook')]
