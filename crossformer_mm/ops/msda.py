"""Multi-scale deformable attention (MSDA), the core op of Deformable DETR.

`Deformable DETR: Deformable Transformers for End-to-End Object Detection
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). Semantics and the module's interface
follow mmcv 2.1.0's ``mmcv/ops/multi_scale_deform_attn.py`` so that state dicts and configs move
between the two; the kernels are this package's own.

The op is a triple:

* :func:`ms_deform_attn_pytorch` -- a gather-based pure-PyTorch reference (slow, obviously
  correct, differentiable by autograd);
* :class:`MSDeformAttnFunction` -- the autograd ``Function`` over the native kernels: the C++ CPU
  kernel in ``crossformer_mm._ext`` and the Triton GPU kernel in :mod:`.msda_triton`;
* :class:`MSDeformAttn` -- a drop-in for ``mmcv.ops.MultiScaleDeformableAttention`` that
  dispatches by device.

:func:`ms_deform_attn` is the entry point: it validates its arguments (shapes, dtypes, devices,
level layout) and picks the kernel.
"""
import math
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule, constant_init, xavier_init
from torch.autograd.function import Function, once_differentiable

from ..registry import register_model

__all__ = [
    'MSDeformAttn', 'MSDeformAttnFunction', 'check_ms_deform_attn_inputs', 'ms_deform_attn',
    'ms_deform_attn_pytorch', 'native_kernel_available', 'replace_mmcv_msda'
]

try:
    from .. import _ext as _EXT
except ImportError:  # built without the native ops (pure-Python install)
    _EXT = None

_WARNED: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def native_kernel_available(device: torch.device) -> bool:
    """Whether ``ms_deform_attn`` has a native kernel for tensors on ``device``."""
    device = torch.device(device)
    if device.type == 'cpu':
        return _EXT is not None
    if device.type == 'cuda':
        from .msda_triton import triton_available
        return triton_available()
    return False


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2**31 - 1
_GPU_GRID_MAX = 65535  # CUDA's limit on the second axis of a launch grid


def _shape_str(shape) -> str:
    return '(' + ', '.join(str(s) for s in shape) + ')'


def _check_gpu_index_range(bs: int, num_keys: int, num_heads: int, num_queries: int) -> None:
    """Refuses CUDA calls beyond the Triton kernel's index range: it computes batch*keys and
    batch*queries*heads offsets in 32 bits and launches one program row per batch*head."""
    if bs * num_keys > _INT32_MAX:
        raise ValueError(f'ms_deform_attn on CUDA: value has bs * num_keys = {bs} * {num_keys} '
                         f'> 2**31 - 1 keys in all; split the batch')
    if bs * num_queries * num_heads > _INT32_MAX:
        raise ValueError('ms_deform_attn on CUDA: sampling_locations has bs * num_queries * '
                         f'num_heads = {bs} * {num_queries} * {num_heads} > 2**31 - 1 rows; '
                         'split the batch or the queries')
    if bs * num_heads > _GPU_GRID_MAX:
        raise ValueError(f'ms_deform_attn on CUDA: bs * num_heads = {bs} * {num_heads} exceeds '
                         f'the kernel\'s limit of {_GPU_GRID_MAX}; split the batch')


