# DETR R50, 150 epochs on COCO: MMDetection's config with the package's detector (SDPA global
# attention) and head. Checkpoints of mmdet's model load unchanged.
_base_ = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'

custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)

model = dict(type='CFDETR', bbox_head=dict(type='CFDETRHead'))
