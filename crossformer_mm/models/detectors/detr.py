"""DETR with global attention through ``F.scaled_dot_product_attention``.

`End-to-End Object Detection with Transformers <https://arxiv.org/abs/2005.12872>`_ (Carion et
al., ECCV 2020). Subclasses MMDetection 3.3.0's ``DETR`` (``mmdet/models/detectors/detr.py``): same
config keys, same state dict, same outputs; MMDetection builds the transformer, whose attention
modules are then replaced by
:class:`~.detr_layers.SDPAMultiheadAttention`, and inconsistent configs fail at build time
(:class:`~.detr_family.DETRFamilyMixin`).
"""
from mmdet.models.detectors import DETR

from crossformer_mm.registry import MMDET_MODELS, register_model
from .detr_family import DETRFamilyMixin

__all__ = ['CFDETR']


@register_model((MMDET_MODELS, ))
class CFDETR(DETRFamilyMixin, DETR):
    """DETR with SDPA attention; the arguments and state dict of mmdet's ``DETR``.

    The transformer reads the last feature map of the neck (as mmdet's DETR does).

    Raises:
        ValueError: at build time (:func:`~.detr_family.check_detr_config`,
            :func:`~.detr_family.check_transformer`, :func:`~.detr_family.check_backbone_neck`),
            e.g. for ``num_queries`` that is not a positive int, a neck whose ``in_channels``
            differ from the backbone's output channels, or whose ``out_channels`` differ from
            ``embed_dims``.
    """
