"""Models: shared layers, backbones, detectors and heads, and the MSDA op's registration.

The DETR detectors and heads subclass mmdet's and load only where mmdet is installed (see
:mod:`crossformer_mm.registry`)."""
from ..registry import INSTALLED
from . import backbones, layers, msda  # noqa: F401

if INSTALLED['mmdet']:
    from . import dense_heads, detectors  # noqa: F401
