"""Deprecated: the DETR family's shared detector code moved to :mod:`.detr_family`, the
positive-int check to :mod:`crossformer_mm.models.utils`. The old names answer for one release
with a ``DeprecationWarning``."""
from ..utils import moved_names

__getattr__ = moved_names(__name__, {
    'check_positive_int': 'crossformer_mm.models.utils:check_positive_int',
    **{name: f'crossformer_mm.models.detectors.detr_family:{name}' for name in (
        'DETRFamilyMixin', 'backbone_out_channels', 'check_backbone_neck', 'check_detr_config',
        'check_levels', 'check_neck_inputs', 'check_required', 'check_transformer',
        'neck_in_channels', 'neck_num_outs', 'neck_out_channels')}})
