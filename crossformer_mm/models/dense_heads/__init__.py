"""DETR-family heads (registered into mmdet's MODELS under the package's own names)."""
from .deformable_detr_head import CFDeformableDETRHead
from .detr_head import CFDETRHead

__all__ = ['CFDETRHead', 'CFDeformableDETRHead']
