"""Models: shared layers, backbones, detectors and heads."""
from . import backbones, detectors, layers  # noqa: F401
from . import dense_heads  # noqa: F401
