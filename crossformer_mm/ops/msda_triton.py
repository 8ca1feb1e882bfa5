"""Triton kernels of multi-scale deformable attention (see :mod:`.msda` for the semantics).

Forward: one program per (block of queries, batch*head, block of channels) accumulates the
``num_levels * num_points`` bilinear samples of a ``(BLOCK_Q, BLOCK_D)`` output tile in float32
(float64 for float64 values). Backward: one program per (block of queries, batch*head) walks the
channels in ``BLOCK_D`` chunks and reduces the corner dot products for the gradients of the sampling
locations and attention weights. ``grad_value`` is a scatter (many sampling points read the same
value row), done one of two ways:

* default: ``tl.atomic_add`` into a float32 buffer -- fastest, but the order of the additions, and
  so the rounding, changes from run to run;
* deterministic (``deterministic=True``): the backward kernel writes, per sampling-point corner, the
  destination value row and its coefficient; a stable sort groups the corners by row (ties keep the
  query order), and a second kernel gives each ``(row, channel block)`` to one program that sums
  its corners in that fixed order. No atomics: the gradients are bit-identical run after run, at
  the price of the sort and ``4·B·Q·heads·L·P`` (row, coefficient) pairs of scratch memory.

Every launch runs under ``torch.cuda.device(<the tensors' device>)``: a Triton launch, like a
CUDA kernel, otherwise goes to the current device, and tensors on ``cuda:1`` would be read from
``cuda:0``'s context (the "illegal memory access" reported against the original MSDA kernel).

The kernels run on CUDA tensors, and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported), which is how they are tested without a GPU.
:func:`compile_ahead` lowers them to cubin for a given GPU architecture without a GPU.
"""
import contextlib
import inspect
from typing import Callable, Dict, List, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: without it CUDA runs mmcv's kernel or the PyTorch formulation
    triton = None
    tl = None

__all__ = [
    'KERNELS', 'compile_ahead', 'ms_deform_attn_backward_triton', 'ms_deform_attn_forward_triton'
]

#: The Triton kernels, by the names :func:`compile_ahead` returns.
KERNELS = ('forward', 'backward_atomic', 'backward_deterministic', 'backward_value')


