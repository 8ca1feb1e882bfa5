"""Compatibility layer for the current stack (torch 2.13, numpy 2.x, mmengine 0.10.7).

Applied once, when ``crossformer_mm`` is imported:

* :mod:`.checkpoint` — weights-only loading for downloaded weight files, full loading for the
  Runner's own (trusted) training checkpoints, atomic checkpoint writes;
* :mod:`.dist` — ``torchrun`` on gloo without GPUs (no ``cuda.set_device``, no ``device_ids`` for CPU
  modules, process group destroyed at exit).

Each patch is narrow, idempotent and leaves behaviour on a GPU machine unchanged. See
``docs/compatibility.md``.
"""
from . import checkpoint, dist


def apply_all() -> None:
    """Apply every patch (idempotent)."""
    checkpoint.apply()
    dist.apply()


apply_all()

__all__ = ['apply_all', 'checkpoint', 'dist']
