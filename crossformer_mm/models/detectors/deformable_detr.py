"""Deformable DETR (plain, with box refinement, two-stage) on the package's MSDA op.

`Deformable DETR: Deformable Transformers for End-to-End Object Detection
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). Subclasses MMDetection 3.3.0's
``DeformableDETR`` (``mmdet/models/detectors/deformable_detr.py``): same config keys, same state
dict, same outputs, same initialisation; MMDetection builds the transformer, whose attention
modules are then switched to the package's MSDA kernels and SDPA (:mod:`.detr_layers`,
:class:`~.detr_family.DETRFamilyMixin`), and inconsistent configs fail at build time.
"""
from typing import Dict, Optional, Tuple

from mmdet.models.detectors import DeformableDETR
from mmdet.structures import OptSampleList
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from crossformer_mm.ops.torch_compat import is_compiling
from crossformer_mm.registry import MMDET_MODELS, register_model
from .detr_family import DETRFamilyMixin, check_levels

__all__ = ['CFDeformableDETR']


class _StaticShapeTensors(TorchFunctionMode):
    """``torch._shape_as_tensor(x)`` as a tensor built from ``x.shape`` (traceable by
    ``torch.export``; the values are the same)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch._shape_as_tensor:
            return torch.tensor(tuple(args[0].shape), device=args[0].device)
        return func(*args, **(kwargs or {}))


@register_model((MMDET_MODELS, ))
class CFDeformableDETR(DETRFamilyMixin, DeformableDETR):
    """Deformable DETR with the package's multi-scale deformable attention.

    Takes exactly the arguments of mmdet's ``DeformableDETR`` (``with_box_refine``,
    ``as_two_stage``, ``num_feature_levels``, ``encoder``/``decoder``/``positional_encoding``
    dicts, ``num_queries``...), so a config switches by changing ``type``, and an mmdet checkpoint
    loads without missing or unexpected keys.

    Raises:
        ValueError: at build time (:class:`~.detr_family.DETRFamilyMixin`), for ``num_queries`` or
            ``num_feature_levels`` that are not positive ints, deformable attention
            ``num_levels`` different from ``num_feature_levels``, a neck whose ``in_channels``
            differ from the backbone's output channels, whose number of outputs differs from
            ``num_feature_levels`` or whose ``out_channels`` differ from ``embed_dims``.
    """

    def pre_transformer(self, mlvl_feats: Tuple[Tensor],
                        batch_data_samples: OptSampleList = None) -> Tuple[Dict]:
        check_levels(type(self).__name__, self.num_feature_levels, mlvl_feats)
        if batch_data_samples is None:
            raise ValueError(f'{type(self).__name__} needs batch_data_samples (for the image '
                             'shapes and the padding masks)')
        if not is_compiling():
            return super().pre_transformer(mlvl_feats, batch_data_samples)
        # torch.compile / torch.export: mmdet reads each level's size with
        # ``torch._shape_as_tensor``, which fake tensors cannot serve; built from the static sizes
        # instead (same values). The level sizes then go on as ints, so that mmdet's loops over
        # the levels read no tensor.
        with _StaticShapeTensors():
            encoder_inputs, decoder_inputs = super().pre_transformer(mlvl_feats,
                                                                     batch_data_samples)
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
