# Mask R-CNN with a CrossFormer++-S backbone, 1x schedule, COCO.
# As the official CrossFormer++ detection configs (detection/configs/crossformer_pp/ on the `main`
# branch of github.com/cheerss/CrossFormer): the ++ architecture (adaptive cooling layers) with
# G=[7,7,7,7], I=[8,4,2,1] for detection instead of the classification G=[4,4,14,7], I=[4,2,1,1].
_base_ = './mask-rcnn_crossformer-s_fpn_1x_coco.py'

pretrained = 'checkpoints/crossformerpp-s_in1k.pth'
model = dict(
    backbone=dict(arch='pp-small', lda_mode='main', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 512]))
