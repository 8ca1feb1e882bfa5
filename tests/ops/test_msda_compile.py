"""The registered MSDA op under ``torch.compile(fullgraph=True)`` and ``torch.export``: the op,
the module and a Deformable DETR encoder layer give the eager outputs and gradients; what the
op cannot serve fails with an error naming the option.

``aot_eager`` exercises what the op contributes (Dynamo tracing without graph breaks, the fake
implementation, the registered backward under AOTAutograd); one test per level also runs
Inductor, the default backend."""
import pytest
import torch

from crossformer_mm.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_pytorch
from crossformer_mm.ops.msda import backends as msda_backends

from test_msda import _module_inputs, _randomise, make_inputs, max_diff  # noqa: E402

pytestmark = pytest.mark.needs_custom_op


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(out: torch.Tensor, leaves, seed: int = 1):
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, leaves, grad)


@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
@pytest.mark.parametrize('static', [False, True])
def test_compiled_op_matches_eager(backend, static):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32, num_queries=9)
    levels = [tuple(hw) for hw in shapes.tolist()] if static else shapes
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    expected = ms_deform_attn(value, levels, starts, loc, attn)
    expected_grads = _grads(expected, leaves)
    compiled = torch.compile(ms_deform_attn, fullgraph=True, backend=backend)
    out = compiled(value, levels, starts, loc, attn)
    assert max_diff(out, expected) <= 1e-6
    for a, b in zip(_grads(out, leaves), expected_grads):
        assert max_diff(a, b) <= 1e-5


def test_compiled_op_dynamic_query_count():
    """The fake implementation serves symbolic sizes: one graph for several query counts."""
    compiled = torch.compile(ms_deform_attn, fullgraph=True, backend='aot_eager', dynamic=True)
    for nq in (5, 8, 13):
        inputs = make_inputs(dtype=torch.float32, num_queries=nq, seed=nq)
        assert max_diff(compiled(*inputs), ms_deform_attn(*inputs)) <= 1e-6


def test_compile_without_kernel_runs_the_pytorch_formulation(monkeypatch):
    """Without a kernel for the device the op runs the PyTorch formulation inside the registered
    op: compiled graphs need no change, with level sizes in a tensor or static."""
    monkeypatch.setattr(msda_backends, '_EXT', None)
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    expected = ms_deform_attn_pytorch(value, shapes, starts, loc, attn)
    expected_grads = _grads(expected, leaves)
    compiled = torch.compile(ms_deform_attn, fullgraph=True, backend='aot_eager')
    static = [tuple(hw) for hw in shapes.tolist()]
    for levels, level_starts in ((shapes, starts), (static, None)):
        monkeypatch.setattr(msda_backends, '_WARNED', set())
        with pytest.warns(RuntimeWarning, match='not built'):
            out = compiled(value, levels, level_starts, loc, attn)
            grads = _grads(out, leaves)
        assert max_diff(out, expected) <= 1e-6
        for a, b in zip(grads, expected_grads):
            assert max_diff(a, b) <= 1e-5


def _module():
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3, dropout=0.0)
    _randomise(module)
    return module


@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
def test_compiled_module_matches_eager(backend):
    module = _module()
    inputs = _module_inputs()
    expected = module(**inputs)
    expected_grads = _grads(expected, list(module.parameters()))
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    out = compiled(**inputs)
    assert max_diff(out, expected) <= 1e-5
    for (name, _), a, b in zip(module.named_parameters(),
                               _grads(out, list(module.parameters())), expected_grads):
        assert max_diff(a, b) <= 1e-4 * max(1.0, b.abs().max().item()), name


def test_exported_module_matches_eager():
    module = _module().eval()
    inputs = _module_inputs()
    query = inputs.pop('query')
    program = torch.export.export(module, (query, ), inputs)
    targets = {str(n.target) for n in program.graph.nodes if n.op == 'call_function'}
    assert 'crossformer_mm.ms_deform_attn.default' in targets
    assert max_diff(program.module()(query, **inputs), module(query, **inputs)) <= 1e-6
    # Another input of the same size: the program holds no data of the example.
    other = _module_inputs(seed=3)
    other_query = other.pop('query')
    assert max_diff(program.module()(other_query, **other),
                    module(other_query, **other)) <= 1e-6


