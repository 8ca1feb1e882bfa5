"""The package's attention inside MMDetection's DETR and Deformable DETR transformers.

`DETR <https://arxiv.org/abs/2005.12872>`_ (Carion et al., ECCV 2020) and `Deformable DETR
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). The encoders and decoders are
MMDetection 3.3.0's own classes (``mmdet/models/layers/transformer/{detr_layers,
deformable_detr_layers}.py``), built by MMDetection's detectors as they are; :func:`swap_attention`
then switches the class of their attention modules, in place (the package's one way of putting
its computations on mmcv's modules, see :mod:`crossformer_mm.models.msda`):

* mmcv's ``MultiheadAttention`` (DETR's encoder/decoder, Deformable DETR's decoder
  self-attention) becomes :class:`SDPAMultiheadAttention`, which computes
  ``F.scaled_dot_product_attention`` instead of ``nn.MultiheadAttention``'s slow path (mmcv's
  wrapper asks it for the averaged attention weights, which rules out the fused kernels);
* mmcv's ``MultiScaleDeformableAttention`` becomes
  :class:`~crossformer_mm.models.msda.MMCVMSDeformAttnOnKernels` (the package's native CPU and
  Triton kernels instead of mmcv's grid_sample fallback on the CPU).

Both are subclasses of mmcv's classes that only change ``forward``: configs, parameters (the same
objects), state dicts, initialisation and ``isinstance`` checks are MMDetection's.
"""
import warnings
from typing import Dict, Mapping, Optional, Type

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import MultiheadAttention
from mmcv.ops import MultiScaleDeformableAttention
from torch import Tensor, nn

from ..layers import mask_value
from ..msda import MMCVMSDeformAttnOnKernels

__all__ = ['SDPAMultiheadAttention', 'ATTENTION_REPLACEMENTS', 'swap_attention']


class SDPAMultiheadAttention(MultiheadAttention):
    """mmcv's ``MultiheadAttention`` computed with ``F.scaled_dot_product_attention``.

    Same constructor, forward and state dict as ``mmcv.cnn.bricks.transformer.MultiheadAttention``
    (mmcv 2.1.0), whose subclass it is: the projections live in an ``nn.MultiheadAttention``
    named ``attn`` (``attn.in_proj_weight``, ``attn.in_proj_bias``, ``attn.out_proj.weight/bias``)
    and are initialised by it; only the computation differs. Key padding and attention masks are
    folded into one additive mask with the package's convention: boolean masks are True where a
    query may not attend a key and become :func:`~crossformer_mm.models.layers.mask_value` (a
    large finite negative) there; float masks are added as they are. :func:`swap_attention`
    switches built mmcv modules to this class.

    Raises:
        ValueError: ``num_heads`` does not divide ``embed_dims``.
    """

    def __init__(self, embed_dims: int, num_heads: int, *args, **kwargs) -> None:
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by num_heads '
                             f'({num_heads})')
        super().__init__(embed_dims, num_heads, *args, **kwargs)

    @staticmethod
    def _sdpa_mask(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], bs: int,
                   num_queries: int, num_keys: int, dtype: torch.dtype) -> Optional[Tensor]:
        """``nn.MultiheadAttention``-style masks folded into one additive SDPA mask.

        ``attn_mask`` ``(nq, nk)`` or ``(bs*heads, nq, nk)`` and ``key_padding_mask`` ``(bs, nk)``:
        boolean (or byte) masks are True / non-zero where attention is blocked; float masks are
        additive. Returns ``None`` or a float mask broadcastable to ``(bs, heads, nq, nk)``.
        """
        out: Optional[Tensor] = None
        for m, shape in ((attn_mask, None), (key_padding_mask, (bs, 1, 1, num_keys))):
            if m is None:
                continue
            if m.dtype == torch.uint8:
                m = m.bool()
            if shape is not None:
                m = m.view(shape)
            elif m.dim() == 3:
                m = m.view(bs, -1, num_queries, num_keys)
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(
                    m, mask_value(dtype))
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


#: mmcv's attention classes and the package's subclasses their modules are switched to (only
#: ``forward`` differs). A detector's ``attention_replacements`` defaults to this table.
ATTENTION_REPLACEMENTS: Dict[Type[nn.Module], Type[nn.Module]] = {
    MultiheadAttention: SDPAMultiheadAttention,
    MultiScaleDeformableAttention: MMCVMSDeformAttnOnKernels,
}


def swap_attention(model: nn.Module,
                   replacements: Optional[Mapping[Type[nn.Module], Type[nn.Module]]] = None
                   ) -> int:
    """Switch, in place, the class of the attention modules of a built model to the package's.

    Every submodule whose class is exactly a key of ``replacements`` gets the class
    ``replacements[type(m)]``, a subclass that computes the same function with the same
    parameters (the module, its parameters, buffers and hooks stay the same objects; nothing is
    built, so no random number is drawn).

    Args:
        model: E.g. a built MMDetection ``DetrTransformerEncoder`` / ``Decoder`` or their
            deformable variants.
        replacements: Old class → new class; default :data:`ATTENTION_REPLACEMENTS`.

    Returns:
        The number of modules switched.
    """
    table = ATTENTION_REPLACEMENTS if replacements is None else replacements
    count = 0
    for module in model.modules():
        new_cls = table.get(type(module))
        if new_cls is not None:
            module.__class__ = new_cls
            count += 1
    return count
