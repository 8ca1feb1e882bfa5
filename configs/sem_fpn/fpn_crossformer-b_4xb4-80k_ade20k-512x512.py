# Semantic FPN with a CrossFormer-B backbone, 80k iterations, ADE20K 512x512 (as the
# CrossFormer-S config; official recipe).
_base_ = './fpn_crossformer-s_4xb4-80k_ade20k-512x512.py'

pretrained = 'checkpoints/crossformer-b_in1k.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
