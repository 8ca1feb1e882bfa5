"""The registered torch op of multi-scale deformable attention and its entry point.

``torch.ops.crossformer_mm.ms_deform_attn`` (``torch.library.custom_op``, torch >= 2.4) runs the
forward of the path :mod:`.backends` picks for the device (C++ kernel, Triton, mmcv's CUDA kernel
or the PyTorch formulation), with a fake implementation for ``torch.compile`` /
``torch.export``, a registered backward (``torch.ops.crossformer_mm.ms_deform_attn_backward``)
and FLOP formulas. On an older torch (no ``custom_op``) the same forward and backward run through
:class:`MSDeformAttnFunction`, a ``torch.autograd.Function``: eager forward, backward and the
deterministic backward work; compiling or exporting the op needs torch >= 2.4 and says so.

:func:`ms_deform_attn` is the entry point: it validates its arguments and calls the op.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import backends
from .backends import DETERMINISTIC_BACKENDS, msda_backend
from .reference import SpatialShapes, check_ms_deform_attn_inputs, ms_deform_attn_grid_sample
from ..torch_compat import is_compiling

__all__ = ['MSDA_OP', 'MSDeformAttnFunction', 'ms_deform_attn', 'ms_deform_attn_flops']

#: Qualified name of the registered forward op (as it appears in traced graphs).
MSDA_OP = 'crossformer_mm::ms_deform_attn'

#: Whether ``ms_deform_attn`` calls the registered op (torch >= 2.4) or, when False,
#: :class:`MSDeformAttnFunction` over the same kernels.
_USE_CUSTOM_OP = hasattr(torch.library, 'custom_op')

def ms_deform_attn_flops(value_shape: Sequence[int], sampling_locations_shape: Sequence[int],
                         backward: bool = False) -> int:
    """FLOPs of the op (the cost model: per query, head channel, level and point, four
    bilinear-corner multiply-adds and one attention-weight multiply-add, 2 FLOPs each):
    ``10·B·Q·C·L·P``; the backward does the same work twice (value scatter, and the corner dot
    products for the location and weight gradients): ``20·B·Q·C·L·P``."""
    b, _, heads, head_dims = value_shape
    _, q, _, levels, points, _ = sampling_locations_shape
    return (20 if backward else 10) * b * q * heads * head_dims * levels * points


# --------------------------------------------------------------------------------------------
# The registered ops (torch >= 2.4)
# --------------------------------------------------------------------------------------------


def _register_ops() -> None:

    @torch.library.custom_op(MSDA_OP, mutates_args=())
    def _msda_forward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                      sampling_locations: Tensor, attention_weights: Tensor,
                      deterministic: bool) -> Tensor:
        """Forward. Inputs contiguous; levels int64; locations and weights in the value's
        opmath dtype (float32, float64 for float64 values). ``deterministic`` is for the
        backward (and keeps the forward off mmcv's kernel, as the backward will be)."""
        return backends.forward(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, deterministic)

    @_msda_forward.register_fake
    def _msda_forward_fake(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                           sampling_locations: Tensor, attention_weights: Tensor,
                           deterministic: bool) -> Tensor:
        bs, _, num_heads, head_dims = value.shape
        return value.new_empty(bs, sampling_locations.shape[1], num_heads * head_dims)

    @torch.library.custom_op('crossformer_mm::ms_deform_attn_backward', mutates_args=())
    def _msda_backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor, grad_output: Tensor,
                       deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """Backward: ``(grad_value, grad_sampling_locations, grad_attention_weights)``."""
        return backends.backward(value, spatial_shapes, level_start_index, sampling_locations,
                                 attention_weights, grad_output, deterministic)

    @_msda_backward.register_fake
    def _msda_backward_fake(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                            sampling_locations: Tensor, attention_weights: Tensor,
                            grad_output: Tensor,
                            deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
        return (torch.empty_like(value), torch.empty_like(sampling_locations),
                torch.empty_like(attention_weights))

    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, det = \
            inputs
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        ctx.deterministic = det

    def autograd(ctx, grad_output: Tensor) -> tuple:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
            ctx.saved_tensors
        grad_value, grad_loc, grad_attn = torch.ops.crossformer_mm.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.to(value.dtype).contiguous(), ctx.deterministic)
        return grad_value, None, None, grad_loc, grad_attn, None

    _msda_forward.register_autograd(autograd, setup_context=setup_context)

    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.crossformer_mm.ms_deform_attn)
    def _forward_flops(value_shape, shapes_shape, starts_shape, loc_shape, attn_shape,
                       *args, **kwargs) -> int:
        return ms_deform_attn_flops(value_shape, loc_shape)

    @register_flop_formula(torch.ops.crossformer_mm.ms_deform_attn_backward)
    def _backward_flops(value_shape, shapes_shape, starts_shape, loc_shape, *args,
                        **kwargs) -> int:
        return ms_deform_attn_flops(value_shape, loc_shape, backward=True)


