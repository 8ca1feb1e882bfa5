"""Deformable DETR (plain, with box refinement, two-stage) on the package's MSDA op.

`Deformable DETR: Deformable Transformers for End-to-End Object Detection
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). Subclasses MMDetection 3.3.0's
``DeformableDETR`` (``mmdet/models/detectors/deformable_detr.py``): same config keys, same state
dict, same outputs; the encoder/decoder run :class:`crossformer_mm.ops.MSDeformAttn` and SDPA
(:mod:`crossformer_mm.models.layers.detr_layers`), and inconsistent configs fail at build time.
"""
from typing import Dict, Optional, Tuple

from mmcv.ops import MultiScaleDeformableAttention
from mmdet.models.detectors import DeformableDETR
from mmdet.models.detectors.base_detr import DetectionTransformer
from mmdet.models.layers import SinePositionalEncoding
from mmdet.structures import OptSampleList
from mmengine.model import xavier_init
import torch
from torch import Tensor, nn
from torch.nn.init import normal_

from crossformer_mm.ops import MSDeformAttn
from crossformer_mm.registry import MMDET_MODELS, register_model
from ..layers.detr_layers import (CFDeformableDetrTransformerDecoder,
                                  CFDeformableDetrTransformerEncoder)
from .utils import (CheckedFeatureMixin, check_backbone_neck, check_levels, check_positive_int,
                    check_required)

__all__ = ['CFDeformableDETR']


def _cfg_get(cfg: Optional[dict], *keys: str, default=None):
    for key in keys:
        if cfg is None or key not in cfg:
            return default
        cfg = cfg[key]
    return cfg


