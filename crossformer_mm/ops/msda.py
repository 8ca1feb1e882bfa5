"""Multi-scale deformable attention (MSDA), the core op of Deformable DETR.

`Deformable DETR: Deformable Transformers for End-to-End Object Detection
<https://arxiv.org/abs/2010.04159>`_ (Zhu et al., ICLR 2021). Semantics and the module's interface
follow mmcv 2.1.0's ``mmcv/ops/multi_scale_deform_attn.py`` so that state dicts and configs move
between the two; the kernels are this package's own. Only torch is needed (triton for the GPU
kernel); nothing here imports the OpenMMLab packages.

The op is a triple:

* :func:`ms_deform_attn_pytorch` (explicit bilinear gathers) and
  :func:`ms_deform_attn_grid_sample` (one ``F.grid_sample`` per level) -- pure-PyTorch
  formulations, differentiable by autograd; the second is what ONNX export records;
* ``torch.ops.crossformer_mm.ms_deform_attn`` -- a registered torch op (``torch.library``) with a
  CPU kernel (C++, ``crossformer_mm._ext``), a CUDA kernel (Triton, :mod:`.msda_triton`), a fake
  implementation for ``torch.compile`` / ``torch.export`` and a registered backward
  (``torch.ops.crossformer_mm.ms_deform_attn_backward``);
* :class:`MSDeformAttn` -- a drop-in for ``mmcv.ops.MultiScaleDeformableAttention``.

:func:`ms_deform_attn` is the entry point: it validates its arguments (shapes, dtypes, devices,
level layout) and picks the formulation.
"""
import math
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'MSDA_OP', 'MSDeformAttn', 'SpatialShapes', 'check_ms_deform_attn_inputs', 'ms_deform_attn',
    'ms_deform_attn_flops', 'ms_deform_attn_grid_sample', 'ms_deform_attn_pytorch',
    'native_kernel_available', 'replace_mmcv_msda'
]

try:
    from .. import _ext as _EXT
except ImportError:  # built without the native ops (pure-Python install)
    _EXT = None

#: Qualified name of the registered forward op (as it appears in traced graphs).
MSDA_OP = 'crossformer_mm::ms_deform_attn'

#: Level sizes: an integer ``(num_levels, 2)`` tensor, or a sequence of ``(H, W)`` ints. The
#: second form is static: ``torch.compile`` and ``torch.export`` never have to read a tensor.
SpatialShapes = Union[Tensor, Sequence[Tuple[int, int]]]

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


# --------------------------------------------------------------------------------------------
# Registered ops over the native kernels
# --------------------------------------------------------------------------------------------


def _check_kernel_levels(value: Tensor, spatial_shapes: Tensor,
                         level_start_index: Tensor) -> None:
    """The kernels index ``value`` with the level layout: check it where the values are read
    (inside the op, so also in compiled and exported graphs)."""
    starts = [int(s) for s in level_start_index.tolist()]
    _check_level_layout(_static_shapes(spatial_shapes), starts, value.shape[1])


@torch.library.custom_op(MSDA_OP, mutates_args=(), device_types='cpu')
def _msda_forward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor,
                  deterministic: bool) -> Tensor:
    """Forward kernel. Inputs contiguous; levels int64; locations and weights in the value's
    opmath dtype (float32, float64 for float64 values). ``deterministic`` is for the backward."""
    if _EXT is None:
        raise RuntimeError('crossformer_mm::ms_deform_attn: crossformer_mm._ext is not built '
                           '(python setup.py build_ext --inplace)')
    _check_kernel_levels(value, spatial_shapes, level_start_index)
    return _EXT.ms_deform_attn_forward(value, spatial_shapes, level_start_index,
                                       sampling_locations, attention_weights)


@_msda_forward.register_kernel('cuda')
def _msda_forward_cuda(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor,
                       deterministic: bool) -> Tensor:
    from .msda_triton import ms_deform_attn_forward_triton
    _check_kernel_levels(value, spatial_shapes, level_start_index)
    return ms_deform_attn_forward_triton(value, spatial_shapes, level_start_index,
                                         sampling_locations, attention_weights)


@_msda_forward.register_fake
def _msda_forward_fake(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor,
                       deterministic: bool) -> Tensor:
    bs, _, num_heads, head_dims = value.shape
    return value.new_empty(bs, sampling_locations.shape[1], num_heads * head_dims)