if triton is not None:

    @triton.jit
    def _level(shapes_ptr, starts_ptr, l, b, S):
        """Height, width and first key row (of batch element ``b``) of level ``l``."""
        H = tl.load(shapes_ptr + 2 * l).to(tl.int32)
        W = tl.load(shapes_ptr + 2 * l + 1).to(tl.int32)
        return H, W, (b * S + tl.load(starts_ptr + l)).to(tl.int64)

    @triton.jit
    def _bilinear_setup(loc_ptr, attn_ptr, idx, q_mask, H, W, level_base):
        """One sampling point per query: the fractional position ``(fx, fy)`` inside its pixel
        cell, the attention weight ``w``, whether the point reads anything, the key row of the
        cell's top-left corner and which of the four corners lie in the level."""
        lx = tl.load(loc_ptr + 2 * idx, mask=q_mask, other=-10.0)
        ly = tl.load(loc_ptr + 2 * idx + 1, mask=q_mask, other=-10.0)
        w = tl.load(attn_ptr + idx, mask=q_mask, other=0.0)
        Wf = W.to(lx.dtype)
        Hf = H.to(lx.dtype)
        x = lx * Wf - 0.5
        y = ly * Hf - 0.5
        # NaN fails the comparisons: such points, like those far outside, read nothing.
        inside = (x > -1.0) & (x < Wf) & (y > -1.0) & (y < Hf) & q_mask
        x = tl.where(inside, x, -2.0)
        y = tl.where(inside, y, -2.0)
        x0f = tl.floor(x)
        y0f = tl.floor(y)
        x0 = x0f.to(tl.int32)
        y0 = y0f.to(tl.int32)
        k00 = level_base + (y0 * W + x0).to(tl.int64)
        ok00 = inside & (x0 >= 0) & (y0 >= 0)
        ok01 = inside & (x0 + 1 < W) & (y0 >= 0)
        ok10 = inside & (x0 >= 0) & (y0 + 1 < H)
        ok11 = inside & (x0 + 1 < W) & (y0 + 1 < H)
        return x - x0f, y - y0f, w, inside, k00, ok00, ok01, ok10, ok11

    @triton.jit
    def _msda_fwd_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr, S, Q,
                         NH, D, L: tl.constexpr, P: tl.constexpr, BLOCK_Q: tl.constexpr,
                         BLOCK_D: tl.constexpr, ACC_FP64: tl.constexpr):
        pid_q = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_d = tl.program_id(2)
        b = pid_bh // NH
        h = pid_bh % NH
        acc_t = tl.float64 if ACC_FP64 else tl.float32
        qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_mask = qs < Q
        ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        d_mask = ds < D
        row = NH * D
        bqh = ((b * Q + qs) * NH + h).to(tl.int64)
        acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=acc_t)
        for l in range(L):
            H, W, level_base = _level(shapes_ptr, starts_ptr, l, b, S)
            for p in range(P):
                idx = bqh * (L * P) + l * P + p
                fx, fy, w, inside, k00, ok00, ok01, ok10, ok11 = _bilinear_setup(
                    loc_ptr, attn_ptr, idx, q_mask, H, W, level_base)
                dm = d_mask[None, :]
                base = value_ptr + h * D + ds[None, :]
                v00 = tl.load(base + k00[:, None] * row, mask=ok00[:, None] & dm, other=0.0)
                v01 = tl.load(base + (k00 + 1)[:, None] * row, mask=ok01[:, None] & dm,
                              other=0.0)
                v10 = tl.load(base + (k00 + W)[:, None] * row, mask=ok10[:, None] & dm,
                              other=0.0)
                v11 = tl.load(base + (k00 + W + 1)[:, None] * row, mask=ok11[:, None] & dm,
                              other=0.0)
                c00 = tl.where(ok00, w * (1.0 - fy) * (1.0 - fx), 0.0)
                c01 = tl.where(ok01, w * (1.0 - fy) * fx, 0.0)
                c10 = tl.where(ok10, w * fy * (1.0 - fx), 0.0)
                c11 = tl.where(ok11, w * fy * fx, 0.0)
                acc += (c00[:, None] * v00.to(acc_t) + c01[:, None] * v01.to(acc_t) +
                        c10[:, None] * v10.to(acc_t) + c11[:, None] * v11.to(acc_t))
        out_ptrs = out_ptr + bqh[:, None] * D + ds[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty),
                 mask=q_mask[:, None] & d_mask[None, :])

    @triton.jit
    def _msda_bwd_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr,
                         grad_value_ptr, grad_loc_ptr, grad_attn_ptr, rows_ptr, coef_ptr, S, Q,
                         NH, D, L: tl.constexpr, P: tl.constexpr, BLOCK_Q: tl.constexpr,
                         BLOCK_D: tl.constexpr, ACC_FP64: tl.constexpr,
                         DETERMINISTIC: tl.constexpr):
        pid_q = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // NH
        h = pid_bh % NH
        acc_t = tl.float64 if ACC_FP64 else tl.float32
        qs = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_mask = qs < Q
        row = NH * D
        bqh = ((b * Q + qs) * NH + h).to(tl.int64)
        for l in range(L):
            H, W, level_base = _level(shapes_ptr, starts_ptr, l, b, S)
            for p in range(P):
                idx = bqh * (L * P) + l * P + p
                fx, fy, w, inside, k00, ok00, ok01, ok10, ok11 = _bilinear_setup(
                    loc_ptr, attn_ptr, idx, q_mask, H, W, level_base)
                k01 = k00 + 1
                k10 = k00 + W
                k11 = k10 + 1
                w00 = (1.0 - fy) * (1.0 - fx)
                w01 = (1.0 - fy) * fx
                w10 = fy * (1.0 - fx)
                w11 = fy * fx
                d00 = tl.zeros((BLOCK_Q, ), dtype=acc_t)
                d01 = tl.zeros((BLOCK_Q, ), dtype=acc_t)
                d10 = tl.zeros((BLOCK_Q, ), dtype=acc_t)
                d11 = tl.zeros((BLOCK_Q, ), dtype=acc_t)
                for d0 in range(0, D, BLOCK_D):
                    ds = d0 + tl.arange(0, BLOCK_D)
                    dm = ds < D
                    g = tl.load(grad_out_ptr + bqh[:, None] * D + ds[None, :],
                                mask=q_mask[:, None] & dm[None, :], other=0.0).to(acc_t)
                    off = h * D + ds[None, :]
                    m00 = ok00[:, None] & dm[None, :]
                    m01 = ok01[:, None] & dm[None, :]
                    m10 = ok10[:, None] & dm[None, :]
                    m11 = ok11[:, None] & dm[None, :]
                    v00 = tl.load(value_ptr + k00[:, None] * row + off, mask=m00, other=0.0)
                    v01 = tl.load(value_ptr + k01[:, None] * row + off, mask=m01, other=0.0)
                    v10 = tl.load(value_ptr + k10[:, None] * row + off, mask=m10, other=0.0)
                    v11 = tl.load(value_ptr + k11[:, None] * row + off, mask=m11, other=0.0)
                    d00 += tl.sum(g * v00.to(acc_t), axis=1)
                    d01 += tl.sum(g * v01.to(acc_t), axis=1)
                    d10 += tl.sum(g * v10.to(acc_t), axis=1)
                    d11 += tl.sum(g * v11.to(acc_t), axis=1)
                    if not DETERMINISTIC:
                        tl.atomic_add(grad_value_ptr + k00[:, None] * row + off,
                                      (w * w00)[:, None] * g, mask=m00)
                        tl.atomic_add(grad_value_ptr + k01[:, None] * row + off,
                                      (w * w01)[:, None] * g, mask=m01)
                        tl.atomic_add(grad_value_ptr + k10[:, None] * row + off,
                                      (w * w10)[:, None] * g, mask=m10)
                        tl.atomic_add(grad_value_ptr + k11[:, None] * row + off,
                                      (w * w11)[:, None] * g, mask=m11)
                if DETERMINISTIC:
                    # Destination row (key * NH + head) and coefficient of each corner; corners
                    # that read nothing go to the sentinel row B * S * NH, sorted last.
                    sentinel = (tl.num_programs(1) // NH).to(tl.int64) * S * NH
                    e = idx * 4
                    tl.store(rows_ptr + e, tl.where(ok00, k00 * NH + h, sentinel), mask=q_mask)
                    tl.store(rows_ptr + e + 1, tl.where(ok01, k01 * NH + h, sentinel),
                             mask=q_mask)
                    tl.store(rows_ptr + e + 2, tl.where(ok10, k10 * NH + h, sentinel),
                             mask=q_mask)
                    tl.store(rows_ptr + e + 3, tl.where(ok11, k11 * NH + h, sentinel),
                             mask=q_mask)
                    tl.store(coef_ptr + e, w * w00, mask=q_mask)
                    tl.store(coef_ptr + e + 1, w * w01, mask=q_mask)
                    tl.store(coef_ptr + e + 2, w * w10, mask=q_mask)
                    tl.store(coef_ptr + e + 3, w * w11, mask=q_mask)
                g_attn = w00 * d00 + w01 * d01 + w10 * d10 + w11 * d11
                gx = (1.0 - fy) * (d01 - d00) + fy * (d11 - d10)
                gy = (1.0 - fx) * (d10 - d00) + fx * (d11 - d01)
                g_attn = tl.where(inside, g_attn, 0.0)
                gx = tl.where(inside, w * gx * W, 0.0)
                gy = tl.where(inside, w * gy * H, 0.0)
                tl.store(grad_attn_ptr + idx, g_attn, mask=q_mask)
                tl.store(grad_loc_ptr + 2 * idx, gx, mask=q_mask)
                tl.store(grad_loc_ptr + 2 * idx + 1, gy, mask=q_mask)

    @triton.jit
    def _msda_bwd_value_kernel(grad_out_ptr, order_ptr, coef_ptr, offsets_ptr, grad_value_ptr,
                               D, LP: tl.constexpr, BLOCK_D: tl.constexpr,
                               ACC_FP64: tl.constexpr):
        """``grad_value`` row ``r`` (= key * NH + head), channel block ``pid(1)``: the sum, in the
        sorted order, of coefficient * grad_output over the corners that read the row."""
        r = tl.program_id(0).to(tl.int64)
        acc_t = tl.float64 if ACC_FP64 else tl.float32
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        dm = ds < D
        begin = tl.load(offsets_ptr + r)
        end = tl.load(offsets_ptr + r + 1)
        acc = tl.zeros((BLOCK_D, ), dtype=acc_t)
        for j in range(begin, end):
            e = tl.load(order_ptr + j)
            c = tl.load(coef_ptr + e).to(acc_t)
            bqh = e // (4 * LP)  # corners are laid out (b, q, head, level, point, corner)
            g = tl.load(grad_out_ptr + bqh * D + ds, mask=dm, other=0.0).to(acc_t)
            acc += c * g
        tl.store(grad_value_ptr + r * D + ds, acc.to(grad_value_ptr.dtype.element_ty), mask=dm)


def _check_triton() -> None:
    if triton is None:
        raise RuntimeError('ms_deform_attn: the Triton kernel needs the `triton` package')


def _on_device(t: torch.Tensor):
    """The launch guard: the tensors' own CUDA device (nothing for CPU tensors, which only the
    interpreter runs)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _blocks(num_queries: int, head_dims: int, backward: bool) -> Tuple[int, int]:
    block_d = min(triton.next_power_of_2(max(head_dims, 1)), 32 if backward else 64)
    block_q = 32 if backward else 64
    block_q = max(16, min(block_q, triton.next_power_of_2(max(num_queries, 1))))
    return block_q, max(block_d, 16)


def ms_deform_attn_forward_triton(value: torch.Tensor, spatial_shapes: torch.Tensor,
                                  level_start_index: torch.Tensor,
                                  sampling_locations: torch.Tensor,
                                  attention_weights: torch.Tensor) -> torch.Tensor:
    """Forward on contiguous, validated inputs (see ``torch.ops.crossformer_mm.ms_deform_attn``)."""
    _check_triton()
    bs, num_keys, num_heads, head_dims = value.shape
    num_queries, num_levels, num_points = sampling_locations.shape[1], \
        sampling_locations.shape[3], sampling_locations.shape[4]
    out = value.new_empty(bs, num_queries, num_heads * head_dims)
    if out.numel() == 0:
        return out
    block_q, block_d = _blocks(num_queries, head_dims, backward=False)
    grid = (triton.cdiv(num_queries, block_q), bs * num_heads, triton.cdiv(head_dims, block_d))
    with _on_device(value):
        _msda_fwd_kernel[grid](value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, out, num_keys, num_queries, num_heads,
                               head_dims, L=num_levels, P=num_points, BLOCK_Q=block_q,
                               BLOCK_D=block_d, ACC_FP64=value.dtype == torch.float64)
    return out


def ms_deform_attn_backward_triton(
        value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
        grad_output: torch.Tensor,
        deterministic: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: ``(grad_value, grad_sampling_locations, grad_attention_weights)``.

    ``deterministic`` selects the order-fixed ``grad_value`` reduction (no atomics; see the
    module docstring) instead of the atomic one.
    """
    _check_triton()
    bs, num_keys, num_heads, head_dims = value.shape
    num_queries, num_levels, num_points = sampling_locations.shape[1], \
        sampling_locations.shape[3], sampling_locations.shape[4]
    grad_loc = torch.zeros_like(sampling_locations)
    grad_attn = torch.zeros_like(attention_weights)
    if deterministic:
        grad_value = torch.zeros_like(value)
        corners = sampling_locations.numel() * 2  # 4 corners per (x, y) pair
        rows = value.new_empty(corners, dtype=torch.int64)
        coef = value.new_empty(corners, dtype=sampling_locations.dtype)
    else:
        grad_value = value.new_zeros(value.shape, dtype=sampling_locations.dtype)
        rows = coef = grad_value  # unused by the atomic variant
    if grad_output.numel() == 0:
        return grad_value.to(value.dtype), grad_loc, grad_attn
    acc_fp64 = value.dtype == torch.float64
    block_q, block_d = _blocks(num_queries, head_dims, backward=True)
    grid = (triton.cdiv(num_queries, block_q), bs * num_heads)
    with _on_device(value):
        _msda_bwd_kernel[grid](value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, grad_output, grad_value, grad_loc, grad_attn,
                               rows, coef, num_keys, num_queries, num_heads, head_dims,
                               L=num_levels, P=num_points, BLOCK_Q=block_q, BLOCK_D=block_d,
                               ACC_FP64=acc_fp64, DETERMINISTIC=deterministic)
        if not deterministic:
            return grad_value.to(value.dtype), grad_loc, grad_attn
        # Group the corners by destination row; the stable sort keeps the (query, level, point,
        # corner) order inside a row, so the summation order does not depend on the run.
        num_rows = bs * num_keys * num_heads
        sorted_rows, order = torch.sort(rows, stable=True)
        offsets = torch.searchsorted(sorted_rows, torch.arange(num_rows + 1, dtype=torch.int64,
                                                               device=sorted_rows.device))
        block = min(max(triton.next_power_of_2(max(head_dims, 1)), 16), 128)
        _msda_bwd_value_kernel[(num_rows, triton.cdiv(head_dims, block))](
            grad_output, order, coef, offsets, grad_value, head_dims, LP=num_levels * num_points,
            BLOCK_D=block, ACC_FP64=acc_fp64)
    return grad_value, grad_loc, grad_attn


# --------------------------------------------------------------------------------------------
# Ahead-of-time compilation (no GPU needed)
# --------------------------------------------------------------------------------------------

#: The shape the kernels are compiled for ahead of time: Deformable DETR's 4 levels x 4 points,
#: 32-channel heads, many queries (the block sizes the launches pick for it).
_AOT_LEVELS, _AOT_POINTS, _AOT_HEAD_DIMS, _AOT_QUERIES = 4, 4, 32, 1024
_PTR_TYPES = {torch.float32: '*fp32', torch.float16: '*fp16', torch.bfloat16: '*bf16',
              torch.float64: '*fp64'}


def _aot_kernels(dtype: torch.dtype) -> List[Tuple[str, Callable, dict, dict]]:
    """``(name, kernel, signature, constexprs)`` of every kernel for ``dtype`` values, with the
    argument types the launches above pass (locations, weights and the atomic buffer in the
    opmath dtype)."""
    if dtype not in _PTR_TYPES:
        raise ValueError(f'compile_ahead: dtype must be one of {list(_PTR_TYPES)}, got {dtype!r}')
    val = _PTR_TYPES[dtype]
    acc = '*fp64' if dtype == torch.float64 else '*fp32'
    acc_fp64 = dtype == torch.float64
    sizes = {'S': 'i32', 'Q': 'i32', 'NH': 'i32', 'D': 'i32'}
    levels = {'shapes_ptr': '*i64', 'starts_ptr': '*i64', 'loc_ptr': acc, 'attn_ptr': acc}
    fwd_q, fwd_d = _blocks(_AOT_QUERIES, _AOT_HEAD_DIMS, backward=False)
    bwd_q, bwd_d = _blocks(_AOT_QUERIES, _AOT_HEAD_DIMS, backward=True)
    value_d = min(max(triton.next_power_of_2(_AOT_HEAD_DIMS), 16), 128)
    fwd_c = dict(L=_AOT_LEVELS, P=_AOT_POINTS, BLOCK_Q=fwd_q, BLOCK_D=fwd_d, ACC_FP64=acc_fp64)
    bwd_c = dict(L=_AOT_LEVELS, P=_AOT_POINTS, BLOCK_Q=bwd_q, BLOCK_D=bwd_d, ACC_FP64=acc_fp64)
    value_c = dict(LP=_AOT_LEVELS * _AOT_POINTS, BLOCK_D=value_d, ACC_FP64=acc_fp64)

    def signature(args: dict, constexprs: dict) -> dict:
        return {**args, **{k: 'constexpr' for k in constexprs}}

    fwd = {'value_ptr': val, **levels, 'out_ptr': val, **sizes}
    bwd = {'value_ptr': val, **levels, 'grad_out_ptr': val}
    atomic = dict(bwd, grad_value_ptr=acc, grad_loc_ptr=acc, grad_attn_ptr=acc, rows_ptr=acc,
                  coef_ptr=acc, **sizes)
    det = dict(bwd, grad_value_ptr=val, grad_loc_ptr=acc, grad_attn_ptr=acc, rows_ptr='*i64',
               coef_ptr=acc, **sizes)
    value = {'grad_out_ptr': val, 'order_ptr': '*i64', 'coef_ptr': acc, 'offsets_ptr': '*i64',
             'grad_value_ptr': val, 'D': 'i32'}
    atomic_c, det_c = dict(bwd_c, DETERMINISTIC=False), dict(bwd_c, DETERMINISTIC=True)
    return [('forward', _msda_fwd_kernel, signature(fwd, fwd_c), fwd_c),
            ('backward_atomic', _msda_bwd_kernel, signature(atomic, atomic_c), atomic_c),
            ('backward_deterministic', _msda_bwd_kernel, signature(det, det_c), det_c),
            ('backward_value', _msda_bwd_value_kernel, signature(value, value_c), value_c)]


def _compile_kernels(cc: int, dtype: torch.dtype) -> Dict[str, object]:
    """Every kernel compiled for ``sm_<cc>``: name -> Triton's compiled kernel (``.asm`` holds
    the PTX and the cubin)."""
    _check_triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if 'constexprs' not in inspect.signature(ASTSource).parameters:
        raise RuntimeError(f'compile_ahead needs triton >= 3.2 (ASTSource with constexprs); '
                           f'this is triton {triton.__version__}')
    if not isinstance(cc, int) or cc < 50:
        raise ValueError(f'compile_ahead: cc must be a compute capability as an int such as 80 '
                         f'(sm_80), got {cc!r}')
    target = GPUTarget('cuda', cc, 32)
    return {
        name: triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                             target=target)
        for name, kernel, sig, consts in _aot_kernels(dtype)
    }


def compile_ahead(cc: int, dtype: torch.dtype) -> Dict[str, bytes]:
    """Compiles every Triton kernel of the op for compute capability ``cc`` (e.g. 80 for sm_80)
    and ``dtype`` values, ahead of time and without a GPU, with Triton's bundled ``ptxas``.

    Returns:
        Kernel name (:data:`KERNELS`) -> cubin. A kernel that cannot be compiled for that target
        raises Triton's compilation error.

    Raises:
        RuntimeError: triton is not installed, or too old for ahead-of-time compilation.
        ValueError: ``cc`` or ``dtype`` is not one the kernels serve.
    """
    return {name: compiled.asm['cubin'] for name, compiled in _compile_kernels(cc, dtype).items()}
