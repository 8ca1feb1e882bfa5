"""Tests of the multi-scale deformable attention op (crossformer_mm.ops.msda).

They mirror mmcv's ``tests/test_ops/test_ms_deformable_attn.py``: agreement with the reference
(float64 tight, float32 loose) and with mmcv's ``multi_scale_deformable_attn_pytorch``, gradcheck
at odd channel counts, plus the edge cases of the CPU kernel and the module's parity with mmcv's
``MultiScaleDeformableAttention``. The Triton kernel is tested through the interpreter in
``test_msda_triton.py``; real-GPU tests skip without CUDA.
"""
import warnings
from typing import List, Sequence, Tuple

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

from crossformer_mm import _ext
from crossformer_mm.ops import (MSDeformAttn, ms_deform_attn, ms_deform_attn_grid_sample,
                                ms_deform_attn_pytorch)
from crossformer_mm.ops.msda import backends as msda_backends

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

Shapes = Sequence[Tuple[int, int]]


def make_inputs(bs: int = 2,
                shapes: Shapes = ((6, 4), (3, 2)),
                num_heads: int = 2,
                head_dims: int = 8,
                num_queries: int = 5,
                num_points: int = 3,
                dtype: torch.dtype = torch.float64,
                spread: float = 0.1,
                device: str = 'cpu',
                seed: int = 0) -> List[torch.Tensor]:
    """Random op inputs; sampling locations in [-spread, 1 + spread]."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_levels = len(shapes)
    value = torch.rand(bs, int(areas.sum()), num_heads, head_dims, generator=gen, dtype=dtype)
    loc = torch.rand(bs, num_queries, num_heads, num_levels, num_points, 2, generator=gen,
                     dtype=dtype) * (1 + 2 * spread) - spread
    attn = torch.rand(bs, num_queries, num_heads, num_levels, num_points, generator=gen,
                      dtype=dtype) + 1e-5
    attn = attn / attn.sum((-1, -2), keepdim=True)
    tensors = [value, spatial_shapes, level_start_index, loc, attn]
    return [t.to(device) for t in tensors]


def mmcv_reference(value, spatial_shapes, level_start_index, loc, attn) -> torch.Tensor:
    return multi_scale_deformable_attn_pytorch(value, spatial_shapes, loc, attn)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


CASES = {
    'two-levels': dict(shapes=((6, 4), (3, 2))),
    'one-level': dict(shapes=((5, 7), )),
    'five-levels': dict(shapes=((8, 6), (4, 3), (2, 2), (1, 2), (1, 1))),
    'one-by-one-levels': dict(shapes=((1, 1), (1, 1), (2, 1))),
    'outside': dict(spread=0.6),
    'odd-channels': dict(head_dims=71, num_heads=3),
    'deformable-detr-like': dict(shapes=((10, 14), (5, 7), (3, 4), (2, 2)), num_heads=8,
                                 head_dims=32, num_points=4, num_queries=40, bs=1),
}


# ------------------------------------------------------------------------------------------
# Forward agreement
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('case', list(CASES), ids=list(CASES))
def test_forward_float64_matches_references(case):
    inputs = make_inputs(dtype=torch.float64, **CASES[case])
    out = ms_deform_attn(*inputs)
    assert out.shape == (inputs[0].shape[0], inputs[3].shape[1],
                         inputs[0].shape[2] * inputs[0].shape[3])
    assert out.dtype == torch.float64
    assert max_diff(out, ms_deform_attn_pytorch(*inputs)) <= 1e-10
    assert max_diff(out, mmcv_reference(*inputs)) <= 1e-10


@pytest.mark.parametrize('case', list(CASES), ids=list(CASES))
def test_forward_float32_matches_references(case):
    inputs = make_inputs(dtype=torch.float32, **CASES[case])
    out = ms_deform_attn(*inputs)
    assert out.dtype == torch.float32
    expected = ms_deform_attn_pytorch(*[t.double() if t.is_floating_point() else t
                                        for t in inputs])
    assert max_diff(out, expected) <= 1e-4
    assert max_diff(out, mmcv_reference(*inputs)) <= 1e-4


def test_reference_matches_mmcv_reference():
    """The gather-based reference, the grid_sample formulation and mmcv's grid_sample one
    agree, points outside included."""
    inputs = make_inputs(dtype=torch.float64, spread=0.5, head_dims=5, num_queries=30)
    assert max_diff(ms_deform_attn_pytorch(*inputs), mmcv_reference(*inputs)) <= 1e-12
    assert max_diff(ms_deform_attn_grid_sample(*inputs), mmcv_reference(*inputs)) <= 1e-12


@pytest.mark.parametrize('case', ['two-levels', 'five-levels', 'outside'])
def test_static_spatial_shapes_match_tensor_ones(case):
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float64, **CASES[case])
    expected = ms_deform_attn(value, shapes, starts, loc, attn)
    static = [tuple(hw) for hw in shapes.tolist()]
    for fn in (ms_deform_attn, ms_deform_attn_pytorch, ms_deform_attn_grid_sample):
        assert max_diff(fn(value, static, None, loc, attn), expected) <= 1e-12, fn.__name__
    assert max_diff(ms_deform_attn(value, tuple(static), starts, loc, attn), expected) == 0


def test_static_spatial_shapes_are_checked():
    value, shapes, starts, loc, attn = make_inputs()
    with pytest.raises(ValueError, match=r'sum\(H\*W\) = 31'):
        ms_deform_attn(value, [(6, 4), (7, 1)], None, loc, attn)
    with pytest.raises(ValueError, match='level_start_index must be'):
        ms_deform_attn(value, [(6, 4), (3, 2)], starts + 1, loc, attn)
    with pytest.raises(TypeError, match=r'\(H, W\) int pairs'):
        ms_deform_attn(value, [(6.0, 4), (3, 2)], None, loc, attn)
    with pytest.raises(TypeError, match='sequence of'):
        ms_deform_attn(value, 5, None, loc, attn)


def test_points_outside_read_zero():
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float64)
    # Far outside, NaN.
    for bad in (-5.0, 7.5, float('nan')):
        far = torch.full_like(loc, bad)
        out = ms_deform_attn(value, shapes, starts, far, attn)
        assert torch.equal(out, torch.zeros_like(out)), bad
    # Exactly on the zero-padding border of every level: pixel -1 or pixel W (resp. H).
    size_xy = shapes.flip(1).to(loc.dtype)  # (L, 2) as (W, H)
    for border in (-0.5 / size_xy, 1 + 0.5 / size_xy):
        on_border = border[None, None, None, :, None, :].expand_as(loc).contiguous()
        out = ms_deform_attn(value, shapes, starts, on_border, attn)
        assert torch.equal(out, torch.zeros_like(out))
    # Half a pixel outside the border still reads half of the edge pixel.
    loc = torch.zeros_like(loc)
    loc[..., 0] = -0.25 / 4  # x pixel = -0.75 on level 0 (W = 4): 25 % of column 0
    loc[..., 1] = 0.5 / 6    # y pixel = 0 on level 0 (H = 6): row 0
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert max_diff(out, ms_deform_attn_pytorch(value, shapes, starts, loc, attn)) <= 1e-12
    assert out.abs().sum() > 0


def test_bfloat16_and_half_on_cpu():
    inputs = make_inputs(dtype=torch.float32, head_dims=16, num_queries=20)
    expected = ms_deform_attn_pytorch(*inputs)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3)):
        value = inputs[0].to(dtype)
        out = ms_deform_attn(value, *inputs[1:])
        assert out.dtype == dtype
        assert max_diff(out, expected) <= tol
        # Locations and weights given in the low precision dtype are computed in float32.
        out2 = ms_deform_attn(value, inputs[1], inputs[2], inputs[3].to(dtype),
                              inputs[4].to(dtype))
        assert out2.dtype == dtype


# ------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('head_dims', [4, 30, 32, 64, 71, 1025])
def test_gradcheck(head_dims):
    # Full Jacobians for the narrow heads; random projections (fast mode) for the wide ones.
    big = head_dims > 30
    inputs = make_inputs(bs=1, shapes=((3, 2), (2, 2), (1, 1)),
                         num_heads=2 if head_dims <= 64 else 1, head_dims=head_dims,
                         num_queries=2 if big else 3, num_points=2, dtype=torch.float64,
                         spread=0.2, seed=head_dims)
    value, shapes, starts, loc, attn = inputs
    value.requires_grad_()
    loc.requires_grad_()
    attn.requires_grad_()
    assert torch.autograd.gradcheck(ms_deform_attn, (value, shapes, starts, loc, attn),
                                    eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=big)


@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize('case', ['two-levels', 'five-levels', 'outside', 'one-by-one-levels'])
def test_backward_matches_reference(case, dtype, tol):
    inputs = make_inputs(dtype=dtype, **CASES[case])
    leaves = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    ref_leaves = [t.detach().double().requires_grad_() if t.is_floating_point() else t
                  for t in inputs]
    out = ms_deform_attn(*leaves)
    expected = ms_deform_attn_pytorch(*ref_leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ours = torch.autograd.grad(out, [leaves[i] for i in (0, 3, 4)], grad)
    ref = torch.autograd.grad(expected, [ref_leaves[i] for i in (0, 3, 4)], grad.double())
    for name, a, b in zip(('value', 'sampling_locations', 'attention_weights'), ours, ref):
        assert a.dtype == dtype, name
        scale = max(1.0, b.abs().max().item())
        assert max_diff(a, b) <= tol * scale, name


def test_backward_deterministic_across_runs_and_threads():
    # Many queries over a small map: every value row receives contributions from many of them.
    inputs = make_inputs(bs=2, shapes=((9, 7), (4, 3)), num_heads=4, head_dims=32,
                         num_queries=300, num_points=4, dtype=torch.float32)
    value, shapes, starts, loc, attn = inputs
    grad_out = torch.randn(2, 300, 128, generator=torch.Generator().manual_seed(3))
    args = (value, shapes, starts, loc, attn, grad_out)
    first = _ext.ms_deform_attn_backward(*args)
    second = _ext.ms_deform_attn_backward(*args)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _ext.ms_deform_attn_backward(*args)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


# ------------------------------------------------------------------------------------------
# Edge cases and bad input
# ------------------------------------------------------------------------------------------


def test_zero_queries():
    value, shapes, starts, loc, attn = make_inputs(num_queries=0)
    value.requires_grad_()
    loc.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert out.shape == (2, 0, 16)
    out.sum().backward()
    assert torch.equal(value.grad, torch.zeros_like(value))
    assert loc.grad.shape == loc.shape


def test_zero_batch():
    value, shapes, starts, loc, attn = make_inputs(bs=0)
    value.requires_grad_()
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    assert out.shape == (0, 5, 16)
    out.sum().backward()
    assert value.grad.shape == value.shape


def test_non_contiguous_inputs():
    value, shapes, starts, loc, attn = make_inputs(dtype=torch.float64, num_heads=3)
    expected = ms_deform_attn_pytorch(value, shapes, starts, loc, attn)
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    loc_nc = loc.permute(5, 0, 1, 2, 3, 4).contiguous().permute(1, 2, 3, 4, 5, 0)
    attn_nc = attn.transpose(1, 2).contiguous().transpose(1, 2)
    shapes_nc = shapes.t().contiguous().t()
    starts_nc = torch.stack([starts, starts], 1)[:, 0]
    assert not any(t.is_contiguous() for t in (value_nc, loc_nc, attn_nc, shapes_nc, starts_nc))
    out = ms_deform_attn(value_nc, shapes_nc, starts_nc, loc_nc, attn_nc)
    assert max_diff(out, expected) <= 1e-12


def test_int32_level_tensors_accepted():
    value, shapes, starts, loc, attn = make_inputs()
    out = ms_deform_attn(value, shapes.int(), starts.int(), loc, attn)
    assert max_diff(out, ms_deform_attn_pytorch(value, shapes, starts, loc, attn)) <= 1e-12


def _bad_cases():
    value, shapes, starts, loc, attn = make_inputs()
    good = dict(value=value, spatial_shapes=shapes, level_start_index=starts,
                sampling_locations=loc, attention_weights=attn)
    cases = [
        ('value 3-d', dict(value=value[0]), ValueError, 'value must have shape'),
        ('value keys', dict(value=value[:, :-1]), ValueError, r'sum\(H\*W\) = 30'),
        ('value heads', dict(value=value[:, :, :1]), ValueError, 'sampling_locations'),
        ('integer value', dict(value=value.long()), TypeError, 'value must be a floating'),
        ('float index', dict(level_start_index=starts.float()), TypeError,
         'level_start_index must be an integer'),
        ('float shapes', dict(spatial_shapes=shapes.double()), TypeError,
         'spatial_shapes must be an integer'),
        ('shapes 1-d', dict(spatial_shapes=shapes.flatten()), ValueError,
         r'spatial_shapes must have shape \(num_levels, 2\)'),
        ('index length', dict(level_start_index=starts[:1]), ValueError,
         r'level_start_index must have shape \(2,\)'),
        ('index values', dict(level_start_index=starts + 1), ValueError,
         r'level_start_index must be \[0, 24\]'),
        ('shapes inconsistent', dict(spatial_shapes=shapes.flip(0)), ValueError,
         'level_start_index must be'),
        ('negative shape', dict(spatial_shapes=-shapes), ValueError, 'must be positive'),
        ('loc batch', dict(sampling_locations=loc[:1]), ValueError,
         r'sampling_locations must have shape .* = \(2, 5, 2, 2, 3, 2\)'),
        ('loc levels', dict(sampling_locations=loc[:, :, :, :1]), ValueError,
         'sampling_locations must have shape'),
        ('loc last dim', dict(sampling_locations=loc[..., :1]), ValueError,
         'sampling_locations must have shape'),
        ('loc 5-d', dict(sampling_locations=loc[..., 0]), ValueError,
         'sampling_locations must have shape'),
        ('attn shape', dict(attention_weights=attn[:, :, :, :, :2]), ValueError,
         r'attention_weights must have shape .* = \(2, 5, 2, 2, 3\)'),
        ('integer attn', dict(attention_weights=attn.long()), TypeError,
         'attention_weights must be a floating'),
        ('list value', dict(value=value.tolist()), TypeError, 'value must be a torch.Tensor'),
        ('meta device', dict(attention_weights=attn.to('meta')), ValueError,
         'same device'),
    ]
    return good, cases


@pytest.mark.parametrize('name', [c[0] for c in _bad_cases()[1]])
def test_bad_inputs_raise(name):
    good, cases = _bad_cases()
    _, override, error, match = next(c for c in cases if c[0] == name)
    kwargs = {**good, **override}
    with pytest.raises(error, match=match):
        ms_deform_attn(**kwargs)


def test_native_kernel_rejects_out_of_bounds_levels():
    """The C++ kernel checks the level layout itself too (no out-of-bounds reads)."""
    value, shapes, starts, loc, attn = make_inputs()
    with pytest.raises(RuntimeError, match='lies outside value'):
        _ext.ms_deform_attn_forward(value, shapes * 2, starts, loc, attn)
    # The op checks the layout before any kernel runs: the registered op (in compiled graphs
    # too), or the autograd Function on torch < 2.4.
    with pytest.raises(ValueError, match='level_start_index must be'):
        ms_deform_attn(value, shapes * 2, starts, loc, attn)


def test_fallback_to_reference_warns_once(monkeypatch):
    inputs = make_inputs()
    monkeypatch.setattr(msda_backends, '_EXT', None)
    monkeypatch.setattr(msda_backends, '_WARNED', set())
    with pytest.warns(RuntimeWarning, match='not built'):
        out = ms_deform_attn(*inputs)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        ms_deform_attn(*inputs)  # second call: no warning
    assert max_diff(out, ms_deform_attn_pytorch(*inputs)) <= 1e-12


@pytest.mark.needs_custom_op
def test_registered_op_is_used_on_cpu():
    from torch.utils.flop_counter import FlopCounterMode
    inputs = make_inputs()
    inputs[0].requires_grad_()
    with FlopCounterMode(display=False) as counter:
        out = ms_deform_attn(*inputs)
        out.sum().backward()
    counts = counter.get_flop_counts()['Global']
    forward = torch.ops.crossformer_mm.ms_deform_attn
    backward = torch.ops.crossformer_mm.ms_deform_attn_backward
    b, q, heads, dims, levels, points = 2, 5, 2, 8, 2, 3
    assert counts[forward] == 10 * b * q * heads * dims * levels * points
    assert counts[backward] == 2 * counts[forward]
    direct = torch.ops.crossformer_mm.ms_deform_attn(*[t.detach() for t in inputs], False)
    assert torch.equal(out, direct)


def test_deterministic_flag():
    """The CPU kernel is deterministic either way; True on a device without a native kernel is
    an error naming the option, not a silent fallback."""
    inputs = make_inputs()
    leaves = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    grads = []
    for det in (None, True, False):
        out = ms_deform_attn(*leaves, deterministic=det)
        grads.append(torch.autograd.grad(out.square().sum(), [leaves[0], leaves[3]]))
    for g in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(g, grads[0]))
    meta = [t.to('meta') for t in inputs]
    with pytest.raises(RuntimeError, match=r'deterministic=True.*meta'):
        ms_deform_attn(*meta, deterministic=True)
    module = MSDeformAttn(embed_dims=16, num_heads=2, num_levels=2, deterministic=True)
    assert module.deterministic is True


# ------------------------------------------------------------------------------------------
# Module parity with mmcv
# ------------------------------------------------------------------------------------------


def _module_inputs(bs=2, embed_dims=32, num_levels=2, num_query=7, ref_dims=2,
                   batch_first=False, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([(6, 5), (3, 3), (2, 1)][:num_levels], dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_value = int(areas.sum())
    if batch_first:
        query = torch.randn(bs, num_query, embed_dims, generator=gen, dtype=dtype)
        value = torch.randn(bs, num_value, embed_dims, generator=gen, dtype=dtype)
    else:
        query = torch.randn(num_query, bs, embed_dims, generator=gen, dtype=dtype)
        value = torch.randn(num_value, bs, embed_dims, generator=gen, dtype=dtype)
    ref = torch.rand(bs, num_query, num_levels, ref_dims, generator=gen, dtype=dtype)
    if ref_dims == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5
    mask = torch.zeros(bs, num_value, dtype=torch.bool)
    mask[:, -3:] = True
    return dict(query=query, value=value, reference_points=ref, spatial_shapes=shapes,
                level_start_index=starts, key_padding_mask=mask)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)


@pytest.mark.parametrize('ref_dims', [2, 4])
@pytest.mark.parametrize('batch_first', [False, True])
def test_module_matches_mmcv(ref_dims, batch_first):
    kwargs = dict(embed_dims=32, num_heads=4, num_levels=2, num_points=3, dropout=0.0,
                  batch_first=batch_first)
    torch.manual_seed(0)
    theirs = MultiScaleDeformableAttention(**kwargs).double()
    _randomise(theirs)
    ours = MSDeformAttn(**kwargs).double()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    inputs = _module_inputs(ref_dims=ref_dims, batch_first=batch_first, dtype=torch.float64)
    out = ours(**inputs)
    expected = theirs(**inputs)
    assert out.shape == expected.shape
    assert max_diff(out, expected) <= 1e-10
    # and back: mmcv loads our state dict
    theirs2 = MultiScaleDeformableAttention(**kwargs).double()
    theirs2.load_state_dict(ours.state_dict(), strict=True)
    assert max_diff(theirs2(**inputs), out) <= 1e-10


def test_module_init_matches_mmcv():
    torch.manual_seed(0)
    theirs = MultiScaleDeformableAttention(embed_dims=64, num_heads=8, num_levels=3,
                                           num_points=2)
    ours = MSDeformAttn(embed_dims=64, num_heads=8, num_levels=3, num_points=2)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name in ('sampling_offsets.weight', 'sampling_offsets.bias', 'attention_weights.weight',
                 'attention_weights.bias', 'value_proj.bias', 'output_proj.bias'):
        assert torch.equal(ours.state_dict()[name], theirs.state_dict()[name]), name
    bound = (6 / (64 + 64))**0.5  # Xavier uniform
    assert ours.value_proj.weight.abs().max() <= bound


def _copy_of(theirs: torch.nn.Module, **kwargs) -> MSDeformAttn:
    """An MSDeformAttn built with mmcv's arguments holding the mmcv module's weights (the state
    dicts share their key names), on its device and in its dtype."""
    ours = MSDeformAttn(**kwargs).to(theirs.value_proj.weight)
    ours.load_state_dict(theirs.state_dict())
    return ours


def test_module_backward_matches_mmcv():
    kwargs = dict(embed_dims=32, num_heads=4, num_levels=3, num_points=2, dropout=0.0)
    torch.manual_seed(0)
    theirs = MultiScaleDeformableAttention(**kwargs).double()
    _randomise(theirs)
    ours = _copy_of(theirs, **kwargs)
    assert all(a is not b for a, b in zip(ours.parameters(), theirs.parameters()))
    inputs = _module_inputs(num_levels=3, dtype=torch.float64)
    ours(**inputs).square().sum().backward()
    theirs(**inputs).square().sum().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert max_diff(a.grad, b.grad) <= 1e-9, name


def test_module_static_spatial_shapes():
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3, dropout=0.0)
    _randomise(module)
    inputs = _module_inputs()
    expected = module(**inputs)
    static = dict(inputs, spatial_shapes=((6, 5), (3, 3)), level_start_index=None)
    assert max_diff(module(**static), expected) <= 1e-6
    with pytest.raises(ValueError, match='level_start_index'):
        module(**dict(inputs, level_start_index=None))


def test_module_registered_without_clashing_with_mmcv():
    from mmdet.registry import MODELS
    from mmengine.registry import MODELS as ROOT_MODELS
    module = MODELS.build(dict(type='MSDeformAttn', embed_dims=32, num_heads=4, num_levels=2))
    assert isinstance(module, MSDeformAttn)
    assert ROOT_MODELS.get('MultiScaleDeformableAttention') is MultiScaleDeformableAttention


def test_module_cpu_bfloat16_autocast():
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3, dropout=0.0)
    _randomise(module)
    inputs = _module_inputs()
    expected = module(**inputs)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = module(**inputs)
    assert out.shape == expected.shape
    assert max_diff(out, expected) <= 0.1 * expected.abs().max().item()
    out.float().sum().backward()
    assert module.value_proj.weight.grad is not None


def test_module_rejects_bad_config():
    with pytest.raises(ValueError, match='divisible'):
        MSDeformAttn(embed_dims=30, num_heads=4)


# ------------------------------------------------------------------------------------------
# CUDA (Triton kernel on a real GPU)
# ------------------------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-4), (torch.float16, 5e-3),
                                       (torch.bfloat16, 3e-2)])
def test_cuda_triton_matches_reference(dtype, tol):
    inputs = make_inputs(dtype=torch.float32, device='cuda', **CASES['deformable-detr-like'])
    leaves = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    leaves[0] = inputs[0].to(dtype).requires_grad_()
    out = ms_deform_attn(*leaves)
    assert out.dtype == dtype
    ref_leaves = [t.detach().double().requires_grad_() if t.is_floating_point() else t
                  for t in leaves]
    expected = ms_deform_attn_pytorch(*ref_leaves)
    assert max_diff(out, expected) <= tol
    grad = torch.randn_like(expected)
    ours = torch.autograd.grad(out, [leaves[i] for i in (0, 3, 4)], grad.to(dtype))
    ref = torch.autograd.grad(expected, [ref_leaves[i] for i in (0, 3, 4)], grad)
    for a, b in zip(ours, ref):
        assert max_diff(a, b) <= tol * max(1.0, b.abs().max().item()) * 10


@requires_cuda
def test_cuda_module_matches_mmcv_cuda_kernel():
    kwargs = dict(embed_dims=64, num_heads=8, num_levels=2, num_points=4, dropout=0.0)
    torch.manual_seed(0)
    theirs = MultiScaleDeformableAttention(**kwargs).cuda()
    _randomise(theirs)
    ours = _copy_of(theirs, **kwargs)
    inputs = {k: v.cuda() for k, v in _module_inputs(embed_dims=64).items()}
    assert max_diff(ours(**inputs), theirs(**inputs)) <= 1e-4
    with torch.autocast('cuda', dtype=torch.float16):
        out = ours(**inputs)
    assert max_diff(out, theirs(**inputs)) <= 5e-2