def _encoder_layer():
    from mmdet.models.layers import DeformableDetrTransformerEncoderLayer

    from crossformer_mm.models import replace_mmcv_msda
    torch.manual_seed(0)
    layer = DeformableDetrTransformerEncoderLayer(
        self_attn_cfg=dict(embed_dims=32, num_heads=4, num_levels=2, num_points=2,
                           dropout=0.0, batch_first=True),
        ffn_cfg=dict(embed_dims=32, feedforward_channels=64, ffn_drop=0.0))
    assert replace_mmcv_msda(layer) == 1
    _randomise(layer)
    inputs = _module_inputs(batch_first=True)
    kwargs = dict(query=inputs['value'], query_pos=torch.randn_like(inputs['value']),
                  key_padding_mask=inputs['key_padding_mask'],
                  spatial_shapes=inputs['spatial_shapes'],
                  level_start_index=inputs['level_start_index'],
                  reference_points=torch.rand(2, inputs['value'].shape[1], 2, 2))
    return layer, kwargs


@pytest.mark.parametrize('backend', ['aot_eager', pytest.param('inductor',
                                                               marks=pytest.mark.slow)])
def test_compiled_encoder_layer_matches_eager(backend):
    layer, kwargs = _encoder_layer()
    expected = layer(**kwargs)
    params = list(layer.parameters())
    expected_grads = _grads(expected, params)
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    out = compiled(**kwargs)
    assert max_diff(out, expected) <= 1e-5
    for (name, _), a, b in zip(layer.named_parameters(), _grads(out, params), expected_grads):
        assert max_diff(a, b) <= 1e-4 * max(1.0, b.abs().max().item()), name


class _TensorForward(torch.nn.Module):
    """A detector's ``forward(inputs, data_samples, mode='tensor')`` for fixed image metadata."""

    def __init__(self, model, data_samples):
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs):
        return self.model(inputs, self.data_samples, mode='tensor')


@pytest.mark.parametrize('variant', [
    pytest.param(dict(with_box_refine=False, as_two_stage=False), id='plain',
                 marks=pytest.mark.slow),
    pytest.param(dict(with_box_refine=True, as_two_stage=True), id='refine-twostage'),
])
def test_exported_deformable_detr_matches_eager(variant):
    """torch.export of the package's whole Deformable DETR ``forward`` (backbone to head
    outputs) for a fixed input size, with a padded image so that the padding masks are traced
    too: the program holds the registered op once per attention layer and reproduces the eager
    outputs."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    cfg = Config.fromfile(str(root / 'configs' / 'demo' /
                              'deformable-detr-refine-twostage_r18-c32_demo-coco.py'))
    cfg.model.update(variant, num_queries=30)
    cfg.model.encoder.num_layers = 1
    cfg.model.decoder.num_layers = 2
    register_all_modules(init_default_scope=False)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    samples = []
    for img_shape in (128, 120), (112, 128):
        sample = DetDataSample()
        sample.set_metainfo(dict(img_shape=img_shape, batch_input_shape=(128, 128),
                                 pad_shape=(128, 128), ori_shape=img_shape,
                                 scale_factor=(1.0, 1.0)))
        samples.append(sample)
    wrapper = _TensorForward(model, samples).eval()
    inputs = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        expected = wrapper(inputs)
        program = torch.export.export(wrapper, (inputs, ))
        out = program.module()(inputs)
    targets = [str(n.target) for n in program.graph.nodes if n.op == 'call_function']
    assert targets.count('crossformer_mm.ms_deform_attn.default') == 3  # 1 encoder, 2 decoder
    expected, out = torch.utils._pytree.tree_leaves(expected), torch.utils._pytree.tree_leaves(out)
    assert len(out) == len(expected) > 0
    for a, b in zip(out, expected):
        assert max_diff(a, b) <= 1e-4
