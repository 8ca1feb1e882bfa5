"""crossformer_mm: CrossFormer, Swin and ViT backbones, a multi-scale deformable attention op and
DETR-family detectors for OpenMMLab 2.x (MMDetection 3.x, MMSegmentation 1.x, MMPretrain 1.x).

Importing the package (or naming it in a config's ``custom_imports``) applies the compatibility
layer for the current torch/numpy stack and registers every module into the MM registries.
Without mmengine installed only the torch ops load (:mod:`crossformer_mm.ops` needs torch alone).
"""
from .version import __version__  # noqa: I001

try:
    import mmengine  # noqa: F401
except ImportError:  # torch alone: the ops, nothing to register
    from . import ops  # noqa: F401
else:
    from . import compat  # noqa: F401  (first: patches the stack before anything is built)
    from . import datasets, engine, models, ops  # noqa: F401

__all__ = ['__version__']
