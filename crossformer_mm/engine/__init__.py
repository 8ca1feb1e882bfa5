"""Runner hooks: :class:`CFDetVisualizationHook` (prediction pictures with one box per object),
registered in mmdet's ``HOOKS`` when MMDetection is installed."""
import importlib.util

__all__ = []
if importlib.util.find_spec('mmdet') is not None:
    from .visualization_hook import CFDetVisualizationHook  # noqa: F401
    __all__ += ['CFDetVisualizationHook']
