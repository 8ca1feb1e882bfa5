# Mask R-CNN with Swin-B (CFSwinTransformer, ImageNet-1K weights), multi-scale 3x, COCO
# (as the Swin-T config).
_base_ = './mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
