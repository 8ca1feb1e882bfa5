"""Softmax attention within small token groups (windows), CPU inference kernel.

``group_attention(qkv, bias, mask, scale)`` computes, for every group ``g``, head ``h`` and query
``i``::

    out[g, i, h] = sum_j softmax_j(scale · q[g,i,h]·k[g,j,h] + bias[g % nb, h, i, j]
                                   + mask[g % nm, h % hm, i, j]) · v[g, j, h]

reading q, k, v in place from the ``qkv`` projection ``(G, N, 3, heads, head_dim)`` and writing
``(G, N, heads, head_dim)``, the layout the output projection takes, so neither side needs a
permute copy; nothing of size ``N×N`` is stored (the logits of one query row live in a buffer).
The C++ kernel (``csrc/group_attn``) runs one (group, head) per task on torch's thread pool, with
register-blocked vector loops compiled for AVX-512, AVX2 and the baseline ISA. It is forward
only, float32, CPU: the attention layers call it for inference and use SDPA / autograd
otherwise (:func:`group_attention_available`).
"""
from typing import Optional

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
        qkv: The qkv projection of ``G`` groups of ``N`` tokens (float32, CPU).
        bias: Additive ``(nb, heads, N, N)``; group ``g`` uses row ``g % nb``.
        mask: Additive ``(nm, heads | 1, N | 1, N)`` (large negative values block keys); group
            ``g`` uses row ``g % nm``. A size-1 query dimension broadcasts a key-padding row.
        scale: Logit scale, default ``head_dim ** -0.5``.

    Returns:
        ``(G, N, heads, head_dim)``.

    Raises:
        ValueError: for shapes that do not fit; RuntimeError if the kernel is unavailable.
    """
    if not group_attention_available(qkv):
        raise RuntimeError('group_attention needs the native extension and a float32 CPU '
                           f'tensor (got {qkv.dtype} on {qkv.device})')
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f'qkv must be (groups, N, 3, heads, head_dim), got {tuple(qkv.shape)}')
    _check(qkv, bias, 'bias')
    _check(qkv, mask, 'mask')
    if scale is None:
        scale = qkv.shape[-1] ** -0.5

    def prep(t: Optional[Tensor]) -> Optional[Tensor]:
        if t is None:
            return None
        t = t.to(torch.float32)
        return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()

    return _EXT.group_attention_forward(qkv.contiguous(), prep(bias), prep(mask), float(scale))


def group_attention_reference(qkv: Tensor, bias: Optional[Tensor] = None,
                              mask: Optional[Tensor] = None,
                              scale: Optional[float] = None) -> Tensor:
    """The same function in plain PyTorch (any dtype / device), for tests."""
    g, n, _, heads, d = qkv.shape
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    logits = (q @ k.transpose(-2, -1)) * (d ** -0.5 if scale is None else scale)
    for t in (bias, mask):
        if t is not None:
            logits = (logits.view(g // t.shape[0], t.shape[0], heads, n, n) + t).view(
                g, heads, n, n)
    return (logits.softmax(-1) @ v).transpose(1, 2)
