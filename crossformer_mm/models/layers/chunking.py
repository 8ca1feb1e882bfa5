"""Chunked inference for the token-wise parts of the backbones.

Without autograd, attention over token groups and the MLP can run a slice of the tokens at a
time: the function is the same, but the large intermediate tensors (the ``qkv`` projection, the
folded attention mask, the MLP's hidden activation: 40–100 MB each for one 800×1216 image) are
never materialised whole. Each slice fits in a few MiB, so the allocator reuses the same memory
for every slice instead of mapping fresh pages for every layer (on Linux, blocks above 32 MiB
come from ``mmap`` and are zero-filled page by page on first touch, which costs about a quarter
of a forward pass at detection sizes), and the slice stays in cache between the projection and
its consumer. Training (anything that needs gradients) always takes the unchunked path.

The budget is one process-wide setting: :func:`set_inference_chunk_bytes` (0 disables chunking),
or the :func:`inference_chunk_bytes` context manager.

The slices' dense layers go through :func:`inference_linear`: on float32 CPU tensors it calls
oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, with the GELU / ReLU fused in where the
MLP has one) instead of ``F.linear``'s BLAS call. Same function; on this project's AVX-512 CPU
oneDNN ran the backbones' layer shapes about twice as fast (for example 1024×768 → 3072: 14 ms
instead of 32 ms), since the BLAS build that ``F.linear`` uses here does not reach AVX-512 speed.
``F.linear`` remains the path everywhere else (training, other devices and dtypes) and whenever
the oneDNN op is unavailable.
"""
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CHUNK_BYTES = 8 << 20


def get_inference_chunk_bytes() -> int:
    """Current budget, in bytes, of the largest intermediate of one slice (0: no chunking)."""
    return _CHUNK_BYTES


def set_inference_chunk_bytes(num_bytes: int) -> None:
    """Sets the slice budget of chunked inference; 0 turns chunking off.

    Raises:
        ValueError: for a negative or non-integer budget.
    """
    global _CHUNK_BYTES
    if isinstance(num_bytes, bool) or not isinstance(num_bytes, int) or num_bytes < 0:
        raise ValueError(f'inference chunk budget must be an int >= 0 (bytes), got {num_bytes!r}')
    _CHUNK_BYTES = num_bytes


@contextmanager
def inference_chunk_bytes(num_bytes: int) -> Iterator[None]:
    """Context manager that sets the slice budget and restores the previous one."""
    previous = get_inference_chunk_bytes()
    set_inference_chunk_bytes(num_bytes)
    try:
        yield
    finally:
        set_inference_chunk_bytes(previous)


def tracing() -> bool:
    """True while ``torch.jit`` traces (FLOP counters, export): the chunked and custom-autograd
    paths are skipped then, so that the trace holds the plain whole-tensor ops."""
    return torch.jit.is_tracing()


def needs_autograd(*tensors: Optional[Tensor]) -> bool:
    """True if autograd is on and any of ``tensors`` requires a gradient."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _probe_onednn() -> bool:
    """Whether oneDNN's fused linear op exists and computes ``F.linear`` here."""
    try:
        x, w, b = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, 'none', [], '')
        return bool(torch.allclose(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5))
    except Exception:  # op missing (torch built without mkldnn) or a changed signature
        return False


_ONEDNN: Optional[bool] = None
_FUSED_ACTS = {nn.GELU: 'gelu', nn.ReLU: 'relu'}


def inference_linear(x: Tensor, layer: nn.Linear, act: Optional[nn.Module] = None) -> Tensor:
    """``act(layer(x))`` for inference (no autograd): oneDNN's matmul on float32 CPU tensors,
    with GELU (exact or tanh) and ReLU fused into it; ``F.linear`` otherwise."""
    global _ONEDNN
    if x.device.type == 'cpu' and x.dtype == torch.float32 and layer.weight.dtype == x.dtype:
        if _ONEDNN is None:
            _ONEDNN = _probe_onednn()
        if _ONEDNN:
            name = _FUSED_ACTS.get(type(act)) if act is not None else 'none'
            if name is not None:
                algorithm = getattr(act, 'approximate', 'none') if name == 'gelu' else ''
                return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, name, [],
                                                          algorithm)
    y = F.linear(x, layer.weight, layer.bias)
    return y if act is None else act(y)


def rows_per_chunk(total_rows: int, bytes_per_row: int) -> int:
    """Rows per slice under the budget, or 0 when one slice would hold them all (or chunking
    is off)."""
    budget = get_inference_chunk_bytes()
    if budget <= 0 or total_rows * bytes_per_row <= budget:
        return 0
    return max(1, budget // max(1, bytes_per_row))


__all__ = ['get_inference_chunk_bytes', 'set_inference_chunk_bytes', 'inference_chunk_bytes',
           'needs_autograd', 'rows_per_chunk', 'tracing', 'inference_linear']
