"""Models: shared layers, backbones, detectors and heads, and the MSDA op's registration."""
from . import backbones, detectors, layers  # noqa: F401
from . import dense_heads, msda  # noqa: F401
