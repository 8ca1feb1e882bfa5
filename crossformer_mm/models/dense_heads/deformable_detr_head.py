"""Deformable DETR head, registered as ``CFDeformableDETRHead``.

`Deformable DETR <https://arxiv.org/abs/2010.04159>`_. MMDetection 3.3.0's ``DeformableDETRHead``
(``mmdet/models/dense_heads/deformable_detr_head.py``) unchanged but for argument checks: same
arguments, branches (``cls_branches``/``reg_branches``), losses and state dict.
``share_pred_layer``, ``num_pred_layer`` and ``as_two_stage`` are set by the detector from
``with_box_refine``, ``as_two_stage`` and the decoder depth.
"""
from mmdet.models.dense_heads import DeformableDETRHead

from crossformer_mm.registry import MMDET_MODELS, register_model
from ..utils import check_positive_int

__all__ = ['CFDeformableDETRHead']


@register_model((MMDET_MODELS, ))
class CFDeformableDETRHead(DeformableDETRHead):
    """mmdet's ``DeformableDETRHead``.

    Raises:
        ValueError: ``num_classes`` or ``num_pred_layer`` is not a positive int.
    """

    def __init__(self, num_classes: int, *args, share_pred_layer: bool = False,
                 num_pred_layer: int = 6, as_two_stage: bool = False, **kwargs) -> None:
        check_positive_int(num_classes, 'num_classes')
        check_positive_int(num_pred_layer, 'num_pred_layer')
        super().__init__(num_classes, *args, share_pred_layer=share_pred_layer,
                         num_pred_layer=num_pred_layer, as_two_stage=as_two_stage, **kwargs)
