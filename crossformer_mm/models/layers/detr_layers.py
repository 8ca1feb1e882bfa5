"""Deprecated: the DETR layers moved next to the detectors, to
:mod:`crossformer_mm.models.detectors.detr_layers` (``models/layers/`` needs torch alone). The old
names answer for one release with a ``DeprecationWarning``."""
from ..utils import moved_names

__getattr__ = moved_names(__name__, {
    name: f'crossformer_mm.models.detectors.detr_layers:{name}'
    for name in ('ATTENTION_REPLACEMENTS', 'SDPAMultiheadAttention', 'swap_attention')})
