"""Transformer layers of DETR and Deformable DETR on this package's attention kernels.

`DETR <https://arxiv.org/abs/2005.12872>`_ (Carion et al., ECCV 2020) and `Deformable DETR
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). The layers subclass MMDetection
3.3.0's (``mmdet/models/layers/transformer/{detr_layers,deformable_detr_layers}.py``) and keep their
constructor arguments, forward signatures and parameter names, so configs and checkpoints move
between the two unchanged. Two things differ:

* global attention (DETR's encoder/decoder, Deformable DETR's decoder self-attention) runs
  :class:`SDPAMultiheadAttention`, which computes ``F.scaled_dot_product_attention`` instead of
  ``nn.MultiheadAttention``'s slow path (mmcv's wrapper asks it for the averaged attention weights,
  which rules out the fused kernels), with the same ``attn.in_proj_weight`` / ``attn.out_proj.*``
  parameters;
* multi-scale deformable attention runs :class:`crossformer_mm.ops.MSDeformAttn` (native CPU and
  Triton kernels) instead of mmcv's ``MultiScaleDeformableAttention`` (grid_sample fallback on the
  CPU).

The attention classes are one swap point per layer: the class attributes ``global_attn_cls`` and
``deform_attn_cls``. Set them on a subclass (or on these classes, for an experiment) to run
another implementation with the same interface, e.g. mmcv's modules for a comparison.
"""
import warnings
from typing import Optional, Type

import torch
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.drop import build_dropout
from mmcv.cnn.bricks.transformer import FFN
from mmdet.models.layers.transformer.deformable_detr_layers import (
    DeformableDetrTransformerDecoder, DeformableDetrTransformerDecoderLayer,
    DeformableDetrTransformerEncoder, DeformableDetrTransformerEncoderLayer)
from mmdet.models.layers.transformer.detr_layers import (DetrTransformerDecoder,
                                                         DetrTransformerDecoderLayer,
                                                         DetrTransformerEncoder,
                                                         DetrTransformerEncoderLayer)
from mmengine.model import BaseModule, ModuleList
from torch import Tensor, nn

from crossformer_mm.ops import MSDeformAttn

__all__ = [
    'SDPAMultiheadAttention', 'CFDetrTransformerEncoderLayer', 'CFDetrTransformerDecoderLayer',
    'CFDetrTransformerEncoder', 'CFDetrTransformerDecoder',
    'CFDeformableDetrTransformerEncoderLayer', 'CFDeformableDetrTransformerDecoderLayer',
    'CFDeformableDetrTransformerEncoder', 'CFDeformableDetrTransformerDecoder'
]


