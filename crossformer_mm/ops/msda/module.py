"""``MSDeformAttn``: the multi-scale deformable attention module, a drop-in for mmcv 2.1.0's
``MultiScaleDeformableAttention`` (same constructor, forward, parameter names and
initialisation) computed with :func:`~crossformer_mm.ops.ms_deform_attn`.

`Deformable DETR: Deformable Transformers for End-to-End Object Detection
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021).
"""
import math
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from .function import ms_deform_attn
from .reference import SpatialShapes, _shape_str

__all__ = ['MSDeformAttn']



def _level_normalizer(spatial_shapes: SpatialShapes, like: Tensor) -> Tensor:
    """``(num_levels, 2)`` reciprocals of ``(W, H)``."""
    if isinstance(spatial_shapes, Tensor):
        wh = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        return wh.to(like.dtype).reciprocal()
    return torch.tensor([[1.0 / w, 1.0 / h] for h, w in spatial_shapes], dtype=like.dtype,
                        device=like.device)


class MSDeformAttn(nn.Module):
    """Drop-in for ``mmcv.ops.MultiScaleDeformableAttention`` (mmcv 2.1.0) on native kernels.

    Same constructor, forward signature, parameter names (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``) and initialisation as mmcv's module,
    so state dicts load either way. The op runs on the C++ kernel on the CPU and on the Triton
    kernel on CUDA (see :func:`ms_deform_attn`); ``im2col_step`` is accepted for compatibility
    and unused. A plain ``nn.Module`` (only torch needed); the package registers it in the MM
    model registries as ``MSDeformAttn`` (mmcv owns ``MultiScaleDeformableAttention``).

    Args:
        embed_dims: Embedding dimension. Default: 256.
        num_heads: Attention heads; must divide ``embed_dims``. Default: 8.
        num_levels: Feature levels. Default: 4.
        num_points: Sampling points per query, head and level. Default: 4.
        im2col_step: Unused (mmcv's CUDA batching step). Default: 64.
        dropout: Dropout on the output before the residual. Default: 0.1.
        batch_first: Inputs are ``(bs, n, embed_dims)`` instead of ``(n, bs, embed_dims)``.
        norm_cfg: Unused, kept for compatibility. Default: None.
        init_cfg: Kept for compatibility; like mmcv's module, :meth:`init_weights` applies its
            own initialisation. Default: None.
        value_proj_ratio: Expansion ratio of ``value_proj``. Default: 1.0.
        deterministic: Passed to :func:`ms_deform_attn` (None: follow
            ``torch.use_deterministic_algorithms``). Default: None.
    """

    def __init__(self,
                 embed_dims: int = 256,
                 num_heads: int = 8,
                 num_levels: int = 4,
                 num_points: int = 4,
                 im2col_step: int = 64,
                 dropout: float = 0.1,
                 batch_first: bool = False,
                 norm_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 value_proj_ratio: float = 1.0,
                 deterministic: Optional[bool] = None) -> None:
        super().__init__()
        for name, n in (('embed_dims', embed_dims), ('num_heads', num_heads),
                        ('num_levels', num_levels), ('num_points', num_points)):
            if not isinstance(n, int) or n <= 0:
                raise ValueError(f'MSDeformAttn: {name} must be a positive int, got {n!r}')
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims must be divisible by num_heads, but got {embed_dims} '
                             f'and {num_heads}')
        self.init_cfg = init_cfg
        self.norm_cfg = norm_cfg
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.im2col_step = im2col_step
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.deterministic = deterministic
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        value_proj_size = int(embed_dims * value_proj_ratio)
        if value_proj_size <= 0 or value_proj_size % num_heads != 0:
            raise ValueError(f'int(embed_dims * value_proj_ratio) = {value_proj_size} must be '
                             f'positive and divisible by num_heads = {num_heads}')
        self.value_proj = nn.Linear(embed_dims, value_proj_size)
        self.output_proj = nn.Linear(value_proj_size, embed_dims)
        self.init_weights()

    @property
    def is_init(self) -> bool:
        """Whether :meth:`init_weights` ran (mmengine's ``BaseModule`` protocol)."""
        return getattr(self, '_is_init', False)

    def init_weights(self) -> None:
        """mmcv's initialisation: offsets on a ring per head (scaled by point index), uniform
        attention, Xavier-uniform projections."""
        nn.init.constant_(self.sampling_offsets.weight, 0.)
        device = self.sampling_offsets.weight.device
        thetas = torch.arange(self.num_heads, dtype=torch.float32,
                              device=device) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for i in range(self.num_points):
            grid[:, :, i, :] *= i + 1
        self.sampling_offsets.bias.data = grid.view(-1)
        for layer in (self.attention_weights, ):
            nn.init.constant_(layer.weight, 0.)
            nn.init.constant_(layer.bias, 0.)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.)
        self._is_init = True

    def forward(self,
                query: Tensor,
                key: Optional[Tensor] = None,
                value: Optional[Tensor] = None,
                identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                reference_points: Optional[Tensor] = None,
                spatial_shapes: Optional[SpatialShapes] = None,
                level_start_index: Optional[Tensor] = None,
                **kwargs) -> Tensor:
        """Deformable attention of ``query`` over the multi-level ``value``.

        Args:
            query: ``(num_query, bs, embed_dims)`` (``(bs, num_query, embed_dims)`` when
                ``batch_first``).
            key: Unused (as in mmcv).
            value: ``(num_key, bs, embed_dims)``; defaults to ``query``.
            identity: Residual added to the output; defaults to ``query``.
            query_pos: Positional encoding added to ``query``.
            key_padding_mask: ``(bs, num_key)`` bool, True at padded keys (zeroed in value).
            reference_points: ``(bs, num_query, num_levels, 2)`` normalised points, or
                ``(bs, num_query, num_levels, 4)`` boxes ``(cx, cy, w, h)``.
            spatial_shapes: ``(H, W)`` per level, a ``(num_levels, 2)`` tensor or int pairs.
            level_start_index: ``(num_levels,)`` start of each level in ``value`` (may be None
                with int-pair ``spatial_shapes``).

        Returns:
            ``(num_query, bs, embed_dims)`` (batch first when ``batch_first``).
        """
        if value is None:
            value = query
        if identity is None:
            identity = query
        if spatial_shapes is None or reference_points is None or (
                level_start_index is None and isinstance(spatial_shapes, Tensor)):
            raise ValueError('MSDeformAttn.forward needs reference_points, spatial_shapes and '
                             '(with spatial_shapes as a tensor) level_start_index')
        self._check_forward_inputs(query, value, reference_points, spatial_shapes,
                                   key_padding_mask)
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)
            value = value.permute(1, 0, 2)
        bs, num_query, _ = query.shape
        _, num_value, _ = value.shape

        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(bs, num_query, self.num_heads,
                                                             self.num_levels, self.num_points, 2)
        attention_weights = self.attention_weights(query).view(
            bs, num_query, self.num_heads, self.num_levels * self.num_points)
        attention_weights = attention_weights.softmax(-1).view(bs, num_query, self.num_heads,
                                                               self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            # ref + offset / (W, H) per level, in one pass (addcmul with the reciprocals): the
            # encoder's offsets are the largest tensor of the layer.
            inv_normalizer = _level_normalizer(spatial_shapes, sampling_offsets)
            sampling_locations = torch.addcmul(reference_points[:, :, None, :, None, :],
                                               sampling_offsets,
                                               inv_normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            sampling_locations = reference_points[:, :, None, :, None, :2] \
                + sampling_offsets / self.num_points \
                * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError('reference_points must have last dimension 2 (points) or 4 '
                             f'(boxes), got shape {_shape_str(reference_points.shape)}')
        output = ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, deterministic=self.deterministic)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity

    def _check_forward_inputs(self, query: torch.Tensor, value: torch.Tensor,
                              reference_points: torch.Tensor, spatial_shapes: torch.Tensor,
                              key_padding_mask: Optional[torch.Tensor]) -> None:
        """Raises an error naming the argument whose shape does not fit the module or the
        others (the op checks the level layout)."""
        args = dict(query=query, value=value, reference_points=reference_points,
                    key_padding_mask=key_padding_mask)
        if isinstance(spatial_shapes, torch.Tensor):
            args['spatial_shapes'] = spatial_shapes
        for name, t in args.items():
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f'MSDeformAttn: {name} must be a torch.Tensor, got {type(t)}')
        layout = '(bs, n, embed_dims)' if self.batch_first else '(n, bs, embed_dims)'
        for name in ('query', 'value'):
            t = args[name]
            if t.dim() != 3 or t.shape[-1] != self.embed_dims:
                raise ValueError(f'MSDeformAttn: {name} must have shape {layout} with '
                                 f'embed_dims = {self.embed_dims}, got {_shape_str(t.shape)}')
        b = 0 if self.batch_first else 1
        bs, num_query, num_value = query.shape[b], query.shape[1 - b], value.shape[1 - b]
        if value.shape[b] != bs:
            raise ValueError(f'MSDeformAttn: value has batch size {value.shape[b]}, query has '
                             f'{bs} (layout {layout})')
        levels_shape = (tuple(spatial_shapes.shape) if isinstance(spatial_shapes, torch.Tensor)
                        else (len(spatial_shapes), 2))
        if levels_shape != (self.num_levels, 2):
            raise ValueError(f'MSDeformAttn: spatial_shapes must have shape ({self.num_levels}, '
                             f'2) for num_levels = {self.num_levels}, got '
                             f'{_shape_str(levels_shape)}')
        if reference_points.dim() != 4 or tuple(reference_points.shape[:3]) != (
                bs, num_query, self.num_levels) or reference_points.shape[-1] not in (2, 4):
            raise ValueError('MSDeformAttn: reference_points must have shape (bs, num_query, '
                             f'num_levels, 2 or 4) = ({bs}, {num_query}, {self.num_levels}, 2 '
                             f'or 4), got {_shape_str(reference_points.shape)}')
        if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or tuple(
                key_padding_mask.shape) != (bs, num_value)):
            raise ValueError(f'MSDeformAttn: key_padding_mask must be a bool tensor of shape '
                             f'(bs, num_value) = ({bs}, {num_value}), got '
                             f'{key_padding_mask.dtype} {_shape_str(key_padding_mask.shape)}')
