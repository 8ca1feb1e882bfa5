# Deformable DETR (plain) with a CrossFormer-S backbone.
_base_ = './deformable-detr-refine-twostage_crossformer-s_16xb2-50e_coco.py'

model = dict(with_box_refine=False, as_two_stage=False)
