"""Which kernel computes multi-scale deformable attention for a device, and the forward and
backward of each.

Four paths, chosen per call by :func:`msda_backend` from the device and dtype:

* ``'cpu'`` -- the package's C++ kernel (``crossformer_mm._ext``) on CPU tensors;
* ``'triton'`` -- the package's Triton kernels (:mod:`crossformer_mm.ops.msda_triton`) on CUDA
  devices of compute capability 8.0 or newer (what Triton supports);
* ``'mmcv'`` -- where Triton cannot serve a CUDA device (not installed, compute capability below
  8.0, or its kernels failed to compile there), mmcv's CUDA kernel when mmcv is installed with
  CUDA ops (imported here, on first use, never when the package is imported); it computes in
  float32 (float64 for float64 values), since it has no bfloat16 kernel;
* ``'pytorch'`` -- :func:`~crossformer_mm.ops.ms_deform_attn_pytorch` everywhere else, its
  gradients by ``torch.func.vjp`` (the kernels run below autograd).

Any path other than the device's own kernel warns once per process, saying why. The kernels
launch under the tensors' own CUDA device.
"""
import functools
import os
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from .reference import _check_level_layout, _static_shapes, ms_deform_attn_pytorch

__all__ = ['msda_backend', 'native_kernel_available']

try:
    from ... import _ext as _EXT
except ImportError:  # built without the native ops (pure-Python install)
    _EXT = None

#: The paths with a deterministic backward: the package's own kernels.
DETERMINISTIC_BACKENDS = ('cpu', 'triton')

#: ``((major, minor), dtype)`` -> why the Triton kernels could not be compiled or loaded there.
_TRITON_FAILED: Dict[Tuple[Tuple[int, int], torch.dtype], str] = {}
_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def _triton_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why the Triton kernels cannot serve ``device`` (None when they can)."""
    from .. import msda_triton
    if msda_triton.triton is None:
        return 'triton is not installed'
    if not torch.cuda.is_available():
        return 'this torch cannot use a CUDA device'
    cc = torch.cuda.get_device_capability(device)
    if cc < (8, 0):
        return (f'{device} has compute capability {cc[0]}.{cc[1]}, below 8.0, the lowest Triton '
                'supports')
    failure = _TRITON_FAILED.get((cc, dtype))
    if failure is not None:
        return (f'the Triton kernels failed to compile for sm_{cc[0]}{cc[1]} in '
                f'{_dtype_name(dtype)} ({failure})')
    return None


@functools.lru_cache(maxsize=None)
def _mmcv_ext() -> Tuple[Optional[object], str]:
    """mmcv's compiled ops when they include the CUDA kernels, and a description (or why not)."""
    try:
        import mmcv
    except ModuleNotFoundError as err:
        if err.name == 'mmcv':
            return None, 'mmcv is not installed'
        return None, f'mmcv is not importable ({err})'
    except ImportError as err:
        return None, f'mmcv is not importable ({err})'
    try:
        from mmcv.utils import ext_loader
        ext = ext_loader.load_ext('_ext', ['ms_deform_attn_forward', 'ms_deform_attn_backward',
                                           'get_compiling_cuda_version'])
    except (ImportError, AssertionError, OSError) as err:
        version = getattr(mmcv, '__version__', '')
        return None, f'the compiled ops of mmcv {version} cannot be loaded ({err})'
    cuda = ext.get_compiling_cuda_version()
    if cuda == 'not available':
        return None, f'mmcv {mmcv.__version__} was built without CUDA ops'
    return ext, f'mmcv {mmcv.__version__} (built with CUDA {cuda})'


