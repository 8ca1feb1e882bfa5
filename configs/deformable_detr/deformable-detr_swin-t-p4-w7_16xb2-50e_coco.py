# Deformable DETR (plain) with a Swin-T backbone.
_base_ = './deformable-detr-refine-twostage_swin-t-p4-w7_16xb2-50e_coco.py'

model = dict(with_box_refine=False, as_two_stage=False)
