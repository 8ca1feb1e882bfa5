# Mask R-CNN with a CrossFormer-L backbone, multi-scale 3x, COCO
# (recipe of the CrossFormer-S config).
_base_ = './mask-rcnn_crossformer-s_fpn_ms-crop-3x_coco.py'

pretrained = 'checkpoints/crossformer-l_in1k.pth'
model = dict(
    backbone=dict(arch='large', drop_path_rate=0.5,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
