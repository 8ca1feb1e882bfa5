"""The loading steps of every backbone (``models/backbones/loading.py``): the one ``prefix``
rule, the refusal of a pickle that names the family's converter, and the deprecated names of the
helpers that lived in ``base.py``."""
import pickle

import pytest
import torch

from crossformer_mm.compat.checkpoint import CheckpointLoadError
from crossformer_mm.models.backbones import CFSwinTransformer
from crossformer_mm.models.backbones import loading
from crossformer_mm.models.backbones.loading import backbone_state_dict


class _NotAWeight:
    """A pickled object weights-only loading refuses."""


def test_backbone_state_dict_rules() -> None:
    t = torch.zeros(1)
    wrapped = {'state_dict': {'module.backbone.a': t, 'module.neck.b': t, 'module.meta': 3}}
    assert list(backbone_state_dict(wrapped)) == ['a']
    assert list(backbone_state_dict(wrapped, 'backbone.')) == ['a']
    assert list(backbone_state_dict(wrapped, 'neck.')) == ['b']
    assert list(backbone_state_dict(wrapped, '')) == ['backbone.a', 'neck.b']
    assert list(backbone_state_dict({'model': {'a': t, 'head.w': t}})) == ['a', 'head.w']
    with pytest.raises(TypeError, match='expected a checkpoint dict'):
        backbone_state_dict([t])


def test_refused_pickle_names_the_family_converter(tmp_path) -> None:
    model = CFSwinTransformer(arch=dict(embed_dim=16, depths=(1, 1, 1, 1),
                                        num_heads=(1, 2, 4, 8)), window_size=4)
    path = tmp_path / 'trained.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': _NotAWeight()}, path)
    with pytest.raises(CheckpointLoadError) as info:
        model.load_pretrained(str(path))
    message = str(info.value)
    assert f'tools/model_converters/swin_to_mm.py {path} DST --unsafe-pickle' in message
    assert '*_to_mm' not in message
    with pytest.raises(pickle.UnpicklingError):  # the object was never unpickled
        torch.load(path, weights_only=True)


@pytest.mark.parametrize('name', ['backbone_state_dict', 'load_checked_state_dict',
                                  'unwrap_checkpoint'])
def test_helpers_moved_out_of_base_warn(name) -> None:
    from crossformer_mm.models.backbones import base
    with pytest.warns(DeprecationWarning, match=f'base.{name} is deprecated.*loading.{name}'):
        alias = getattr(base, name)
    assert alias is getattr(loading, name)
    with pytest.raises(AttributeError, match='run_converter_cli'):
        base.run_converter_cli
