# UPerNet with a CrossFormer-S backbone, 160k iterations, ADE20K 512x512 (8 GPUs x 2 images).
# Inherits MMSegmentation's Swin-T UPerNet config, whose recipe is the one of the official
# CrossFormer configs (github.com/cheerss/CrossFormer, segmentation/configs/
# upernet_crossformer_s_ade20k.py): AdamW lr 6e-5 / wd 0.01 with no decay on norms, 1500-iter
# linear warm-up, poly LR, 160k iterations, 512x512 crops. Backbone G=[7,7,7,7], I=[8,4,2,1].
# Multi-scale + flip testing: `tools/test.py CONFIG CKPT --tta` (mmseg's `tta_pipeline` with
# ratios 0.5-1.75 and `tta_model`, inherited from the ADE20K and runtime bases).
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

# Converted ImageNet-1K weights (see docs/usage.md: tools/model_converters/crossformer_to_mm.py).
pretrained = 'checkpoints/crossformer-s_in1k.pth'
model = dict(
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
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
