"""Softmax attention within small token groups (windows), registered as the torch op
``torch.ops.crossformer_mm.group_attention``.

``group_attention(qkv, bias, mask, scale)`` computes, for every group ``g``, head ``h`` and query
``i``::

    out[g, i, h] = sum_j softmax_j(scale · q[g,i,h]·k[g,j,h] + bias[g % nb, h, i, j]
                                   + mask[g % nm, h % hm, i, j]) · v[g, j, h]

reading q, k, v in place from the ``qkv`` projection ``(G, N, 3, heads, head_dim)`` and writing
``(G, N, heads, head_dim)``, the layout the output projection takes, so neither side needs a
permute copy. Kernels of the op:

* CPU, float32, native extension built: the C++ kernel (``csrc/group_attn``), one (group, head)
  per task on torch's thread pool, register-blocked vector loops compiled for AVX-512, AVX2 and
  the baseline ISA; nothing of size ``N×N`` is stored (the logits of one query row live in a
  buffer). :func:`group_attention_available` says whether it runs. The backbones' attention
  does not call the op (it uses SDPA or the explicit softmax; docs/backbones.md gives the
  measurement).
* any other device or dtype: the same function in PyTorch (:func:`group_attention_reference`).

A fake implementation serves ``torch.compile`` / ``torch.export``, and a registered backward
(softmax recomputed from q and k, then the closed-form gradients of q, k, v, bias and mask)
makes the op differentiable.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

try:
    from .. import _ext as _EXT
except ImportError:  # built without the native ops (pure-Python install)
    _EXT = None

__all__ = ['group_attention', 'group_attention_available', 'group_attention_reference']


def group_attention_available(x: Tensor) -> bool:
    """Whether :func:`group_attention` has a kernel for tensors like ``x`` (CPU float32)."""
    return (_EXT is not None and hasattr(_EXT, 'group_attention_forward')
            and x.device.type == 'cpu' and x.dtype == torch.float32)


def _check(qkv: Tensor, t: Optional[Tensor], name: str) -> None:
    if t is None:
        return
    g, n, _, heads, _ = qkv.shape
    if (t.ndim != 4 or t.shape[-1] != n or t.shape[2] not in (1, n) or t.shape[1] not in (1, heads)
            or g % t.shape[0]):
        raise ValueError(f'{name} of shape {tuple(t.shape)} does not fit qkv {tuple(qkv.shape)}: '
                         f'expected (n, heads|1, N|1, N) with n dividing the {g} groups')


def group_attention(qkv: Tensor, bias: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                    scale: Optional[float] = None) -> Tensor:
    """Attention within groups from a ``(G, N, 3, heads, head_dim)`` qkv tensor.

    Args:
        qkv: The qkv projection of ``G`` groups of ``N`` tokens.
        bias: Additive ``(nb, heads, N, N)``; group ``g`` uses row ``g % nb``.
        mask: Additive ``(nm, heads | 1, N | 1, N)`` (large negative values block keys); group
            ``g`` uses row ``g % nm``. A size-1 query dimension broadcasts a key-padding row.
        scale: Logit scale, default ``head_dim ** -0.5``.

    Returns:
        ``(G, N, heads, head_dim)``; differentiable in ``qkv``, ``bias`` and ``mask``.

    Raises:
        ValueError: for shapes that do not fit.
    """
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f'qkv must be (groups, N, 3, heads, head_dim), got {tuple(qkv.shape)}')
    _check(qkv, bias, 'bias')
    _check(qkv, mask, 'mask')
    if scale is None:
        scale = qkv.shape[-1] ** -0.5
    return torch.ops.crossformer_mm.group_attention(qkv, bias, mask, float(scale))


def _add_rows(logits: Tensor, t: Optional[Tensor]) -> Tensor:
    """``logits`` ``(G, heads, N, N)`` plus ``t`` ``(n, heads|1, N|1, N)``, row ``g % n``."""
    if t is None:
        return logits
    g, heads, n, _ = logits.shape
    return (logits.view(g // t.shape[0], t.shape[0], heads, n, n) + t).view(g, heads, n, n)


def _attention_probs(qkv: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                     scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v ``(G, heads, N, d)`` and the softmax ``(G, heads, N, N)``."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    logits = _add_rows(_add_rows((q @ k.transpose(-2, -1)) * scale, bias), mask)
    return q, k, v, logits.softmax(-1)


def group_attention_reference(qkv: Tensor, bias: Optional[Tensor] = None,
                              mask: Optional[Tensor] = None,
                              scale: Optional[float] = None) -> Tensor:
    """The same function in plain PyTorch (any dtype / device, autograd), for tests and for the
    op's devices without a native kernel."""
    scale = qkv.shape[-1] ** -0.5 if scale is None else scale
    _, _, v, probs = _attention_probs(qkv, bias, mask, scale)
    return (probs @ v).transpose(1, 2)


