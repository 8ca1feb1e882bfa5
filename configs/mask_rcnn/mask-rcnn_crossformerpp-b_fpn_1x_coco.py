# Mask R-CNN with a CrossFormer++-B backbone, 1x schedule, COCO (as the CrossFormer++-S config).
_base_ = './mask-rcnn_crossformerpp-s_fpn_1x_coco.py'

pretrained = 'checkpoints/crossformerpp-b_in1k.pth'
model = dict(
    backbone=dict(arch='pp-base', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
