# RetinaNet with a CrossFormer-T backbone, 1x schedule, COCO (recipe of the CrossFormer-S config).
_base_ = './retinanet_crossformer-s_fpn_1x_coco.py'

pretrained = 'checkpoints/crossformer-t_in1k.pth'
model = dict(
    backbone=dict(arch='tiny', drop_path_rate=0.1,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
