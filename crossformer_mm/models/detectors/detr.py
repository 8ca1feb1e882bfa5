"""DETR with global attention through ``F.scaled_dot_product_attention``.

`End-to-End Object Detection with Transformers <https://arxiv.org/abs/2005.12872>`_ (Carion et
al., ECCV 2020). Subclasses MMDetection 3.3.0's ``DETR`` (``mmdet/models/detectors/detr.py``): same
config keys, same state dict, same outputs; the encoder/decoder attention runs
:class:`~crossformer_mm.models.layers.detr_layers.SDPAMultiheadAttention`, and inconsistent configs
fail at build time.
"""
from typing import Optional

from mmdet.models.detectors import DETR
from mmdet.models.layers import SinePositionalEncoding
from torch import nn

from crossformer_mm.registry import MMDET_MODELS, register_model
from ..layers.detr_layers import CFDetrTransformerDecoder, CFDetrTransformerEncoder
from .utils import (CheckedFeatureMixin, check_backbone_neck, check_positive_int,
                    check_required)

__all__ = ['CFDETR']


@register_model((MMDET_MODELS, ))
class CFDETR(CheckedFeatureMixin, DETR):
    """DETR with SDPA attention; the arguments and state dict of mmdet's ``DETR``.

    The transformer reads the last feature map of the neck (as mmdet's DETR does).

    Raises:
        ValueError: at build time, for ``num_queries`` that is not a positive int, a neck whose
            ``in_channels`` differ from the backbone's output channels, or whose
            ``out_channels`` differ from ``embed_dims``.
    """

    def __init__(self,
                 backbone: dict,
                 neck: Optional[dict] = None,
                 encoder: Optional[dict] = None,
                 decoder: Optional[dict] = None,
                 bbox_head: Optional[dict] = None,
                 positional_encoding: Optional[dict] = None,
                 num_queries: int = 100,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        name = type(self).__name__
        check_positive_int(num_queries, 'num_queries')
        for key, cfg in (('encoder', encoder), ('decoder', decoder),
                         ('positional_encoding', positional_encoding), ('bbox_head', bbox_head)):
            check_required(cfg, key, name)
        super().__init__(
            backbone=backbone,
            neck=neck,
            encoder=encoder,
            decoder=decoder,
            bbox_head=bbox_head,
            positional_encoding=positional_encoding,
            num_queries=num_queries,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        neck_module = self.neck if self.with_neck else None
        check_backbone_neck(name, self.backbone, neck_module, self.embed_dims,
                            num_levels=None if neck_module is not None else 1)

    def _init_layers(self) -> None:
        """mmdet's layers, with the encoder and decoder on SDPA attention."""
        self.positional_encoding = SinePositionalEncoding(**self.positional_encoding)
        self.encoder = CFDetrTransformerEncoder(**self.encoder)
        self.decoder = CFDetrTransformerDecoder(**self.decoder)
        self.embed_dims = self.encoder.embed_dims
        if self.decoder.embed_dims != self.embed_dims:
            raise ValueError(f'decoder embed_dims={self.decoder.embed_dims} must equal encoder '
                             f'embed_dims={self.embed_dims}')
        self.query_embedding = nn.Embedding(self.num_queries, self.embed_dims)
        num_feats = self.positional_encoding.num_feats
        if num_feats * 2 != self.embed_dims:
            raise ValueError(f'positional_encoding.num_feats={num_feats} must be embed_dims / 2 '
                             f'= {self.embed_dims / 2}')
        head_dims = getattr(self.bbox_head, 'embed_dims', self.embed_dims)
        if head_dims != self.embed_dims:
            raise ValueError(f'bbox_head.embed_dims={head_dims} must equal the transformer '
                             f'embed_dims={self.embed_dims}')