class SDPAMultiheadAttention(BaseModule):
    """Drop-in for mmcv's ``MultiheadAttention`` wrapper computed with
    ``F.scaled_dot_product_attention``.

    Same constructor, forward and state dict as ``mmcv.cnn.bricks.transformer.MultiheadAttention``
    (mmcv 2.1.0): the projections live in an ``nn.MultiheadAttention`` named ``attn``
    (``attn.in_proj_weight``, ``attn.in_proj_bias``, ``attn.out_proj.weight/bias``) and are
    initialised by it; only the computation differs. Key padding and attention masks are folded
    into one boolean ``attn_mask`` for SDPA.

    Args:
        embed_dims: Embedding dimension.
        num_heads: Attention heads; must divide ``embed_dims``.
        attn_drop: Dropout on the attention probabilities. Default: 0.
        proj_drop: Dropout after the output projection. Default: 0.
        dropout_layer: Dropout layer config on the output before the residual (mmcv's
            ``build_dropout``). Default: ``Dropout(0)``.
        init_cfg: mmengine initialisation config.
        batch_first: Inputs are ``(bs, n, embed_dims)`` instead of ``(n, bs, embed_dims)``.
        bias: Biases in the projections (``nn.MultiheadAttention``'s ``bias``). Default: True.
        dropout: Deprecated mmcv alias: sets ``attn_drop`` and the ``dropout_layer`` probability.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 dropout_layer: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 batch_first: bool = False,
                 bias: bool = True,
                 dropout: Optional[float] = None) -> None:
        super().__init__(init_cfg)
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads '
                             f'({num_heads})')
        dropout_layer = dict(type='Dropout', drop_prob=0.) if dropout_layer is None \
            else dict(dropout_layer)
        if dropout is not None:  # mmcv's deprecated spelling, used by mmdet's DETR configs
            attn_drop = dropout
            dropout_layer['drop_prob'] = dropout
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, attn_drop, bias=bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = build_dropout(dropout_layer) if dropout_layer else nn.Identity()

    @staticmethod
    def _sdpa_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], bs: int,
                   num_queries: int, num_keys: int, dtype: torch.dtype) -> Optional[Tensor]:
        """Folds ``nn.MultiheadAttention``-style masks into one SDPA mask.

        ``attn_mask`` ``(nq, nk)`` or ``(bs*heads, nq, nk)`` and ``key_padding_mask`` ``(bs, nk)``
        use True (or a non-zero byte) for "may not attend"; float masks are additive. SDPA's
        boolean masks use True for "may attend", so boolean masks are inverted; if either mask is
        a float one, the result is additive.
        """
        masks = []
        for m, shape in ((attn_mask, None), (key_padding_mask, (bs, 1, 1, num_keys))):
            if m is None:
                continue
            if m.dtype == torch.uint8:
                m = m.bool()
            if shape is not None:
                m = m.view(shape)
            elif m.dim() == 3:
                m = m.view(bs, -1, num_queries, num_keys)
            masks.append(m)
        if not masks:
            return None
        if all(m.dtype == torch.bool for m in masks):
            blocked = masks[0]
            for m in masks[1:]:
                blocked = blocked | m
            return ~blocked
        out = None
        for m in masks:
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(
                    m, float('-inf'))
            out = m.to(dtype) if out is None else out + m.to(dtype)
        return out

    def forward(self,
                query: Tensor,
                key: Optional[Tensor] = None,
                value: Optional[Tensor] = None,
                identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None,
                key_pos: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                **kwargs) -> Tensor:
        """Same semantics as mmcv's ``MultiheadAttention.forward``; extra keyword arguments
        (the data flow of the transformer layers, e.g. ``spatial_shapes``) are ignored, as there.

        Returns:
            ``identity + dropout(proj_drop(attention))``, shaped like ``query``.
        """
        if key is None:
            key = query
        if value is None:
            value = key
        if identity is None:
            identity = query
        if key_pos is None and query_pos is not None:
            if query_pos.shape == key.shape:
                key_pos = query_pos
            else:
                warnings.warn(f'position encoding of key is missing in {type(self).__name__}.')
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

        bs, num_queries, _ = query.shape
        num_keys = key.shape[1]
        heads, head_dims = self.num_heads, self.embed_dims // self.num_heads
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q = b_k = b_v = None
        if self.attn.in_proj_bias is not None:
            b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(bs, num_queries, heads, head_dims).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(bs, num_keys, heads, head_dims).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(bs, num_keys, heads, head_dims).transpose(1, 2)
        mask = self._sdpa_mask(attn_mask, key_padding_mask, bs, num_queries, num_keys, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn.dropout if self.training else 0.)
        out = self.attn.out_proj(out.transpose(1, 2).reshape(bs, num_queries, self.embed_dims))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return identity + self.dropout_layer(self.proj_drop(out))


# --------------------------------------------------------------------------------------------
# DETR
# --------------------------------------------------------------------------------------------


class CFDetrTransformerEncoderLayer(DetrTransformerEncoderLayer):
    """DETR encoder layer (mmdet's) with SDPA self-attention."""

    global_attn_cls: Type[nn.Module] = SDPAMultiheadAttention

    def _init_layers(self) -> None:
        self.self_attn = self.global_attn_cls(**self.self_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            [build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(2)])


class CFDetrTransformerDecoderLayer(DetrTransformerDecoderLayer):
    """DETR decoder layer (mmdet's) with SDPA self- and cross-attention."""

    global_attn_cls: Type[nn.Module] = SDPAMultiheadAttention

    def _init_layers(self) -> None:
        self.self_attn = self.global_attn_cls(**self.self_attn_cfg)
        self.cross_attn = self.global_attn_cls(**self.cross_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            [build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(3)])


def _check_layers(num_layers: int, name: str) -> None:
    if not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f'{name}.num_layers must be a positive int, got {num_layers!r}')