def _prep(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None:
        return None
    t = t.to(torch.float32)
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


@torch.library.custom_op('crossformer_mm::group_attention', mutates_args=())
def _group_attention_op(qkv: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                        scale: float) -> Tensor:
    """Any device: the PyTorch formulation (the CPU kernel below overrides it)."""
    return group_attention_reference(qkv, bias, mask, scale).contiguous()


@_group_attention_op.register_kernel('cpu')
def _group_attention_cpu(qkv: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                         scale: float) -> Tensor:
    if not group_attention_available(qkv):
        return group_attention_reference(qkv, bias, mask, scale).contiguous()
    return _EXT.group_attention_forward(qkv.contiguous(), _prep(bias), _prep(mask), scale)


@_group_attention_op.register_fake
def _group_attention_fake(qkv: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                          scale: float) -> Tensor:
    g, n, _, heads, d = qkv.shape
    return qkv.new_empty(g, n, heads, d)


def _reduce_rows(grad: Tensor, t: Tensor) -> Tensor:
    """Gradient of ``t`` from the ``(G, heads, N, N)`` logits gradient (rows ``g % n``, then
    the broadcast dimensions summed)."""
    g, heads, n, _ = grad.shape
    grad = grad.view(g // t.shape[0], t.shape[0], heads, n, n).sum(0)
    dims = [i for i in (1, 2) if t.shape[i] == 1 and grad.shape[i] != 1]
    return (grad.sum(dims, keepdim=True) if dims else grad).to(t.dtype)


def _group_attention_setup(ctx, inputs: tuple, output: Tensor) -> None:
    qkv, bias, mask, scale = inputs
    ctx.save_for_backward(qkv, bias, mask)
    ctx.scale = scale


def _group_attention_backward(ctx, grad_out: Tensor) -> tuple:
    qkv, bias, mask = ctx.saved_tensors
    scale = ctx.scale
    q, k, v, probs = _attention_probs(qkv, bias, mask, scale)
    grad_out = grad_out.transpose(1, 2).to(probs.dtype)  # (G, heads, N, d)
    grad_v = probs.transpose(-2, -1) @ grad_out
    grad_p = grad_out @ v.transpose(-2, -1)
    grad_logits = probs * (grad_p - (grad_p * probs).sum(-1, keepdim=True))
    grad_q = (grad_logits @ k) * scale
    grad_k = (grad_logits.transpose(-2, -1) @ q) * scale
    grad_qkv = torch.stack([grad_q, grad_k, grad_v], 0).permute(1, 3, 0, 2, 4).to(qkv.dtype)
    grad_bias = _reduce_rows(grad_logits, bias) if ctx.needs_input_grad[1] else None
    grad_mask = _reduce_rows(grad_logits, mask) if ctx.needs_input_grad[2] else None
    return grad_qkv, grad_bias, grad_mask, None


_group_attention_op.register_autograd(_group_attention_backward,
                                      setup_context=_group_attention_setup)
