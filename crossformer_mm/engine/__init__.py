"""Runner hooks: :class:`CFDetVisualizationHook` (prediction pictures with one box per object),
registered in mmdet's ``HOOKS`` when MMDetection is installed."""
from ..registry import INSTALLED

__all__ = []
if INSTALLED['mmdet']:
    from .visualization_hook import CFDetVisualizationHook  # noqa: F401
    __all__ += ['CFDetVisualizationHook']
