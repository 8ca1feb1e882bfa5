"""Training pieces for the Runner: :func:`~.optimizers.fused_adamw` (``FusedAdamW`` in mmengine's
``OPTIMIZERS``) and, when MMDetection is installed, the hook :class:`CFDetVisualizationHook`
(prediction pictures with one box per object) in mmdet's ``HOOKS``."""
from ..registry import INSTALLED
from .optimizers import fused_adamw

__all__ = ['fused_adamw']
if INSTALLED['mmdet']:
    from .visualization_hook import CFDetVisualizationHook  # noqa: F401
    __all__ += ['CFDetVisualizationHook']