def msda_backend(device, dtype: torch.dtype = torch.float32) -> Tuple[str, str]:
    """Which path :func:`~crossformer_mm.ops.ms_deform_attn` takes for ``dtype`` values on
    ``device``, and why.

    Args:
        device: A ``torch.device`` or its name (``'cpu'``, ``'cuda'``, ``'cuda:1'``).
        dtype: The dtype of ``value``. Default: float32.

    Returns:
        ``(path, reason)``: path is one of ``'cpu'`` (the C++ kernel), ``'triton'``, ``'mmcv'``
        (mmcv's CUDA kernel) or ``'pytorch'`` (the PyTorch formulation); reason is one sentence.
        In deterministic mode the op takes ``'pytorch'`` where this says ``'mmcv'`` (mmcv's
        backward adds with atomics).
    """
    device = torch.device(device)
    if device.type == 'cpu':
        if _EXT is not None:
            return 'cpu', 'CPU tensors run the C++ kernel of crossformer_mm._ext.'
        return 'pytorch', ('crossformer_mm._ext is not built (python setup.py build_ext '
                           '--inplace), so CPU tensors run the slow PyTorch formulation.')
    if device.type != 'cuda':
        return 'pytorch', (f'There is no kernel for {device.type} tensors: they run the PyTorch '
                           'formulation.')
    if device.index is None and torch.cuda.is_available():
        device = torch.device('cuda', torch.cuda.current_device())
    why_not = _triton_unavailable(device, dtype)
    if why_not is None:
        cc = torch.cuda.get_device_capability(device)
        return 'triton', (f'{device} (compute capability {cc[0]}.{cc[1]}) runs the Triton '
                          'kernels.')
    why_not = why_not[0].upper() + why_not[1:]
    ext, mmcv_note = _mmcv_ext()
    if ext is not None:
        return 'mmcv', f'{why_not}, so {device} runs the CUDA kernel of {mmcv_note}.'
    return 'pytorch', f'{why_not} and {mmcv_note}, so {device} runs the PyTorch formulation.'


def native_kernel_available(device) -> bool:
    """Whether ``ms_deform_attn`` runs one of the package's own kernels (C++ or Triton) for
    float32 tensors on ``device``; :func:`msda_backend` says which path runs, and why."""
    return msda_backend(device)[0] in DETERMINISTIC_BACKENDS


def _choose(device: torch.device, dtype: torch.dtype, deterministic: bool) -> str:
    """The path of one call; warns once (per reason) when it is not the device's own kernel."""
    backend, reason = msda_backend(device, dtype)
    if backend == 'mmcv' and deterministic:
        backend = 'pytorch'
        reason = (f'{reason[:-1]}; in deterministic mode the PyTorch formulation runs instead '
                  '(mmcv\'s backward adds with atomics).')
    if backend not in DETERMINISTIC_BACKENDS:
        _warn_once(f'ms_deform_attn: {reason}')
    return backend


def _raised_by_triton(err: BaseException) -> bool:
    """Whether ``err`` was raised inside triton (compiling or loading a kernel), not by the
    tensors' own code."""
    from .. import msda_triton
    if msda_triton.triton is None:
        return False
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return False
    root = os.path.dirname(os.path.abspath(msda_triton.triton.__file__)) + os.sep
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(root)


def _triton_failed(value: Tensor, err: BaseException) -> None:
    """Records that the Triton kernels cannot serve ``value``'s device and dtype (later calls,
    and :func:`msda_backend`, take another path)."""
    cc = torch.cuda.get_device_capability(value.device)
    line = str(err).strip().splitlines()
    _TRITON_FAILED[(cc, value.dtype)] = f'{type(err).__name__}: {line[0] if line else ""}'


def _im2col_step(bs: int) -> int:
    """mmcv's kernel walks the batch in chunks that must divide it: the largest up to 64."""
    return max(d for d in range(1, min(bs, 64) + 1) if bs % d == 0)


def _mmcv_forward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                  sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    ext = _mmcv_ext()[0]
    bs, _, num_heads, head_dims = value.shape
    if bs * sampling_locations.shape[1] == 0:
        return value.new_zeros(bs, sampling_locations.shape[1], num_heads * head_dims)
    with torch.cuda.device(value.device):
        out = ext.ms_deform_attn_forward(value.to(sampling_locations.dtype), spatial_shapes,
                                         level_start_index, sampling_locations,
                                         attention_weights, im2col_step=_im2col_step(bs))
    return out.to(value.dtype)


