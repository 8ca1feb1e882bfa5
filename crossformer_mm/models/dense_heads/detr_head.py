"""DETR head, registered as ``CFDETRHead``.

`End-to-End Object Detection with Transformers <https://arxiv.org/abs/2005.12872>`_. Subclasses
MMDetection 3.3.0's ``DETRHead`` (``mmdet/models/dense_heads/detr_head.py``). mmdet applies the
DETR class weighting (``class_weight`` for the objects, ``bg_cls_weight`` for the no-object class)
only when the head's class *is* ``DETRHead``, so a plain subclass would silently lose it and
compute a different loss; this class applies it itself, the same way.
"""
import copy
from typing import Optional, Tuple

import torch
from mmdet.models.dense_heads import DETRHead

from crossformer_mm.registry import MMDET_MODELS, register_model
from ..utils import check_positive_int

__all__ = ['CFDETRHead']


def split_detr_class_weight(loss_cls: dict, num_classes: int) -> Tuple[dict, float]:
    """DETR's class weighting, as mmdet's ``DETRHead.__init__`` does it.

    Returns:
        The loss config with ``class_weight`` expanded to a ``(num_classes + 1,)`` tensor (the
        last entry ``bg_cls_weight``) and ``bg_cls_weight`` removed, and ``bg_cls_weight``
        (0 when ``class_weight`` is not given).

    Raises:
        TypeError: ``class_weight`` or ``bg_cls_weight`` is not a float.
    """
    loss_cls = copy.deepcopy(dict(loss_cls))
    class_weight = loss_cls.get('class_weight', None)
    if class_weight is None:
        return loss_cls, 0.
    if not isinstance(class_weight, float):
        raise TypeError(f'loss_cls.class_weight must be a float, got {type(class_weight)}')
    bg_cls_weight = loss_cls.get('bg_cls_weight', class_weight)
    if not isinstance(bg_cls_weight, float):
        raise TypeError(f'loss_cls.bg_cls_weight must be a float, got {type(bg_cls_weight)}')
    weights = torch.ones(num_classes + 1) * class_weight
    weights[num_classes] = bg_cls_weight
    loss_cls['class_weight'] = weights
    loss_cls.pop('bg_cls_weight', None)
    return loss_cls, bg_cls_weight


@register_model((MMDET_MODELS, ))
class CFDETRHead(DETRHead):
    """mmdet's ``DETRHead`` (same arguments, layers, losses and state dict).

    Raises:
        ValueError: ``num_classes`` is not a positive int.
    """

    def __init__(self, num_classes: int, *args, loss_cls: Optional[dict] = None,
                 **kwargs) -> None:
        check_positive_int(num_classes, 'num_classes')
        if loss_cls is None:
            loss_cls = dict(type='CrossEntropyLoss', bg_cls_weight=0.1, use_sigmoid=False,
                            loss_weight=1.0, class_weight=1.0)
        loss_cls, bg_cls_weight = split_detr_class_weight(loss_cls, num_classes)
        super().__init__(num_classes, *args, loss_cls=loss_cls, **kwargs)
        self.bg_cls_weight = bg_cls_weight
