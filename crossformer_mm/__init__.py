"""crossformer_mm: CrossFormer, Swin and ViT backbones, a multi-scale deformable attention op and
DETR-family detectors for OpenMMLab 2.x (MMDetection 3.x, MMSegmentation 1.x, MMPretrain 1.x).

Importing the package (or naming it in a config's ``custom_imports``) checks the installed versions
against the tested floors (:data:`~crossformer_mm.version.MIN_VERSIONS`), applies the
compatibility layer for the current torch/numpy stack and registers every module into the model
registries of the toolboxes that are installed: mmdet, mmseg, mmpretrain, any of them alone or
together (see :mod:`crossformer_mm.registry`). Without mmengine, or without any of the three
toolboxes, only the torch ops load (:mod:`crossformer_mm.ops` needs torch alone).
"""
import torch as _torch  # noqa: I001

from .version import __version__, check_min_version as _check_min_version
from .version import import_checked as _import_checked

_check_min_version('torch', _torch.__version__)

if _import_checked('mmengine') is None:  # torch alone: the ops, nothing to register
    from . import ops  # noqa: F401
else:
    _import_checked('mmcv')
    from . import compat  # noqa: F401  (first: patches the stack before anything is built)
    from . import ops, registry  # noqa: F401
    if registry.ALL_MODEL_REGISTRIES:
        from . import datasets, engine, models  # noqa: F401

__all__ = ['__version__']
