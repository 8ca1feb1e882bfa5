"""What multi-scale deformable attention computes: argument validation and the two pure-PyTorch
formulations.

:func:`check_ms_deform_attn_inputs` is the op's contract (shapes, dtypes, devices, level layout);
:func:`ms_deform_attn_pytorch` (explicit bilinear gathers) is the reference the kernels are tested
against and the path where no kernel serves a device; :func:`ms_deform_attn_grid_sample` (one
``F.grid_sample`` per level) is what ONNX export records. Both are differentiable by autograd and
follow mmcv 2.1.0's ``multi_scale_deformable_attn_pytorch`` semantics.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'SpatialShapes', 'check_ms_deform_attn_inputs', 'ms_deform_attn_grid_sample',
    'ms_deform_attn_pytorch'
]

#: Level sizes: an integer ``(num_levels, 2)`` tensor, or a sequence of ``(H, W)`` ints. The
#: second form is static: ``torch.compile`` and ``torch.export`` never have to read a tensor.
SpatialShapes = Union[Tensor, Sequence[Tuple[int, int]]]

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


def _static_shapes(spatial_shapes: SpatialShapes) -> List[Tuple[int, int]]:
    """The level sizes as Python ints (reads the tensor when given one)."""
    if isinstance(spatial_shapes, Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def _check_level_layout(shapes: List[Tuple[int, int]], starts: Optional[List[int]],
                        num_keys: int) -> List[int]:
    """Checks that the levels tile ``value``; returns the level start indices."""
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f'ms_deform_attn: spatial_shapes must be positive, got {shapes}')
    expected_starts = [0]
    for h, w in shapes[:-1]:
        expected_starts.append(expected_starts[-1] + h * w)
    if starts is not None and starts != expected_starts:
        raise ValueError(f'ms_deform_attn: level_start_index must be {expected_starts} (the '
                         f'running sum of H*W over spatial_shapes {shapes}), got {starts}')
    total = expected_starts[-1] + shapes[-1][0] * shapes[-1][1]
    if total != num_keys:
        raise ValueError(f'ms_deform_attn: value must have sum(H*W) = {total} keys for '
                         f'spatial_shapes {shapes}, got {num_keys}')
    return expected_starts


def _check_int_tensor(name: str, t: Tensor) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f'ms_deform_attn: {name} must be an integer (int64) tensor, got {t.dtype}')


def check_ms_deform_attn_inputs(value: Tensor, spatial_shapes: SpatialShapes,
                                level_start_index: Optional[Tensor], sampling_locations: Tensor,
                                attention_weights: Tensor,
                                check_values: bool = True) -> Optional[List[Tuple[int, int]]]:
    """Checks the arguments of :func:`ms_deform_attn` against each other.

    Args:
        check_values: Also check the level layout held in ``spatial_shapes`` /
            ``level_start_index`` tensors (reads them: a device sync on a GPU, and not allowed
            while ``torch.compile`` traces). Static shapes are always checked against
            ``value``.

    Returns:
        The level sizes ``[(H_0, W_0), ...]`` as Python ints, or None when they are in a tensor
        that was not read.

    Raises:
        TypeError: an argument is not a tensor (or ``spatial_shapes`` not a sequence of int
            pairs) or has the wrong dtype.
        ValueError: shapes disagree, the level layout does not tile ``value``, or the tensors are
            on different devices.
    """
    args = dict(value=value, sampling_locations=sampling_locations,
                attention_weights=attention_weights)
    static = not isinstance(spatial_shapes, Tensor)
    if not static:
        args['spatial_shapes'] = spatial_shapes
    if level_start_index is not None or not static:
        args['level_start_index'] = level_start_index
    for name, t in args.items():
        if not isinstance(t, Tensor):
            raise TypeError(f'ms_deform_attn: {name} must be a torch.Tensor, got {type(t)}')
        if t.layout != torch.strided:
            raise TypeError(f'ms_deform_attn: {name} must be a dense (strided) tensor, got '
                            f'layout {t.layout}')
    for name in ('value', 'sampling_locations', 'attention_weights'):
        if args[name].dtype not in _FLOAT_DTYPES:
            raise TypeError(f'ms_deform_attn: {name} must be a floating-point tensor (float64, '
                            f'float32, float16 or bfloat16), got {args[name].dtype}')
    for name in ('spatial_shapes', 'level_start_index'):
        if name in args:
            _check_int_tensor(name, args[name])
    devices = {name: t.device for name, t in args.items()}
    if len(set(devices.values())) > 1:
        raise ValueError('ms_deform_attn: all arguments must be on the same device, got ' +
                         ', '.join(f'{n} on {d}' for n, d in devices.items()))

    if value.dim() != 4:
        raise ValueError('ms_deform_attn: value must have shape (bs, num_keys, num_heads, '
                         f'head_dims), got {_shape_str(value.shape)}')
    bs, num_keys, num_heads, _ = value.shape
    if static:
        try:
            shapes = [(h, w) for h, w in spatial_shapes]
        except (TypeError, ValueError):
            raise TypeError('ms_deform_attn: spatial_shapes must be a (num_levels, 2) integer '
                            'tensor or a sequence of (H, W) int pairs, got '
                            f'{spatial_shapes!r}') from None
        if not all(isinstance(s, (int, torch.SymInt)) for hw in shapes for s in hw):
            raise TypeError('ms_deform_attn: spatial_shapes must hold (H, W) int pairs, got '
                            f'{shapes}')
        num_levels = len(shapes)
    else:
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError('ms_deform_attn: spatial_shapes must have shape (num_levels, 2), '
                             f'got {_shape_str(spatial_shapes.shape)}')
        num_levels = spatial_shapes.shape[0]
    if num_levels == 0:
        raise ValueError('ms_deform_attn: spatial_shapes must hold at least one level')
    if level_start_index is not None and level_start_index.shape != (num_levels, ):
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
    if value.device.type == 'cuda':
        _check_gpu_index_range(bs, num_keys, num_heads, num_queries)
    if not static:
        if not check_values:
            return None
        shapes = _static_shapes(spatial_shapes)
    starts = None
    if level_start_index is not None and check_values:
        starts = [int(s) for s in level_start_index.tolist()]
    _check_level_layout(shapes, starts, num_keys)
    return shapes


# --------------------------------------------------------------------------------------------
# Pure-PyTorch formulations
# --------------------------------------------------------------------------------------------


def ms_deform_attn_pytorch(value: Tensor, spatial_shapes: SpatialShapes,
                           level_start_index: Optional[Tensor], sampling_locations: Tensor,
                           attention_weights: Tensor) -> Tensor:
    """Pure-PyTorch reference of :func:`ms_deform_attn`: explicit bilinear gathers.

    For each level and corner it gathers the value rows of the four neighbours of every sampling
    point (pixel = loc * size - 0.5), zeroes corners outside the map, and sums with the bilinear
    and attention weights. Differentiable by autograd; memory grows with bs*nq*heads*P*head_dims.
    ``level_start_index`` is not read (the levels are laid out by ``spatial_shapes``).
    """
    bs, _, num_heads, head_dims = value.shape
    num_queries, num_points = sampling_locations.shape[1], sampling_locations.shape[4]
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    v = value.to(dtype).permute(0, 2, 1, 3)  # (bs, heads, keys, head_dims)
    loc = sampling_locations.to(dtype)
    attn = attention_weights.to(dtype)
    out = v.new_zeros(bs, num_queries, num_heads, head_dims)
    start = 0
    for level, (h, w) in enumerate(_static_shapes(spatial_shapes)):
        v_l = v[:, :, start:start + h * w]
        start += h * w
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


def ms_deform_attn_grid_sample(value: Tensor, spatial_shapes: SpatialShapes,
                               level_start_index: Optional[Tensor], sampling_locations: Tensor,
                               attention_weights: Tensor) -> Tensor:
    """:func:`ms_deform_attn` as one ``F.grid_sample`` per level (bilinear, zero padding,
    ``align_corners=False``) and a weighted sum: standard ops only, which is what ONNX export
    records (``GridSample``, opset 16+).

    It materialises the ``(bs·heads, head_dims, num_queries, L·P)`` samples before weighting
    them, ``L·P`` times the output's size.
    """
    bs, _, num_heads, head_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    shapes = _static_shapes(spatial_shapes)
    grids = 2 * sampling_locations.to(dtype) - 1
    samples = []
    start = 0
    for level, (h, w) in enumerate(shapes):
        # (bs, h*w, heads, d) -> (bs*heads, d, h, w)
        v_l = value[:, start:start + h * w].to(dtype).permute(0, 2, 3, 1).reshape(
            bs * num_heads, head_dims, h, w)
        start += h * w
        # (bs, nq, heads, P, 2) -> (bs*heads, nq, P, 2)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v_l, grid, mode='bilinear', padding_mode='zeros',
                                     align_corners=False))  # (bs*heads, d, nq, P)
    weights = attention_weights.to(dtype).transpose(1, 2).reshape(
        bs * num_heads, 1, num_queries, num_levels * num_points)
    out = (torch.stack(samples, -2).flatten(-2) * weights).sum(-1)
    return out.view(bs, num_heads * head_dims, num_queries).transpose(1, 2).to(value.dtype)