def check_ms_deform_attn_inputs(value: torch.Tensor, spatial_shapes: torch.Tensor,
                                level_start_index: torch.Tensor,
                                sampling_locations: torch.Tensor,
                                attention_weights: torch.Tensor) -> List[Tuple[int, int]]:
    """Checks the five arguments of :func:`ms_deform_attn` against each other.

    Returns:
        The level sizes ``[(H_0, W_0), ...]`` as Python ints.

    Raises:
        TypeError: an argument is not a tensor or has the wrong dtype.
        ValueError: shapes disagree, the level layout does not tile ``value``, or the tensors are
            on different devices.
    """
    args = dict(value=value, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                sampling_locations=sampling_locations, attention_weights=attention_weights)
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'ms_deform_attn: {name} must be a torch.Tensor, got {type(t)}')
        if t.layout != torch.strided:
            raise TypeError(f'ms_deform_attn: {name} must be a dense (strided) tensor, got '
                            f'layout {t.layout}')
    for name in ('value', 'sampling_locations', 'attention_weights'):
        if args[name].dtype not in _FLOAT_DTYPES:
            raise TypeError(f'ms_deform_attn: {name} must be a floating-point tensor (float64, '
                            f'float32, float16 or bfloat16), got {args[name].dtype}')
    for name in ('spatial_shapes', 'level_start_index'):
        if args[name].is_floating_point() or args[name].is_complex() or \
                args[name].dtype == torch.bool:
            raise TypeError(f'ms_deform_attn: {name} must be an integer (int64) tensor, got '
                            f'{args[name].dtype}')
    devices = {name: t.device for name, t in args.items()}
    if len(set(devices.values())) > 1:
        raise ValueError('ms_deform_attn: all arguments must be on the same device, got ' +
                         ', '.join(f'{n} on {d}' for n, d in devices.items()))

    if value.dim() != 4:
        raise ValueError('ms_deform_attn: value must have shape (bs, num_keys, num_heads, '
                         f'head_dims), got {_shape_str(value.shape)}')
    bs, num_keys, num_heads, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError('ms_deform_attn: spatial_shapes must have shape (num_levels, 2), got '
                         f'{_shape_str(spatial_shapes.shape)}')
    num_levels = spatial_shapes.shape[0]
    if num_levels == 0:
        raise ValueError('ms_deform_attn: spatial_shapes must hold at least one level')
    if level_start_index.shape != (num_levels, ):
        raise ValueError(f'ms_deform_attn: level_start_index must have shape ({num_levels},) '
                         f'(one entry per level), got {_shape_str(level_start_index.shape)}')
    if sampling_locations.dim() != 6:
        raise ValueError('ms_deform_attn: sampling_locations must have shape (bs, num_queries, '
                         'num_heads, num_levels, num_points, 2), got '
                         f'{_shape_str(sampling_locations.shape)}')
    num_queries, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    expected = (bs, num_queries, num_heads, num_levels, num_points, 2)
    if tuple(sampling_locations.shape) != expected:
        raise ValueError('ms_deform_attn: sampling_locations must have shape (bs, num_queries, '
                         'num_heads, num_levels, num_points, 2) = '
                         f'{_shape_str(expected)} given value {_shape_str(value.shape)} and '
                         f'{num_levels} levels, got {_shape_str(sampling_locations.shape)}')
    expected = expected[:5]
    if tuple(attention_weights.shape) != expected:
        raise ValueError('ms_deform_attn: attention_weights must have shape (bs, num_queries, '
                         f'num_heads, num_levels, num_points) = {_shape_str(expected)}, got '
                         f'{_shape_str(attention_weights.shape)}')

    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f'ms_deform_attn: spatial_shapes must be positive, got {shapes}')
    expected_starts = [0]
    for h, w in shapes[:-1]:
        expected_starts.append(expected_starts[-1] + h * w)
    if starts != expected_starts:
        raise ValueError(f'ms_deform_attn: level_start_index must be {expected_starts} (the '
                         f'running sum of H*W over spatial_shapes {shapes}), got {starts}')
    total = expected_starts[-1] + shapes[-1][0] * shapes[-1][1]
    if total != num_keys:
        raise ValueError(f'ms_deform_attn: value must have sum(H*W) = {total} keys for '
                         f'spatial_shapes {shapes}, got value of shape {_shape_str(value.shape)}')
    if value.device.type == 'cuda':
        _check_gpu_index_range(bs, num_keys, num_heads, num_queries)
    return shapes


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def ms_deform_attn_pytorch(value: torch.Tensor, spatial_shapes: torch.Tensor,
                           level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                           attention_weights: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`ms_deform_attn`: explicit bilinear gathers.

    For each level and corner it gathers the value rows of the four neighbours of every sampling
    point (pixel = loc * size - 0.5), zeroes corners outside the map, and sums with the bilinear
    and attention weights. Differentiable by autograd; memory grows with bs*nq*heads*P*head_dims.
    """
    bs, _, num_heads, head_dims = value.shape
    num_queries, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    v = value.to(dtype).permute(0, 2, 1, 3)  # (bs, heads, keys, head_dims)
    loc = sampling_locations.to(dtype)
    attn = attention_weights.to(dtype)
    out = v.new_zeros(bs, num_queries, num_heads, head_dims)
    for level, ((h, w), start) in enumerate(zip(spatial_shapes.tolist(),
                                                level_start_index.tolist())):
        v_l = v[:, :, start:start + h * w]
        x = loc[:, :, :, level, :, 0] * w - 0.5  # (bs, nq, heads, P)
        y = loc[:, :, :, level, :, 1] * h - 0.5
        # As in the kernels, a point reads nothing unless -1 < x < w and -1 < y < h (NaN fails
        # the test): it is moved to a finite spot outside and weighted 0, so that inf/NaN
        # locations or weights of such points change neither the output nor the gradients.
        outside = ~((x > -1) & (x < w) & (y > -1) & (y < h))
        x, y = x.masked_fill(outside, -2.0), y.masked_fill(outside, -2.0)
        attn_l = attn[:, :, :, level].masked_fill(outside, 0.0)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)),
                   (1, 1, fy * fx))
        for dy, dx, bilinear in corners:
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            # Integer index arithmetic: float32 cannot count the keys of a level beyond 2**24.
            index = yi.clamp(0, h - 1).long() * w + xi.clamp(0, w - 1).long()
            index = index.permute(0, 2, 1, 3).reshape(bs, num_heads, num_queries * num_points, 1)
            gathered = torch.gather(v_l, 2, index.expand(-1, -1, -1, head_dims))
            gathered = gathered.view(bs, num_heads, num_queries, num_points,
                                     head_dims).permute(0, 2, 1, 3, 4)
            # Corners outside the map read zeros, not the (maybe non-finite) clamped row.
            gathered = gathered.masked_fill(~inside[..., None], 0.0)
            coef = bilinear * inside.to(dtype) * attn_l
            out = out + (gathered * coef[..., None]).sum(3)
    return out.flatten(2).to(value.dtype)


# --------------------------------------------------------------------------------------------
# Autograd Function over the native kernels
# --------------------------------------------------------------------------------------------


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class MSDeformAttnFunction(Function):
    """Autograd over the native kernels (CPU: C++ extension; CUDA: Triton).

    Expects validated, contiguous inputs: ``spatial_shapes``/``level_start_index`` int64,
    ``sampling_locations``/``attention_weights`` in the value's opmath dtype (float32 for
    float16/bfloat16/float32 values, float64 for float64). Use :func:`ms_deform_attn`, which
    prepares them.
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, spatial_shapes: torch.Tensor,
                level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                attention_weights: torch.Tensor) -> torch.Tensor:
        args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        if value.is_cuda:
            from .msda_triton import ms_deform_attn_forward_triton
            output = ms_deform_attn_forward_triton(*args)
        else:
            output = _EXT.ms_deform_attn_forward(*args)
        ctx.save_for_backward(*args)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> tuple:
        args = ctx.saved_tensors
        grad_output = grad_output.to(args[0].dtype).contiguous()
        if args[0].is_cuda:
            from .msda_triton import ms_deform_attn_backward_triton
            grad_value, grad_loc, grad_attn = ms_deform_attn_backward_triton(*args, grad_output)
        else:
            grad_value, grad_loc, grad_attn = _EXT.ms_deform_attn_backward(*args, grad_output)
        return grad_value, None, None, grad_loc, grad_attn


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor,
                   level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention with mmcv's semantics.

    Args:
        value: ``(bs, num_keys, num_heads, head_dims)``, the levels flattened row-major and
            concatenated along ``num_keys``.
        spatial_shapes: ``(num_levels, 2)`` integer ``(H, W)`` per level.
        level_start_index: ``(num_levels,)`` integer, the running sum of ``H*W``.
        sampling_locations: ``(bs, num_queries, num_heads, num_levels, num_points, 2)``
            normalised ``(x, y)``; ``(0, 0)`` is the top-left corner of the map and ``(1, 1)`` the
            bottom-right one. Points outside ``[0, 1]`` read zeros (bilinear, zero padding,
            ``align_corners=False``).
        attention_weights: ``(bs, num_queries, num_heads, num_levels, num_points)``.

    Returns:
        ``(bs, num_queries, num_heads * head_dims)`` in the dtype of ``value``; differentiable in
        ``value``, ``sampling_locations`` and ``attention_weights``.

    Both kernels handle float64/float32/bfloat16/float16 values; sampling locations and weights
    are computed in float32 (float64 for float64 values). Without a native kernel for the device
    it runs the reference.
    """
    check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights)
    device = value.device
    use_native = False
    if device.type == 'cpu':
        use_native = _EXT is not None
        if not use_native:
            _warn_once('cpu', 'crossformer_mm._ext is not built: ms_deform_attn runs the slow '
                       'PyTorch reference on the CPU (build with `python setup.py build_ext '
                       '--inplace`)')
    elif device.type == 'cuda':
        use_native = native_kernel_available(device)
        if not use_native:
            _warn_once('cuda', 'ms_deform_attn: triton is not installed: running the PyTorch '
                       'reference on the GPU')
    if not use_native:
        return ms_deform_attn_pytorch(value, spatial_shapes, level_start_index,
                                      sampling_locations, attention_weights)
    opmath = _opmath(value.dtype)
    return MSDeformAttnFunction.apply(value.contiguous(),
                                      spatial_shapes.to(torch.int64).contiguous(),
                                      level_start_index.to(torch.int64).contiguous(),
                                      sampling_locations.to(opmath).contiguous(),
                                      attention_weights.to(opmath).contiguous())


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


@register_model()
class MSDeformAttn(BaseModule):
    """Drop-in for ``mmcv.ops.MultiScaleDeformableAttention`` (mmcv 2.1.0) on native kernels.

    Same constructor, forward signature, parameter names (``sampling_offsets``,
    ``attention_weights``, ``value_proj``, ``output_proj``) and initialisation as mmcv's module,
    so state dicts load either way. The op runs on the C++ kernel on the CPU and on the Triton
    kernel on CUDA (see :func:`ms_deform_attn`); ``im2col_step`` is accepted for compatibility
    and unused. Registered as ``MSDeformAttn`` (mmcv owns ``MultiScaleDeformableAttention``).

    Args:
        embed_dims: Embedding dimension. Default: 256.
        num_heads: Attention heads; must divide ``embed_dims``. Default: 8.
        num_levels: Feature levels. Default: 4.
        num_points: Sampling points per query, head and level. Default: 4.
        im2col_step: Unused (mmcv's CUDA batching step). Default: 64.
        dropout: Dropout on the output before the residual. Default: 0.1.
        batch_first: Inputs are ``(bs, n, embed_dims)`` instead of ``(n, bs, embed_dims)``.
        norm_cfg: Unused, kept for compatibility. Default: None.
        init_cfg: mmengine initialisation config. Default: None.
        value_proj_ratio: Expansion ratio of ``value_proj``. Default: 1.0.
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
                 value_proj_ratio: float = 1.0) -> None:
        super().__init__(init_cfg)
        for name, n in (('embed_dims', embed_dims), ('num_heads', num_heads),
                        ('num_levels', num_levels), ('num_points', num_points)):
            if not isinstance(n, int) or n <= 0:
                raise ValueError(f'MSDeformAttn: {name} must be a positive int, got {n!r}')
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims must be divisible by num_heads, but got {embed_dims} '
                             f'and {num_heads}')
        self.norm_cfg = norm_cfg
        self.dropout = nn.Dropout(dropout)
        self.batch_first = batch_first
        self.im2col_step = im2col_step
        self.embed_dims = embed_dims
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        value_proj_size = int(embed_dims * value_proj_ratio)
        if value_proj_size <= 0 or value_proj_size % num_heads != 0:
            raise ValueError(f'int(embed_dims * value_proj_ratio) = {value_proj_size} must be '
                             f'positive and divisible by num_heads = {num_heads}')
        self.value_proj = nn.Linear(embed_dims, value_proj_size)
        self.output_proj = nn.Linear(value_proj_size, embed_dims)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's initialisation: offsets on a ring per head (scaled by point index), uniform
        attention, Xavier-uniform projections."""
        constant_init(self.sampling_offsets, 0.)
        device = self.sampling_offsets.weight.device
        thetas = torch.arange(self.num_heads, dtype=torch.float32,
                              device=device) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for i in range(self.num_points):
            grid[:, :, i, :] *= i + 1
        self.sampling_offsets.bias.data = grid.view(-1)
        constant_init(self.attention_weights, val=0., bias=0.)
        xavier_init(self.value_proj, distribution='uniform', bias=0.)
        xavier_init(self.output_proj, distribution='uniform', bias=0.)
        self._is_init = True

    def forward(self,
                query: torch.Tensor,
                key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None,
                identity: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None,
                reference_points: Optional[torch.Tensor] = None,
                spatial_shapes: Optional[torch.Tensor] = None,
                level_start_index: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
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
            spatial_shapes: ``(num_levels, 2)`` ``(H, W)`` per level.
            level_start_index: ``(num_levels,)`` start of each level in ``value``.

        Returns:
            ``(num_query, bs, embed_dims)`` (batch first when ``batch_first``).
        """
        if value is None:
            value = query
        if identity is None:
            identity = query
        if spatial_shapes is None or level_start_index is None or reference_points is None:
            raise ValueError('MSDeformAttn.forward needs reference_points, spatial_shapes and '
                             'level_start_index')
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
            inv_normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]],
                                         -1).to(sampling_offsets.dtype).reciprocal()
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
                                attention_weights)
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
                    spatial_shapes=spatial_shapes, key_padding_mask=key_padding_mask)
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
        if tuple(spatial_shapes.shape) != (self.num_levels, 2):
            raise ValueError(f'MSDeformAttn: spatial_shapes must have shape ({self.num_levels}, '
                             f'2) for num_levels = {self.num_levels}, got '
                             f'{_shape_str(spatial_shapes.shape)}')
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

    @classmethod
    def from_mmcv(cls, module: nn.Module) -> 'MSDeformAttn':
        """Builds an :class:`MSDeformAttn` with the configuration and weights of an mmcv
        ``MultiScaleDeformableAttention`` (same device, dtype and train/eval mode)."""
        new = cls(
            embed_dims=module.embed_dims,
            num_heads=module.num_heads,
            num_levels=module.num_levels,
            num_points=module.num_points,
            im2col_step=module.im2col_step,
            dropout=module.dropout.p,
            batch_first=module.batch_first,
            norm_cfg=module.norm_cfg,
            value_proj_ratio=module.value_proj.out_features / module.embed_dims)
        new.to(device=module.value_proj.weight.device, dtype=module.value_proj.weight.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new


def replace_mmcv_msda(model: nn.Module) -> int:
    """Replaces, in place, every mmcv ``MultiScaleDeformableAttention`` inside ``model`` by an
    :class:`MSDeformAttn` carrying the same weights.

    This is how an mmdet Deformable DETR (whose layers build mmcv's class directly) runs on this
    package's kernels: build the detector, then call ``replace_mmcv_msda(detector)``; checkpoints
    keep loading since the parameter names are identical.

    Returns:
        The number of modules replaced.
    """
    from mmcv.ops import MultiScaleDeformableAttention
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MultiScaleDeformableAttention):
                setattr(parent, name, MSDeformAttn.from_mmcv(child))
                count += 1
    return count
