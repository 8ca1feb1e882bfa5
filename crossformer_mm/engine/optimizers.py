"""``FusedAdamW``: torch's AdamW with its fused kernel wherever this torch has one.

``torch.optim.AdamW`` updates the parameters one tensor at a time in Python unless ``fused`` (one
kernel over all of them) or ``foreach`` is asked for, and on the CPU it never picks either by
itself. The fused kernel exists for CUDA on every supported torch and for the CPU from torch 2.4;
asking for it elsewhere makes the optimizer refuse to build. ``FusedAdamW`` asks for it exactly
where it exists, so one config trains on any device and torch the package supports. The update
is AdamW's (same arguments, same state keys): checkpoints move between the two freely.

Registered in mmengine's root ``OPTIMIZERS``, which every toolbox's registry falls back to:
``optim_wrapper = dict(optimizer=dict(type='FusedAdamW', lr=1e-3, weight_decay=0.05))``.
"""
from typing import Any, Iterable, Optional

import torch
from mmengine.registry import OPTIMIZERS

from ..version import version_tuple

#: The first torch with the fused AdamW kernel for the CPU.
CPU_FUSED_TORCH = (2, 4)


def fused_supported(device: torch.device, torch_version: Optional[str] = None) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` accepts parameters on ``device`` with torch
    ``torch_version`` (default: this one)."""
    if device.type == 'cuda':
        return True
    if device.type == 'cpu':
        return version_tuple(torch_version or torch.__version__)[:2] >= CPU_FUSED_TORCH
    return False


def fused_adamw(params: Iterable[Any], **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, fused=True, **kwargs)`` where every parameter's device has the
    fused kernel (and the parameters are floating point), else ``torch.optim.AdamW(params,
    **kwargs)``.

    Raises:
        ValueError: if ``kwargs`` chooses the implementation itself (``fused`` or ``foreach``).
    """
    for key in ('fused', 'foreach'):
        if key in kwargs:
            raise ValueError(f'FusedAdamW chooses the implementation itself; drop {key}= or use '
                             f'type=\'AdamW\' with {key}={kwargs[key]!r}')
    params = list(params)
    tensors = [p for group in params for p in (group['params'] if isinstance(group, dict)
                                               else [group])]
    fused = bool(tensors) and all(
        torch.is_floating_point(p) and fused_supported(p.device) for p in tensors)
    return torch.optim.AdamW(params, fused=True, **kwargs) if fused else \
        torch.optim.AdamW(params, **kwargs)


OPTIMIZERS.register_module(name='FusedAdamW', module=fused_adamw)

__all__ = ['CPU_FUSED_TORCH', 'fused_adamw', 'fused_supported']
