# Deformable DETR R50, 50 epochs on COCO: MMDetection's config with the package's detector
# (MSDA op, SDPA self-attention) and head. Checkpoints of mmdet's model load unchanged.
_base_ = 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'

custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

model = dict(type='CFDeformableDETR', bbox_head=dict(type='CFDeformableDETRHead'))
