"""The backbone contract shared by CrossFormer, Swin and ViT: argument checks, output shapes,
frozen stages with their output norms, and ``load_pretrained`` / ``init_cfg`` with a ``prefix``
(the loading steps themselves: ``test_loading.py``)."""
import pytest
import torch

from crossformer_mm.models.backbones import CFSwinTransformer, CFVisionTransformer, CrossFormer
from crossformer_mm.models.backbones.base import ShapeSpec

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
FAMILIES = {
    'crossformer': lambda **kw: CrossFormer(arch=dict(TINY), group_size=(4, 4, 4, 4),
                                            interval=(4, 2, 1, 1), drop_path_rate=0., **kw),
    'swin': lambda **kw: CFSwinTransformer(arch=dict(TINY), window_size=4, drop_path_rate=0.,
                                           **kw),
    'vit': lambda **kw: CFVisionTransformer(arch=dict(embed_dim=32, depth=4, num_heads=2),
                                            img_size=64, patch_size=16, **kw),
}


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Distinct non-trivial weights (norms and biases included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def _check_shapes(model: torch.nn.Module, hw=(96, 128)) -> None:
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        outs = model(x)
    specs = model.output_shape()
    assert len(outs) == len(specs)
    for out, spec in zip(outs, specs):
        assert isinstance(spec, ShapeSpec)
        assert out.shape[1] == spec.channels
        if spec.stride is None:
            assert out.ndim == 2
        else:
            assert out.shape[2:] == (-(-hw[0] // spec.stride), -(-hw[1] // spec.stride))


@pytest.mark.parametrize('family', ['crossformer', 'swin'])
def test_output_shape_hierarchical(family) -> None:
    model = FAMILIES[family](out_indices=(1, 3)).eval()
    assert model.output_shape() == [ShapeSpec(32, 8), ShapeSpec(128, 32)]
    _check_shapes(model)
    # negative indices count from the end and give the same outputs
    assert FAMILIES[family](out_indices=(-3, -1)).out_indices == (1, 3)


@pytest.mark.parametrize('kwargs,expected', [
    (dict(out_type='featmap', out_indices=(1, -1)), [ShapeSpec(32, 16)] * 2),
    (dict(out_type='pyramid', pyramid_scales=(4.0, 2.0, 1.0, 0.5)),
     [ShapeSpec(8, 4), ShapeSpec(16, 8), ShapeSpec(32, 16), ShapeSpec(32, 32)]),
    (dict(out_type='pyramid', pyramid_scales=(2.0, 1.0), pyramid_channels=24),
     [ShapeSpec(24, 8), ShapeSpec(24, 16)]),
    (dict(out_type='avg_featmap'), [ShapeSpec(32, None)]),
])
def test_output_shape_vit(kwargs, expected) -> None:
    model = FAMILIES['vit'](**kwargs).eval()
    assert model.output_shape() == expected
    _check_shapes(model)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_argument_checks(family) -> None:
    n = 4
    with pytest.raises(ValueError, match=rf'out_indices must be in \[-{n}, {n - 1}\]'):
        FAMILIES[family](out_indices=(0, n))
    with pytest.raises(ValueError, match='out_indices must be increasing'):
        FAMILIES[family](out_indices=(2, 1))
    with pytest.raises(ValueError, match='out_indices must name at least one stage'):
        FAMILIES[family](out_indices=())
    with pytest.raises(ValueError, match=rf'frozen_stages must be in \[-1, {n}\]'):
        FAMILIES[family](frozen_stages=n + 1)


@pytest.mark.parametrize('family', ['crossformer', 'swin'])
def test_frozen_stages_freeze_their_output_norms(family) -> None:
    kw = dict(out_norms=True) if family == 'crossformer' else {}
    model = FAMILIES[family](frozen_stages=2, **kw)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('patch_embed.', 'layers.0.', 'layers.1.', 'norm0.', 'norm1.'))
        assert p.requires_grad != frozen, name
    assert not model.norm1.training and model.norm2.training


@pytest.mark.parametrize('family', sorted(FAMILIES))
@pytest.mark.parametrize('prefix', ['backbone.', None])
def test_detector_checkpoint_with_backbone_prefix(family, prefix, tmp_path) -> None:
    """A detector checkpoint (``backbone.`` keys beside neck / head keys) loads into the bare
    backbone, from a dict and from a file through ``init_cfg``; the outputs are the source's."""
    source = _randomized(FAMILIES[family](), 0)
    ckpt = {'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()},
            'meta': {'epoch': 12}}
    ckpt['state_dict']['neck.lateral_convs.0.conv.weight'] = torch.zeros(8, 16, 1, 1)
    ckpt['state_dict']['bbox_head.fc_cls.bias'] = torch.zeros(5)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = source(x)

    target = _randomized(FAMILIES[family](), 1)
    missing, unexpected = target.load_pretrained(ckpt, prefix=prefix, strict=True)
    assert not missing and not unexpected
    path = tmp_path / 'detector.pth'
    torch.save(ckpt, path)
    from_file = FAMILIES[family](init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                               prefix=prefix))
    from_file.init_weights()
    with torch.no_grad():
        for model in (target, from_file.eval()):
            for a, b in zip(model(x), ref):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_prefix_that_matches_nothing(family) -> None:
    sd = FAMILIES[family]().state_dict()
    with pytest.raises(ValueError, match=r"no checkpoint key starts with prefix 'model\.'"):
        FAMILIES[family]().load_pretrained(sd, prefix='model.')


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_family_load_functions_are_deprecated_aliases(family) -> None:
    """``load_<family>_checkpoint(model, ...)`` warns and is ``model.load_pretrained(...)``."""
    import importlib
    mod = importlib.import_module(f'crossformer_mm.models.backbones.{family}')
    with pytest.warns(DeprecationWarning, match=f'load_{family}_checkpoint is deprecated.*'
                      'load_pretrained'):
        load = getattr(mod, f'load_{family}_checkpoint')
    source = _randomized(FAMILIES[family](), 0)
    target = _randomized(FAMILIES[family](), 1)
    assert load(target, source.state_dict(), strict=True) == ([], [])
    for a, b in zip(target.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