def _mmcv_backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                   sampling_locations: Tensor, attention_weights: Tensor,
                   grad_output: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    ext = _mmcv_ext()[0]
    opmath = sampling_locations.dtype
    value_op = value.to(opmath)
    grad_value = torch.zeros_like(value_op)
    grad_loc = torch.zeros_like(sampling_locations)
    grad_attn = torch.zeros_like(attention_weights)
    if grad_output.numel() > 0:
        with torch.cuda.device(value.device):
            ext.ms_deform_attn_backward(value_op, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights,
                                        grad_output.to(opmath).contiguous(), grad_value,
                                        grad_loc, grad_attn,
                                        im2col_step=_im2col_step(value.shape[0]))
    return grad_value.to(value.dtype), grad_loc, grad_attn


def _pytorch_backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                      sampling_locations: Tensor, attention_weights: Tensor,
                      grad_output: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    shapes = _static_shapes(spatial_shapes)
    _, vjp = torch.func.vjp(
        lambda v, loc, attn: ms_deform_attn_pytorch(v, shapes, None, loc, attn), value,
        sampling_locations, attention_weights)
    return vjp(grad_output)


def _check_kernel_levels(value: Tensor, spatial_shapes: Tensor,
                         level_start_index: Tensor) -> None:
    """The kernels index ``value`` with the level layout: check it where the values are read
    (inside the op, so also in compiled and exported graphs)."""
    starts = [int(s) for s in level_start_index.tolist()]
    _check_level_layout(_static_shapes(spatial_shapes), starts, value.shape[1])



def _run_triton(kernel: str, value: Tensor, *args: Any) -> Any:
    """``msda_triton.<kernel>(*args)``, or None when Triton fails to compile or load it for
    ``value``'s device and dtype (recorded by :func:`_triton_failed`, so the caller and later
    calls take the next path). Other errors are raised as they are."""
    from .. import msda_triton
    try:
        return getattr(msda_triton, kernel)(*args)
    except Exception as err:
        if not _raised_by_triton(err):
            raise
        _triton_failed(value, err)
        return None

def forward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
            sampling_locations: Tensor, attention_weights: Tensor,
            deterministic: bool) -> Tensor:
    """The op's forward on the path for ``value``'s device. Inputs contiguous; levels int64;
    locations and weights in the value's opmath dtype (float32, float64 for float64 values)."""
    _check_kernel_levels(value, spatial_shapes, level_start_index)
    backend = _choose(value.device, value.dtype, deterministic)
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if backend == 'triton':
        out = _run_triton('ms_deform_attn_forward_triton', value, *args)
        if out is not None:
            return out
        backend = _choose(value.device, value.dtype, deterministic)
    if backend == 'cpu':
        return _EXT.ms_deform_attn_forward(*args)
    if backend == 'mmcv':
        return _mmcv_forward(*args)
    with torch.no_grad():
        return ms_deform_attn_pytorch(value, _static_shapes(spatial_shapes), None,
                                      sampling_locations, attention_weights)


def backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
             sampling_locations: Tensor, attention_weights: Tensor, grad_output: Tensor,
             deterministic: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_value, grad_sampling_locations, grad_attention_weights)`` on the path for
    ``value``'s device (the forward's inputs, ``grad_output`` contiguous in the value's dtype).
    The CPU kernel is deterministic whatever ``deterministic`` says (each thread owns its rows);
    the Triton one then sums ``grad_value`` in a fixed order instead of with atomics."""
    backend = _choose(value.device, value.dtype, deterministic)
    args = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output)
    if backend == 'triton':
        grads = _run_triton('ms_deform_attn_backward_triton', value, *args, deterministic)
        if grads is not None:
            return grads
        backend = _choose(value.device, value.dtype, deterministic)
    if backend == 'cpu':
        return tuple(_EXT.ms_deform_attn_backward(*args))
    if backend == 'mmcv':
        return _mmcv_backward(*args)
    return _pytorch_backward(*args)
