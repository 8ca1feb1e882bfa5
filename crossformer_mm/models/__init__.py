"""Models: shared layers, backbones, detectors and heads, and the MSDA op's registration.

:func:`replace_mmcv_msda` and :class:`MSDAKernelHook` (from :mod:`.msda`) put mmcv's
``MultiScaleDeformableAttention`` modules of any built model on the package's kernels.
"""
from . import layers, msda  # noqa: F401  (msda first: the detectors switch mmcv's modules to it)
from . import backbones, dense_heads, detectors  # noqa: F401
from .msda import MSDAKernelHook, replace_mmcv_msda

__all__ = ['MSDAKernelHook', 'replace_mmcv_msda']