@register_model((MMDET_MODELS, ))
class CFDeformableDETR(CheckedFeatureMixin, DeformableDETR):
    """Deformable DETR with the package's multi-scale deformable attention.

    Takes exactly the arguments of mmdet's ``DeformableDETR`` (``with_box_refine``,
    ``as_two_stage``, ``num_feature_levels``, ``encoder``/``decoder``/``positional_encoding``
    dicts, ``num_queries``...), so a config switches by changing ``type``, and an mmdet checkpoint
    loads without missing or unexpected keys.

    Raises:
        ValueError: at build time, for ``num_queries`` or ``num_feature_levels`` that are not
            positive ints, deformable attention ``num_levels`` different from
            ``num_feature_levels``, a neck whose ``in_channels`` differ from the backbone's output
            channels, whose number of outputs differs from ``num_feature_levels`` or whose
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
                 with_box_refine: bool = False,
                 as_two_stage: bool = False,
                 num_feature_levels: int = 4,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        name = type(self).__name__
        check_positive_int(num_queries, 'num_queries')
        check_positive_int(num_feature_levels, 'num_feature_levels')
        for key, cfg in (('encoder', encoder), ('decoder', decoder),
                         ('positional_encoding', positional_encoding), ('bbox_head', bbox_head)):
            check_required(cfg, key, name)
        for where, keys in (('encoder.layer_cfg.self_attn_cfg', ('layer_cfg', 'self_attn_cfg')),
                            ('decoder.layer_cfg.cross_attn_cfg', ('layer_cfg', 'cross_attn_cfg'))):
            levels = _cfg_get(encoder if where.startswith('encoder') else decoder, *keys,
                              'num_levels', default=4)
            if levels != num_feature_levels:
                raise ValueError(f'{name}: {where}.num_levels={levels} must equal '
                                 f'num_feature_levels={num_feature_levels}')
        super().__init__(
            backbone=backbone,
            neck=neck,
            encoder=encoder,
            decoder=decoder,
            bbox_head=bbox_head,
            positional_encoding=positional_encoding,
            num_queries=num_queries,
            with_box_refine=with_box_refine,
            as_two_stage=as_two_stage,
            num_feature_levels=num_feature_levels,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        check_backbone_neck(name, self.backbone, self.neck if self.with_neck else None,
                            self.embed_dims, num_feature_levels)

    def _init_layers(self) -> None:
        """mmdet's layers, with the encoder and decoder on the package's attention."""
        self.positional_encoding = SinePositionalEncoding(**self.positional_encoding)
        self.encoder = CFDeformableDetrTransformerEncoder(**self.encoder)
        self.decoder = CFDeformableDetrTransformerDecoder(**self.decoder)
        self.embed_dims = self.encoder.embed_dims
        if self.decoder.embed_dims != self.embed_dims:
            raise ValueError(f'decoder embed_dims={self.decoder.embed_dims} must equal encoder '
                             f'embed_dims={self.embed_dims}')
        if not self.as_two_stage:
            self.query_embedding = nn.Embedding(self.num_queries, self.embed_dims * 2)
        num_feats = self.positional_encoding.num_feats
        if num_feats * 2 != self.embed_dims:
            raise ValueError(f'positional_encoding.num_feats={num_feats} must be embed_dims / 2 '
                             f'= {self.embed_dims / 2}')
        head_dims = getattr(self.bbox_head, 'embed_dims', self.embed_dims)
        if head_dims != self.embed_dims:
            raise ValueError(f'bbox_head.embed_dims={head_dims} must equal the transformer '
                             f'embed_dims={self.embed_dims}')
        self.level_embed = nn.Parameter(Tensor(self.num_feature_levels, self.embed_dims))
        if self.as_two_stage:
            self.memory_trans_fc = nn.Linear(self.embed_dims, self.embed_dims)
            self.memory_trans_norm = nn.LayerNorm(self.embed_dims)
            self.pos_trans_fc = nn.Linear(self.embed_dims * 2, self.embed_dims * 2)
            self.pos_trans_norm = nn.LayerNorm(self.embed_dims * 2)
        else:
            self.reference_points_fc = nn.Linear(self.embed_dims, 2)

    def init_weights(self) -> None:
        """mmdet's initialisation, in the same order (same seed, same weights), applied to the
        package's deformable attention as well as mmcv's."""
        DetectionTransformer.init_weights(self)
        for coder in self.encoder, self.decoder:
            for p in coder.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, (MSDeformAttn, MultiScaleDeformableAttention)):
                m.init_weights()
        if self.as_two_stage:
            nn.init.xavier_uniform_(self.memory_trans_fc.weight)
            nn.init.xavier_uniform_(self.pos_trans_fc.weight)
        else:
            xavier_init(self.reference_points_fc, distribution='uniform', bias=0.)
        normal_(self.level_embed)

    def pre_transformer(self, mlvl_feats: Tuple[Tensor],
                        batch_data_samples: OptSampleList = None) -> Tuple[Dict]:
        check_levels(type(self).__name__, self.num_feature_levels, mlvl_feats)
        if batch_data_samples is None:
            raise ValueError(f'{type(self).__name__} needs batch_data_samples (for the image '
                             'shapes and the padding masks)')
        encoder_inputs, decoder_inputs = super().pre_transformer(mlvl_feats, batch_data_samples)
        if torch.compiler.is_compiling():
            # torch.compile / torch.export: the level sizes as ints (static for a given input
            # size), so that mmdet's loops over the levels read no tensor.
            shapes = tuple(tuple(feat.shape[-2:]) for feat in mlvl_feats)
            encoder_inputs['spatial_shapes'] = decoder_inputs['spatial_shapes'] = shapes
        return encoder_inputs, decoder_inputs

    def pre_decoder(self, memory: Tensor, memory_mask: Tensor,
                    spatial_shapes: Tensor) -> Tuple[Dict, Dict]:
        if self.as_two_stage and memory.shape[1] < self.num_queries:
            raise ValueError(f'{type(self).__name__}: two-stage selects num_queries='
                             f'{self.num_queries} proposals but the encoder has only '
                             f'{memory.shape[1]} tokens for this input size '
                             f'(levels {[tuple(map(int, hw)) for hw in spatial_shapes]}); use '
                             'larger images or fewer queries')
        return super().pre_decoder(memory, memory_mask, spatial_shapes)

    def get_proposal_pos_embed(self, proposals: Tensor, num_pos_feats: Optional[int] = None,
                               temperature: int = 10000) -> Tensor:
        """Sine embedding of two-stage proposals, ``(bs, nq, 4) -> (bs, nq, 2 * embed_dims)``.

        mmdet fixes ``num_pos_feats=128``, which only fits ``embed_dims=256`` (``pos_trans_fc``
        expects ``2 * embed_dims`` features); the default here is ``embed_dims // 2``, the same
        value at 256 dims and the right one at any other width.
        """
        if num_pos_feats is None:
            num_pos_feats = self.embed_dims // 2
        return DeformableDETR.get_proposal_pos_embed(proposals, num_pos_feats, temperature)