@torch.library.custom_op('crossformer_mm::ms_deform_attn_backward', mutates_args=(),
                         device_types='cpu')
def _msda_backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor, grad_output: Tensor,
                   deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward kernel: ``(grad_value, grad_sampling_locations, grad_attention_weights)``. The
    CPU kernel is deterministic whatever ``deterministic`` says (each thread owns its rows)."""
    if _EXT is None:
        raise RuntimeError('crossformer_mm::ms_deform_attn_backward: crossformer_mm._ext is not '
                           'built (python setup.py build_ext --inplace)')
    grad_value, grad_loc, grad_attn = _EXT.ms_deform_attn_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output)
    return grad_value, grad_loc, grad_attn


@_msda_backward.register_kernel('cuda')
def _msda_backward_cuda(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                        sampling_locations: Tensor, attention_weights: Tensor,
                        grad_output: Tensor, deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
    from .msda_triton import ms_deform_attn_backward_triton
    return ms_deform_attn_backward_triton(value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights, grad_output,
                                          deterministic)


@_msda_backward.register_fake
def _msda_backward_fake(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                        sampling_locations: Tensor, attention_weights: Tensor,
                        grad_output: Tensor, deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return (torch.empty_like(value), torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights))


def _msda_setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, det = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights)
    ctx.deterministic = det


def _msda_autograd(ctx, grad_output: Tensor) -> tuple:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
        ctx.saved_tensors
    grad_value, grad_loc, grad_attn = torch.ops.crossformer_mm.ms_deform_attn_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output.to(value.dtype).contiguous(), ctx.deterministic)
    return grad_value, None, None, grad_loc, grad_attn, None


_msda_forward.register_autograd(_msda_autograd, setup_context=_msda_setup_context)


def ms_deform_attn_flops(value_shape: Sequence[int], sampling_locations_shape: Sequence[int],
                         backward: bool = False) -> int:
    """FLOPs of the op (the cost model: per query, head channel, level and point, four
    bilinear-corner multiply-adds and one attention-weight multiply-add, 2 FLOPs each):
    ``10·B·Q·C·L·P``; the backward does the same work twice (value scatter, and the corner dot
    products for the location and weight gradients): ``20·B·Q·C·L·P``."""
    b, _, heads, head_dims = value_shape
    _, q, _, levels, points, _ = sampling_locations_shape
    return (20 if backward else 10) * b * q * heads * head_dims * levels * points


def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.crossformer_mm.ms_deform_attn)
    def _forward_flops(value_shape, shapes_shape, starts_shape, loc_shape, attn_shape,
                       *args, **kwargs) -> int:
        return ms_deform_attn_flops(value_shape, loc_shape)

    @register_flop_formula(torch.ops.crossformer_mm.ms_deform_attn_backward)
    def _backward_flops(value_shape, shapes_shape, starts_shape, loc_shape, *args,
                        **kwargs) -> int:
        return ms_deform_attn_flops(value_shape, loc_shape, backward=True)


_register_flop_formulas()


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _resolve_deterministic(deterministic: Optional[bool], device: torch.device,
                           native: bool) -> bool:
    if deterministic is None:
        return torch.are_deterministic_algorithms_enabled()
    if deterministic and not native:
        raise RuntimeError(
            f'ms_deform_attn(deterministic=True): no deterministic kernel for {device.type} '
            'tensors here (deterministic kernels: the C++ one on the CPU, the Triton one on '
            'CUDA, which needs the `triton` package); pass deterministic=None to leave '
            'determinism to torch.use_deterministic_algorithms and the PyTorch fallback')
    return bool(deterministic)


def ms_deform_attn(value: Tensor, spatial_shapes: SpatialShapes,
                   level_start_index: Optional[Tensor], sampling_locations: Tensor,
                   attention_weights: Tensor, deterministic: Optional[bool] = None) -> Tensor:
    """Multi-scale deformable attention with mmcv's semantics.

    Args:
        value: ``(bs, num_keys, num_heads, head_dims)``, the levels flattened row-major and
            concatenated along ``num_keys``.
        spatial_shapes: ``(H, W)`` per level: a ``(num_levels, 2)`` integer tensor, or a
            sequence of int pairs (static: ``torch.compile`` / ``torch.export`` need no tensor
            read to serve the op's fallback or the ONNX formulation).
        level_start_index: ``(num_levels,)`` integer, the running sum of ``H*W``; may be None
            with static ``spatial_shapes``.
        sampling_locations: ``(bs, num_queries, num_heads, num_levels, num_points, 2)``
            normalised ``(x, y)``; ``(0, 0)`` is the top-left corner of the map and ``(1, 1)`` the
            bottom-right one. Points outside ``[0, 1]`` read zeros (bilinear, zero padding,
            ``align_corners=False``).
        attention_weights: ``(bs, num_queries, num_heads, num_levels, num_points)``.
        deterministic: Backward with bit-identical gradients run after run. None (default)
            follows ``torch.use_deterministic_algorithms``. The CPU kernel is always
            deterministic; the Triton kernel then sums ``grad_value`` in a fixed order instead of
            with atomics. True on a device without a native kernel raises.

    Returns:
        ``(bs, num_queries, num_heads * head_dims)`` in the dtype of ``value``; differentiable in
        ``value``, ``sampling_locations`` and ``attention_weights``.

    Both kernels handle float64/float32/bfloat16/float16 values; sampling locations and weights
    are computed in float32 (float64 for float64 values). Without a native kernel for the device
    it runs :func:`ms_deform_attn_pytorch`; during ONNX export it records
    :func:`ms_deform_attn_grid_sample`.

    Raises:
        RuntimeError: ``deterministic=True`` without a native kernel, or tensor
            ``spatial_shapes`` under ``torch.compile`` without a native kernel (the fallback
            needs the level sizes as ints: pass them as a tuple).
    """
    if torch.onnx.is_in_onnx_export():
        check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights, check_values=False)
        return ms_deform_attn_grid_sample(value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights)
    compiling = torch.compiler.is_compiling()
    static = not isinstance(spatial_shapes, Tensor)
    device = value.device if isinstance(value, Tensor) else None
    native = device is not None and native_kernel_available(device)
    if deterministic and device is not None:
        _resolve_deterministic(deterministic, device, native)  # no kernel: fail before anything
    # Level layouts in tensors are checked inside the op when a kernel runs (no sync here, and
    # in compiled graphs too); the fallback reads them here.
    check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, check_values=not native and not compiling)
    det = _resolve_deterministic(deterministic, device, native)
    if not native:
        if device.type == 'cpu':
            _warn_once('cpu', 'crossformer_mm._ext is not built: ms_deform_attn runs the slow '
                       'PyTorch reference on the CPU (build with `python setup.py build_ext '
                       '--inplace`)')
        elif device.type == 'cuda':
            _warn_once('cuda', 'ms_deform_attn: triton is not installed: running the PyTorch '
                       'reference on the GPU')
        if compiling and not static:
            raise RuntimeError(
                f'ms_deform_attn: no native kernel for {device.type} tensors, and the PyTorch '
                'fallback reads the level sizes: under torch.compile / torch.export pass '
                'spatial_shapes as a tuple of (H, W) ints')
        return ms_deform_attn_pytorch(value, spatial_shapes, level_start_index,
                                      sampling_locations, attention_weights)
    if static:
        levels = torch.tensor(spatial_shapes, dtype=torch.int64, device=device).view(-1, 2)
        if level_start_index is None:
            areas = [h * w for h, w in spatial_shapes]
            level_start_index = torch.tensor([sum(areas[:i]) for i in range(len(areas))],
                                             dtype=torch.int64, device=device)
        spatial_shapes = levels
    opmath = _opmath(value.dtype)
    return torch.ops.crossformer_mm.ms_deform_attn(
        value.contiguous(), spatial_shapes.to(torch.int64).contiguous(),
        level_start_index.to(torch.int64).contiguous(),
        sampling_locations.to(opmath).contiguous(), attention_weights.to(opmath).contiguous(),
        det)


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


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


def replace_mmcv_msda(model: nn.Module, deterministic: Optional[bool] = None) -> int:
    """Puts every mmcv ``MultiScaleDeformableAttention`` inside ``model`` on this package's
    kernels, in place (needs mmcv; see :func:`crossformer_mm.models.msda.replace_mmcv_msda`,
    which this forwards to). Returns the number of modules switched."""
    from crossformer_mm.models.msda import replace_mmcv_msda as replace
    return replace(model, deterministic)
