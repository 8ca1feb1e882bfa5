"""FLOP-counter support for fused attention (public API).

mmengine's ``FlopAnalyzer`` (fvcore-style, one FLOP per multiply-add) has no handle for
``aten::scaled_dot_product_attention`` and skips it, so models on the fused path
(:class:`~.attention.Attention` with ``fused_attn=True``, the default) would be under-counted by
the two attention matmuls. :func:`sdpa_flop_jit` counts them like the explicit path's ``q·kᵀ`` and
``attn·v`` (softmax and mask additions are not counted on either path).

Called by ``tools/analysis_tools/get_flops.py``, and by users who count the package's models with
their own ``FlopAnalyzer`` (``add_sdpa_handle(FlopAnalyzer(model, inputs))``, see
docs/backbones.md).
"""
from math import prod
from typing import Any, List


SDPA_OP = 'aten::scaled_dot_product_attention'


def _shape(value: Any) -> List[int]:
    return value.type().sizes()


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """Multiply-adds of ``softmax(q·kᵀ)·v``: ``batch·L·S·(E + Ev)`` for q ``(…, L, E)``,
    k ``(…, S, E)``, v ``(…, S, Ev)``."""
    q, k, v = (_shape(t) for t in inputs[:3])
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def add_sdpa_handle(analyzer: Any) -> Any:
    """Register :func:`sdpa_flop_jit` on an mmengine ``FlopAnalyzer``; returns the analyzer."""
    return analyzer.set_op_handle(SDPA_OP, sdpa_flop_jit)


__all__ = ['SDPA_OP', 'sdpa_flop_jit', 'add_sdpa_handle']
