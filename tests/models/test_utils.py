"""``crossformer_mm.models.utils``: the positive-int check of heads and detectors, and the
deprecated old places of moved names (each warns and hands back the object at its new place)."""
import importlib

import pytest

from crossformer_mm.models.utils import check_positive_int, moved_names


@pytest.mark.parametrize('value', [1, 7])
def test_check_positive_int_accepts(value) -> None:
    check_positive_int(value, 'num_queries')


@pytest.mark.parametrize('value', [0, -3, 2.0, True, None, '4'])
def test_check_positive_int_refuses(value) -> None:
    with pytest.raises(ValueError, match=f'num_queries must be a positive int, got {value!r}'):
        check_positive_int(value, 'num_queries')


def test_moved_names_warns_and_resolves_dotted_attributes() -> None:
    getter = moved_names('old.place', {'old': 'crossformer_mm.models.utils:check_positive_int',
                                       'method': 'collections:OrderedDict.fromkeys'})
    with pytest.warns(DeprecationWarning, match='old.place.old is deprecated.*'
                      'crossformer_mm.models.utils.check_positive_int'):
        assert getter('old') is check_positive_int
    with pytest.warns(DeprecationWarning):
        assert getter('method') == importlib.import_module('collections').OrderedDict.fromkeys
    with pytest.raises(AttributeError, match="module 'old.place' has no attribute 'other'"):
        getter('other')


@pytest.mark.parametrize('old, name, new', [
    ('crossformer_mm.models.detectors.utils', 'DETRFamilyMixin',
     'crossformer_mm.models.detectors.detr_family'),
    ('crossformer_mm.models.detectors.utils', 'check_backbone_neck',
     'crossformer_mm.models.detectors.detr_family'),
    ('crossformer_mm.models.detectors.utils', 'check_positive_int', 'crossformer_mm.models.utils'),
    ('crossformer_mm.models.layers.detr_layers', 'SDPAMultiheadAttention',
     'crossformer_mm.models.detectors.detr_layers'),
    ('crossformer_mm.models.layers.detr_layers', 'swap_attention',
     'crossformer_mm.models.detectors.detr_layers'),
    ('crossformer_mm.models.layers.detr_layers', 'ATTENTION_REPLACEMENTS',
     'crossformer_mm.models.detectors.detr_layers'),
])
def test_old_module_paths_warn(old, name, new) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f'{old}.{name} is deprecated.*{new}.{name}'):
        alias = getattr(module, name)
    assert alias is getattr(importlib.import_module(new), name)