if hasattr(torch.library, 'custom_op'):
    _register_ops()


# --------------------------------------------------------------------------------------------
# The autograd Function (torch < 2.4)
# --------------------------------------------------------------------------------------------


class MSDeformAttnFunction(torch.autograd.Function):
    """The op as a ``torch.autograd.Function`` over the same forward and backward as the
    registered op: what :func:`ms_deform_attn` calls on a torch without
    ``torch.library.custom_op`` (< 2.4). Arguments as the registered op's."""

    @staticmethod
    def forward(ctx, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor,
                deterministic: bool) -> Tensor:
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        ctx.deterministic = deterministic
        return backends.forward(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, deterministic)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple:
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
            ctx.saved_tensors
        grad_value, grad_loc, grad_attn = backends.backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.to(value.dtype).contiguous(), ctx.deterministic)
        return grad_value, None, None, grad_loc, grad_attn, None


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ms_deform_attn(value: Tensor, spatial_shapes: SpatialShapes,
                   level_start_index: Optional[Tensor], sampling_locations: Tensor,
                   attention_weights: Tensor, deterministic: Optional[bool] = None) -> Tensor:
    """Multi-scale deformable attention with mmcv's semantics.

    Args:
        value: ``(bs, num_keys, num_heads, head_dims)``, the levels flattened row-major and
            concatenated along ``num_keys``.
        spatial_shapes: ``(H, W)`` per level: a ``(num_levels, 2)`` integer tensor, or a
            sequence of int pairs (static: ``torch.compile`` / ``torch.export`` need no tensor
            read to serve the ONNX formulation).
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
            with atomics. True where neither kernel serves the device raises.

    Returns:
        ``(bs, num_queries, num_heads * head_dims)`` in the dtype of ``value``; differentiable in
        ``value``, ``sampling_locations`` and ``attention_weights``.

    The kernels handle float64/float32/bfloat16/float16 values; sampling locations and weights
    are computed in float32 (float64 for float64 values). :func:`msda_backend` says which path
    a device takes (the C++ kernel, Triton, mmcv's CUDA kernel or the PyTorch formulation);
    during ONNX export it records :func:`ms_deform_attn_grid_sample`.

    Raises:
        RuntimeError: ``deterministic=True`` where no deterministic kernel serves the device.
        AssertionError: ``torch.compile`` / ``torch.export`` on a torch older than 2.4 (raised
            while Dynamo traces the call).
    """
    if torch.onnx.is_in_onnx_export():
        check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights, check_values=False)
        return ms_deform_attn_grid_sample(value, spatial_shapes, level_start_index,
                                          sampling_locations, attention_weights)
    compiling = is_compiling()
    if compiling and not _USE_CUSTOM_OP:
        # torch._assert, not raise: Dynamo before torch 2.4 cannot trace building an exception
        # (it would report that instead of this message); it raises this one while tracing.
        torch._assert(False, 'ms_deform_attn: torch.compile and torch.export of the op need '
                      'torch >= 2.4 (torch.library.custom_op); this is torch '
                      f'{torch.__version__}')
    # The level layout held in tensors is checked inside the op, where a kernel reads it (no
    # sync here, and in compiled graphs too).
    check_ms_deform_attn_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, check_values=False)
    device = value.device
    if deterministic and not compiling:
        backend, reason = msda_backend(device, value.dtype)
        if backend not in DETERMINISTIC_BACKENDS:
            raise RuntimeError(
                f'ms_deform_attn(deterministic=True): no deterministic kernel for {device} '
                f'tensors here: {reason} Pass deterministic=None to leave determinism to '
                'torch.use_deterministic_algorithms and the PyTorch formulation')
    det = torch.are_deterministic_algorithms_enabled() if deterministic is None else bool(
        deterministic)
    if not isinstance(spatial_shapes, Tensor):
        levels = torch.tensor(spatial_shapes, dtype=torch.int64, device=device).view(-1, 2)
        if level_start_index is None:
            areas = [h * w for h, w in spatial_shapes]
            level_start_index = torch.tensor([sum(areas[:i]) for i in range(len(areas))],
                                             dtype=torch.int64, device=device)
        spatial_shapes = levels
    opmath = _opmath(value.dtype)
    args = (value.contiguous(), spatial_shapes.to(torch.int64).contiguous(),
            level_start_index.to(torch.int64).contiguous(),
            sampling_locations.to(opmath).contiguous(), attention_weights.to(opmath).contiguous(),
            det)
    if _USE_CUSTOM_OP:
        return torch.ops.crossformer_mm.ms_deform_attn(*args)
    return MSDeformAttnFunction.apply(*args)
