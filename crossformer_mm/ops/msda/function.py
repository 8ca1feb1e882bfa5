"""The registered torch op of multi-scale deformable attention and its dispatch.

``torch.ops.crossformer_mm.ms_deform_attn`` (``torch.library``) has a CPU kernel (C++,
``crossformer_mm._ext``), a CUDA kernel (Triton, :mod:`crossformer_mm.ops.msda_triton`), a fake
implementation for ``torch.compile`` / ``torch.export``, a registered backward
(``torch.ops.crossformer_mm.ms_deform_attn_backward``) and FLOP formulas. :func:`ms_deform_attn`
is the entry point: it validates its arguments and picks the op or a PyTorch formulation.
"""
import warnings
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .reference import (SpatialShapes, _check_level_layout, _static_shapes,
                        check_ms_deform_attn_inputs, ms_deform_attn_grid_sample,
                        ms_deform_attn_pytorch)

__all__ = ['MSDA_OP', 'ms_deform_attn', 'ms_deform_attn_flops', 'native_kernel_available']

try:
    from ... import _ext as _EXT
except ImportError:  # built without the native ops (pure-Python install)
    _EXT = None

#: Qualified name of the registered forward op (as it appears in traced graphs).
MSDA_OP = 'crossformer_mm::ms_deform_attn'

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
        from ..msda_triton import triton_available
        return triton_available()
    return False


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
    from ..msda_triton import ms_deform_attn_forward_triton
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
    from ..msda_triton import ms_deform_attn_backward_triton
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
