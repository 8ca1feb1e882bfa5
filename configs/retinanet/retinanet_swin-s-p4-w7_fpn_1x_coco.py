# RetinaNet with Swin-S (CFSwinTransformer), 1x schedule, COCO (as the Swin-T config).
_base_ = './retinanet_swin-t-p4-w7_fpn_1x_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_small_patch4_window7_224.pth'  # noqa: E501
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)))