class CFDetrTransformerEncoder(DetrTransformerEncoder):
    """DETR encoder (mmdet's) built from :class:`CFDetrTransformerEncoderLayer`."""

    layer_cls: Type[nn.Module] = CFDetrTransformerEncoderLayer

    def _init_layers(self) -> None:
        _check_layers(self.num_layers, 'encoder')
        if self.num_cp > 0:
            raise NotImplementedError('encoder.num_cp (fairscale checkpointing) is not supported')
        self.layers = ModuleList([self.layer_cls(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims


class CFDetrTransformerDecoder(DetrTransformerDecoder):
    """DETR decoder (mmdet's) built from :class:`CFDetrTransformerDecoderLayer`."""

    layer_cls: Type[nn.Module] = CFDetrTransformerDecoderLayer

    def _init_layers(self) -> None:
        _check_layers(self.num_layers, 'decoder')
        self.layers = ModuleList([self.layer_cls(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims
        self.post_norm = build_norm_layer(self.post_norm_cfg, self.embed_dims)[1]


# --------------------------------------------------------------------------------------------
# Deformable DETR
# --------------------------------------------------------------------------------------------


class CFDeformableDetrTransformerEncoderLayer(DeformableDetrTransformerEncoderLayer):
    """Deformable DETR encoder layer (mmdet's) on :class:`~crossformer_mm.ops.MSDeformAttn`."""

    deform_attn_cls: Type[nn.Module] = MSDeformAttn

    def _init_layers(self) -> None:
        self.self_attn = self.deform_attn_cls(**self.self_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            [build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(2)])


class CFDeformableDetrTransformerDecoderLayer(DeformableDetrTransformerDecoderLayer):
    """Deformable DETR decoder layer (mmdet's): SDPA self-attention and
    :class:`~crossformer_mm.ops.MSDeformAttn` cross-attention."""

    global_attn_cls: Type[nn.Module] = SDPAMultiheadAttention
    deform_attn_cls: Type[nn.Module] = MSDeformAttn

    def _init_layers(self) -> None:
        self.self_attn = self.global_attn_cls(**self.self_attn_cfg)
        self.cross_attn = self.deform_attn_cls(**self.cross_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = ModuleList(
            [build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(3)])


class CFDeformableDetrTransformerEncoder(DeformableDetrTransformerEncoder):
    """Deformable DETR encoder (mmdet's) built from
    :class:`CFDeformableDetrTransformerEncoderLayer`."""

    layer_cls: Type[nn.Module] = CFDeformableDetrTransformerEncoderLayer

    def _init_layers(self) -> None:
        _check_layers(self.num_layers, 'encoder')
        if self.num_cp > 0:
            raise NotImplementedError('encoder.num_cp (fairscale checkpointing) is not supported')
        self.layers = ModuleList([self.layer_cls(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims


class CFDeformableDetrTransformerDecoder(DeformableDetrTransformerDecoder):
    """Deformable DETR decoder (mmdet's) built from
    :class:`CFDeformableDetrTransformerDecoderLayer`."""

    layer_cls: Type[nn.Module] = CFDeformableDetrTransformerDecoderLayer

    def _init_layers(self) -> None:
        _check_layers(self.num_layers, 'decoder')
        self.layers = ModuleList([self.layer_cls(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims
        if self.post_norm_cfg is not None:
            raise ValueError('decoder.post_norm_cfg must be None for Deformable DETR (its decoder '
                             f'has no post norm), got {self.post_norm_cfg}')
