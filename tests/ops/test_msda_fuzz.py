"""Property-based tests of the MSDA op's inputs (crossformer_mm.ops.msda), with hypothesis.

Hypothesis draws the structure of each case — levels and their sizes (1x1 included), batch size,
queries, heads, channels and points (zero included), the dtype of every tensor, its memory layout
(transposed, strided, expanded with stride 0, overlapping ``as_strided`` views), how far the
sampling locations reach outside ``[0, 1]`` and which inputs carry NaN/inf — and a seed for the
values. Each case either

* matches the gather-based reference :func:`ms_deform_attn_pytorch` evaluated in float64 on the
  same values, within the dtype's tolerance, with NaN and inf in the same places, for the output
  and the gradients of every float input; or
* raises a ``ValueError``/``TypeError`` whose message names the faulty argument.

The module :class:`MSDeformAttn` is fuzzed against mmcv's ``MultiScaleDeformableAttention`` with
the same weights. Index arithmetic beyond 32 bits is checked on shapes that are never
materialised (stride-0 views, untouched pages of an uninitialised tensor).

The default run draws a bounded, derandomised set of cases; ``-m slow`` loads the ``slow``
hypothesis profile (see tests/conftest.py) with many more.
"""
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

from crossformer_mm.ops import MSDeformAttn, ms_deform_attn, ms_deform_attn_pytorch
from crossformer_mm.ops.msda import check_ms_deform_attn_inputs
from crossformer_mm.ops.msda.reference import _check_gpu_index_range

ROOT = Path(__file__).resolve().parents[2]

FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
#: Relative tolerance per dtype (applied to the largest reference magnitude as well).
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)
LAYOUTS = ('contiguous', 'transposed', 'strided', 'expanded', 'overlapping')
SPECIALS = ('nan', 'inf', '-inf', 'far')

ViewFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- builders
def contiguous_strides(shape: Tuple[int, ...]) -> List[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return strides[::-1]


def leaf_shape_and_view(shape: Tuple[int, ...], layout: str,
                        expand_dim: int) -> Tuple[Tuple[int, ...], ViewFn]:
    """The shape of the tensor to allocate and the view that turns it into ``shape`` with the
    requested memory layout."""
    n = len(shape)
    if layout == 'transposed':
        order = list(range(n))[::-1]
        return tuple(shape[i] for i in order), lambda t: t.permute(*order)
    if layout == 'strided':
        return shape[:-1] + (2 * shape[-1], ), lambda t: t[..., ::2]
    if layout == 'expanded':
        d = expand_dim % n
        return shape[:d] + (1, ) + shape[d + 1:], lambda t: t.expand(*shape)
    if layout == 'overlapping':
        strides = contiguous_strides(shape)
        d = expand_dim % max(n - 1, 1)  # halve one outer stride: neighbouring rows share memory
        strides[d] = max(1, strides[d] // 2)
        storage = 0 if 0 in shape else 1 + sum((s - 1) * st_ for s, st_ in zip(shape, strides))
        return (storage, ), lambda t: t.as_strided(shape, strides)
    return shape, lambda t: t


def make_float(shape: Tuple[int, ...], dtype: torch.dtype, layout: str, expand_dim: int,
               low: float, high: float, specials: Tuple[str, ...], gen: torch.Generator,
               requires_grad: bool) -> Tuple[torch.Tensor, ViewFn]:
    """A leaf tensor (uniform in ``[low, high]``, about 15 % of it replaced by each special
    value) and the view that gives the op input."""
    leaf_shape, view = leaf_shape_and_view(shape, layout, expand_dim)
    data = torch.rand(leaf_shape, generator=gen, dtype=torch.float64) * (high - low) + low
    far = 1e4 if dtype == torch.float16 else 1e30
    for special in specials:
        where = torch.rand(leaf_shape, generator=gen) < 0.15
        if special == 'far':
            sign = torch.where(torch.rand(leaf_shape, generator=gen) < 0.5, -1.0, 1.0)
            data = torch.where(where, sign.double() * far, data)
        else:
            data = data.masked_fill(where, float(special))
    leaf = data.to(dtype).requires_grad_(requires_grad)
    return leaf, view


def make_index(values: List[int], dtype: torch.dtype, two_d: bool, layout: str) -> torch.Tensor:
    t = torch.tensor(values, dtype=dtype)
    if layout == 'contiguous':
        return t
    if two_d:
        return t.t().contiguous().t()  # column-major (L, 2)
    return torch.stack([t, t], 1)[:, 0]  # stride 2


def level_layout(shapes: List[Tuple[int, int]]) -> Tuple[List[int], int]:
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    return starts, starts[-1] + shapes[-1][0] * shapes[-1][1]


# ---------------------------------------------------------------- strategies
@st.composite
def op_cases(draw) -> dict:
    num_levels = draw(st.integers(1, 4))
    case = dict(
        shapes=draw(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)),
                             min_size=num_levels, max_size=num_levels)),
        bs=draw(st.integers(0, 3)),
        num_queries=draw(st.integers(0, 6)),
        num_heads=draw(st.integers(0, 3)),
        head_dims=draw(st.sampled_from((0, 1, 2, 3, 5, 8, 16, 31, 32, 33, 64, 65))),
        num_points=draw(st.integers(0, 3)),
        dtypes=draw(st.tuples(*[st.sampled_from(FLOATS)] * 3)),
        index_dtype=draw(st.sampled_from(INDEX_DTYPES)),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        index_layout=draw(st.sampled_from(('contiguous', 'strided'))),
        expand_dims=draw(st.tuples(*[st.integers(0, 5)] * 3)),
        spread=draw(st.sampled_from((0.0, 0.1, 0.6, 3.0))),
        specials=tuple(
            tuple(sorted(draw(st.sets(st.sampled_from(options), max_size=2))))
            for options in (('nan', 'inf', '-inf'), SPECIALS, ('nan', 'inf'))),
        grads=draw(st.tuples(st.booleans(), st.booleans(), st.booleans())),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    # Special values are drawn only in a quarter of the cases, so most cases check finite values.
    if not draw(st.integers(0, 3)) == 0:
        case['specials'] = ((), (), ())
    return case


def build_case(case: dict) -> Tuple[list, list, list]:
    """The op inputs, the float leaves they are views of, and the view functions."""
    gen = torch.Generator().manual_seed(case['seed'])
    shapes = case['shapes']
    starts, num_keys = level_layout(shapes)
    bs, nq, nh, hd, npt = (case[k] for k in ('bs', 'num_queries', 'num_heads', 'head_dims',
                                             'num_points'))
    nl = len(shapes)
    spread = case['spread']
    geometry = [((bs, num_keys, nh, hd), -2.0, 2.0), ((bs, nq, nh, nl, npt, 2), -spread,
                                                       1.0 + spread),
                ((bs, nq, nh, nl, npt), 0.0, 1.0)]
    leaves, views = [], []
    for i, (shape, low, high) in enumerate(geometry):
        leaf, view = make_float(shape, case['dtypes'][i], case['layouts'][i],
                                case['expand_dims'][i], low, high, case['specials'][i], gen,
                                case['grads'][i])
        leaves.append(leaf)
        views.append(view)
    spatial_shapes = make_index([list(s) for s in shapes], case['index_dtype'], True,
                                case['index_layout'])
    level_start_index = make_index(starts, case['index_dtype'], False, case['index_layout'])
    inputs = [views[0](leaves[0]), spatial_shapes, level_start_index, views[1](leaves[1]),
              views[2](leaves[2])]
    return inputs, leaves, views


# ---------------------------------------------------------------- comparison
def assert_matches(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str,
                   ignore: Optional[torch.Tensor] = None) -> None:
    """``actual`` equals the float64 ``expected`` within ``tol`` (relative, and relative to the
    largest finite magnitude), and is non-finite exactly where ``expected`` is.

    Where an input holds inf, whether a sum comes out as inf or NaN depends on the order of the
    terms, so only the places of non-finite results are compared, not their kind.
    """
    assert actual.shape == expected.shape, what
    actual = actual.detach().double()
    expected = expected.detach().double()
    if ignore is not None:
        actual = actual.masked_fill(ignore, 0.0)
        expected = expected.masked_fill(ignore, 0.0)
    bad = ~torch.isfinite(expected)
    differ = bad != ~torch.isfinite(actual)
    if differ.any():
        i = tuple(differ.nonzero()[0].tolist())
        raise AssertionError(f'{what}: {int(differ.sum())} elements are finite in one and not '
                             f'the other, e.g. at {i}: {actual[i].item()} vs '
                             f'{expected[i].item()}')
    actual, expected = actual.masked_fill(bad, 0.0), expected.masked_fill(bad, 0.0)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale,
                               msg=lambda m: f'{what}: {m}')


def near_discontinuity(loc: torch.Tensor, shapes: List[Tuple[int, int]],
                       eps: float) -> torch.Tensor:
    """Points whose pixel coordinate lies within ``eps`` of an integer: there the bilinear
    footprint switches cells (or crosses the border), the gradient with respect to the location
    jumps, and rounding in a lower precision may legitimately pick either side."""
    sizes = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    pixel = loc.detach().double() * sizes[:, None, :] - 0.5  # (..., L, P, 2)
    near = (pixel - pixel.round()).abs() <= eps * pixel.abs().clamp_min(1.0)
    return near.any(-1, keepdim=True).expand_as(pixel)


def leaf_mask(view: ViewFn, leaf: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The elements of ``leaf`` that feed any masked element of ``view(leaf)``."""
    probe = torch.zeros(leaf.shape, dtype=torch.float64, requires_grad=True)
    view(probe).backward(mask.double())
    return probe.grad > 0


#: Each property runs under the default hypothesis profile, and under the slow one with -m slow.
PROFILES = [pytest.param('default', id='default'),
            pytest.param('slow', id='slow', marks=[pytest.mark.slow, pytest.mark.timeout(3600)])]


def run_property(profile: str, check: Callable, *strategies) -> None:
    """Runs ``check`` on cases drawn from ``strategies`` with the named settings profile
    (registered in tests/conftest.py)."""
    settings(settings.get_profile(profile))(given(*strategies)(check))()


#: Cases run by the property tests in this session (reported at the end of the run).
COUNTS: Dict[str, int] = {}


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope='module', autouse=True)
def report_counts(report_line):
    yield
    if COUNTS:
        report_line('msda fuzz, hypothesis cases run (shrinking included): ' +
                    ', '.join(f'{k}={v}' for k, v in sorted(COUNTS.items())))


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize('profile', PROFILES)
def test_op_matches_reference(profile: str) -> None:
    run_property(profile, check_op_matches_reference, op_cases())


def check_op_matches_reference(case: dict) -> None:
    note(repr(case))
    count('op')
    inputs, leaves, views = build_case(case)
    value, loc = inputs[0], inputs[3]
    out = ms_deform_attn(*inputs)
    assert out.dtype == value.dtype
    assert out.shape == (value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])

    ref_leaves = [leaf.detach().double().requires_grad_(leaf.requires_grad) for leaf in leaves]
    ref_inputs = [views[0](ref_leaves[0]), inputs[1], inputs[2], views[1](ref_leaves[1]),
                  views[2](ref_leaves[2])]
    expected = ms_deform_attn_pytorch(*ref_inputs)
    assert_matches(out, expected, TOL[value.dtype], 'output')

    wanted = [i for i, leaf in enumerate(leaves) if leaf.requires_grad]
    if not wanted:
        return
    gen = torch.Generator().manual_seed(case['seed'] + 1)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    ours = torch.autograd.grad(out, [leaves[i] for i in wanted], grad_out, allow_unused=True)
    if out.numel() == 0:  # nothing depends on the inputs: zero gradients (autograd on the
        ref = [None] * len(wanted)  # reference would give 0 * NaN = NaN for NaN weights)
    else:
        ref = torch.autograd.grad(expected, [ref_leaves[i] for i in wanted], grad_out.double(),
                                  allow_unused=True)
    eps = 1e-9 if value.dtype == torch.float64 else 1e-5
    names = ('value', 'sampling_locations', 'attention_weights')
    for i, a, b in zip(wanted, ours, ref):
        a = torch.zeros_like(leaves[i]) if a is None else a
        b = torch.zeros_like(ref_leaves[i]) if b is None else b
        assert a.dtype == leaves[i].dtype, names[i]
        ignore = None
        if i == 1:
            near = near_discontinuity(ref_inputs[3], case['shapes'], eps)
            ignore = leaf_mask(views[1], ref_leaves[1], near)
        tol = max(TOL[value.dtype], TOL[leaves[i].dtype])
        assert_matches(a, b, tol, f'grad of {names[i]}', ignore)


#: Ways to break one argument of a valid call: (name, argument it concerns, how).
DEFECTS = {
    'value-3d': ('value', lambda a: a.update(value=a['value'][0])),
    'value-5d': ('value', lambda a: a.update(value=a['value'][..., None])),
    'value-keys': ('value', lambda a: a.update(value=torch.cat([a['value']] * 2, 1))),
    'value-heads': ('value', lambda a: a.update(value=torch.cat([a['value']] * 2, 2))),
    'value-int': ('value', lambda a: a.update(value=a['value'].long())),
    'value-bool': ('value', lambda a: a.update(value=a['value'] > 0)),
    'value-complex': ('value', lambda a: a.update(value=a['value'].double().to(torch.complex64))),
    'value-float8': ('value', lambda a: a.update(value=a['value'].float().to(
        torch.float8_e4m3fn))),
    'value-sparse': ('value', lambda a: a.update(value=a['value'].to_sparse())),
    'value-list': ('value', lambda a: a.update(value=a['value'].tolist())),
    'value-none': ('value', lambda a: a.update(value=None)),
    'shapes-float': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=a['spatial_shapes'].double())),
    'shapes-bool': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=a['spatial_shapes'] > 0)),
    'shapes-1d': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=a['spatial_shapes'].flatten())),
    'shapes-3-columns': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=torch.cat([a['spatial_shapes'], a['spatial_shapes'][:, :1]], 1))),
    'shapes-no-level': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=a['spatial_shapes'][:0], level_start_index=a['level_start_index'][:0])),
    'shapes-zero': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=a['spatial_shapes'] * 0)),
    'shapes-negative': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=-a['spatial_shapes'])),
    'shapes-bigger': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=a['spatial_shapes'] + 1)),
    'shapes-sparse': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=a['spatial_shapes'].to_sparse())),
    'starts-float': ('level_start_index', lambda a: a.update(
        level_start_index=a['level_start_index'].float())),
    'starts-length': ('level_start_index', lambda a: a.update(
        level_start_index=a['level_start_index'][:-1])),
    'starts-shifted': ('level_start_index', lambda a: a.update(
        level_start_index=a['level_start_index'] + 1)),
    'starts-2d': ('level_start_index', lambda a: a.update(
        level_start_index=a['level_start_index'][None])),
    'loc-5d': ('sampling_locations', lambda a: a.update(
        sampling_locations=a['sampling_locations'][..., 0])),
    'loc-batch': ('sampling_locations', lambda a: a.update(
        sampling_locations=torch.cat([a['sampling_locations']] * 2, 0))),
    'loc-heads': ('sampling_locations', lambda a: a.update(
        sampling_locations=torch.cat([a['sampling_locations']] * 2, 2))),
    'loc-levels': ('sampling_locations', lambda a: a.update(
        sampling_locations=torch.cat([a['sampling_locations']] * 2, 3))),
    'loc-xyz': ('sampling_locations', lambda a: a.update(
        sampling_locations=torch.cat([a['sampling_locations'],
                                      a['sampling_locations'][..., :1]], -1))),
    'loc-int': ('sampling_locations', lambda a: a.update(
        sampling_locations=a['sampling_locations'].long())),
    'loc-numpy': ('sampling_locations', lambda a: a.update(
        sampling_locations=a['sampling_locations'].double().numpy())),
    'attn-points': ('attention_weights', lambda a: a.update(
        attention_weights=torch.cat([a['attention_weights']] * 2, -1))),
    'attn-queries': ('attention_weights', lambda a: a.update(
        attention_weights=torch.cat([a['attention_weights']] * 2, 1))),
    'attn-6d': ('attention_weights', lambda a: a.update(
        attention_weights=a['attention_weights'][..., None])),
    'attn-bool': ('attention_weights', lambda a: a.update(
        attention_weights=a['attention_weights'] > 0.5)),
    'attn-meta': ('attention_weights', lambda a: a.update(
        attention_weights=a['attention_weights'].to('meta'))),
    'attn-complex': ('attention_weights', lambda a: a.update(
        attention_weights=a['attention_weights'].double().to(torch.complex128))),
}


@st.composite
def defect_cases(draw) -> Tuple[dict, str]:
    num_levels = draw(st.integers(1, 3))
    case = dict(
        shapes=draw(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)),
                             min_size=num_levels, max_size=num_levels)),
        bs=draw(st.integers(1, 2)), num_queries=draw(st.integers(1, 3)),
        num_heads=draw(st.integers(1, 2)), head_dims=draw(st.integers(1, 4)),
        num_points=draw(st.integers(1, 2)), dtypes=draw(st.tuples(*[st.sampled_from(FLOATS)] * 3)),
        index_dtype=draw(st.sampled_from(INDEX_DTYPES)),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        index_layout=draw(st.sampled_from(('contiguous', 'strided'))),
        expand_dims=(0, 0, 0), spread=0.1, specials=((), (), ()), grads=(False, ) * 3,
        seed=draw(st.integers(0, 2**31 - 1)))
    return case, draw(st.sampled_from(sorted(DEFECTS)))


@pytest.mark.parametrize('profile', PROFILES)
def test_bad_input_raises_error_naming_the_argument(profile: str) -> None:
    run_property(profile, check_bad_input_raises_error_naming_the_argument, defect_cases())


def check_bad_input_raises_error_naming_the_argument(drawn: Tuple[dict, str]) -> None:
    case, defect = drawn
    note(f'{defect}: {case!r}')
    count('bad-input')
    inputs, _, _ = build_case(case)
    names = ('value', 'spatial_shapes', 'level_start_index', 'sampling_locations',
             'attention_weights')
    kwargs = dict(zip(names, inputs))
    argument, apply = DEFECTS[defect]
    apply(kwargs)
    with pytest.raises((ValueError, TypeError)) as info:
        ms_deform_attn(**kwargs)
    assert argument in str(info.value), (defect, str(info.value))


# ---------------------------------------------------------------- the module
@st.composite
def module_cases(draw) -> dict:
    num_levels = draw(st.integers(1, 3))
    num_heads = draw(st.integers(1, 4))
    shapes = draw(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)),
                           min_size=num_levels, max_size=num_levels))
    return dict(
        shapes=shapes, num_heads=num_heads,
        embed_dims=num_heads * draw(st.integers(1, 6)),
        num_points=draw(st.integers(1, 3)), bs=draw(st.integers(1, 2)),
        num_query=draw(st.integers(1, 6)), batch_first=draw(st.booleans()),
        ref_dims=draw(st.sampled_from((2, 4))), value_is_query=draw(st.booleans()),
        with_mask=draw(st.booleans()), with_pos=draw(st.booleans()),
        dtype=draw(st.sampled_from((torch.float64, torch.float32))),
        offset_scale=draw(st.sampled_from((0.1, 1.0, 10.0))),
        seed=draw(st.integers(0, 2**31 - 1)))


def module_inputs(case: dict, gen: torch.Generator) -> dict:
    dtype, bs, dims = case['dtype'], case['bs'], case['embed_dims']
    shapes = torch.tensor(case['shapes'], dtype=torch.int64)
    starts, num_value = level_layout(case['shapes'])
    num_query = num_value if case['value_is_query'] else case['num_query']

    def seq(n: int) -> torch.Tensor:
        shape = (bs, n, dims) if case['batch_first'] else (n, bs, dims)
        return torch.randn(shape, generator=gen, dtype=dtype)

    inputs = dict(query=seq(num_query), spatial_shapes=shapes,
                  level_start_index=torch.tensor(starts, dtype=torch.int64))
    if not case['value_is_query']:
        inputs['value'] = seq(num_value)
    ref = torch.rand(bs, num_query, len(case['shapes']), case['ref_dims'], generator=gen,
                     dtype=dtype)
    if case['ref_dims'] == 4:
        ref[..., 2:] *= 0.5
    inputs['reference_points'] = ref
    if case['with_mask']:
        inputs['key_padding_mask'] = torch.rand(bs, num_value, generator=gen) < 0.3
    if case['with_pos']:
        inputs['query_pos'] = seq(num_query)
    return inputs


@pytest.mark.parametrize('profile', PROFILES)
def test_module_matches_mmcv(profile: str) -> None:
    run_property(profile, check_module_matches_mmcv, module_cases())


def check_module_matches_mmcv(case: dict) -> None:
    from mmcv.ops import MultiScaleDeformableAttention
    note(repr(case))
    count('module')
    gen = torch.Generator().manual_seed(case['seed'])
    kwargs = dict(embed_dims=case['embed_dims'], num_heads=case['num_heads'],
                  num_levels=len(case['shapes']), num_points=case['num_points'], dropout=0.0,
                  batch_first=case['batch_first'])
    theirs = MultiScaleDeformableAttention(**kwargs).to(case['dtype'])
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            scale = case['offset_scale'] if name.startswith('sampling_offsets') else 0.3
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    ours = MSDeformAttn(**kwargs).to(case['dtype'])
    ours.load_state_dict(theirs.state_dict(), strict=True)
    inputs = module_inputs(case, gen)
    query_ours = inputs['query'].clone().requires_grad_()
    query_theirs = inputs['query'].clone().requires_grad_()
    out = ours(**dict(inputs, query=query_ours))
    expected = theirs(**dict(inputs, query=query_theirs))
    tol = TOL[case['dtype']]
    assert out.dtype == expected.dtype
    assert_matches(out, expected, tol, 'output')
    grad = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    out.backward(grad)
    expected.backward(grad)
    assert_matches(query_ours.grad, query_theirs.grad, 10 * tol, 'grad of query')
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        # Offsets are differentiated through the sampling positions: allow for points that
        # fall within rounding of a cell edge in float32.
        assert_matches(a.grad, b.grad, 10 * tol if case['dtype'] == torch.float64 else 1e-2,
                       f'grad of {name}')


#: Ways to break one argument of the module's forward: (argument it concerns, how).
MODULE_DEFECTS = {
    'query-width': ('query', lambda a: a.update(query=torch.cat([a['query']] * 2, -1))),
    'query-2d': ('query', lambda a: a.update(query=a['query'][0])),
    'value-width': ('value', lambda a: a.update(value=a['value'][..., :-1])),
    'value-keys': ('value', lambda a: a.update(value=torch.cat([a['value']] * 2, 0))),
    'value-batch': ('value', lambda a: a.update(value=torch.cat([a['value']] * 2, 1))),
    'ref-dims-3': ('reference_points', lambda a: a.update(
        reference_points=a['reference_points'][..., :1].expand(-1, -1, -1, 3))),
    'ref-levels': ('reference_points', lambda a: a.update(
        reference_points=torch.cat([a['reference_points']] * 2, 2))),
    'ref-queries': ('reference_points', lambda a: a.update(
        reference_points=torch.cat([a['reference_points']] * 2, 1))),
    'shapes-levels': ('spatial_shapes', lambda a: a.update(
        spatial_shapes=torch.cat([a['spatial_shapes']] * 2),
        level_start_index=torch.arange(2 * len(a['spatial_shapes'])))),
    'mask-keys': ('key_padding_mask', lambda a: a.update(
        key_padding_mask=a['key_padding_mask'][:, :-1])),
    'mask-float': ('key_padding_mask', lambda a: a.update(
        key_padding_mask=a['key_padding_mask'].float())),
    'missing-shapes': ('spatial_shapes', lambda a: a.pop('spatial_shapes')),
    'missing-ref': ('reference_points', lambda a: a.pop('reference_points')),
}


@pytest.mark.parametrize('profile', PROFILES)
def test_module_bad_input_raises_error_naming_the_argument(profile: str) -> None:
    run_property(profile, check_module_bad_input_raises_error_naming_the_argument, module_cases(),
                 st.sampled_from(sorted(MODULE_DEFECTS)))


def check_module_bad_input_raises_error_naming_the_argument(case: dict, defect: str) -> None:
    note(f'{defect}: {case!r}')
    count('module-bad-input')
    case = dict(case, value_is_query=False, with_mask=True, batch_first=True)
    gen = torch.Generator().manual_seed(case['seed'])
    module = MSDeformAttn(embed_dims=case['embed_dims'], num_heads=case['num_heads'],
                          num_levels=len(case['shapes']), num_points=case['num_points'],
                          dropout=0.0, batch_first=True).to(case['dtype'])
    inputs = module_inputs(case, gen)
    argument, apply = MODULE_DEFECTS[defect]
    apply(inputs)
    with pytest.raises((ValueError, TypeError)) as info:
        module(**inputs)
    assert argument in str(info.value), (defect, str(info.value))


@pytest.mark.parametrize('profile', PROFILES)
def test_module_constructor_validates_its_arguments(profile: str) -> None:
    run_property(profile, check_module_constructor_validates_its_arguments, st.integers(-2, 9),
                 st.integers(-2, 5), st.integers(-1, 4), st.integers(-1, 4),
                 st.sampled_from((1.0, 0.5, 1.3)))


def check_module_constructor_validates_its_arguments(embed_dims: int, num_heads: int,
                                                    num_levels: int, num_points: int,
                                                    value_proj_ratio: float) -> None:
    count('module-init')
    valid = (embed_dims > 0 and num_heads > 0 and num_levels > 0 and num_points > 0
             and embed_dims % num_heads == 0
             and int(embed_dims * value_proj_ratio) % num_heads == 0
             and int(embed_dims * value_proj_ratio) > 0)
    kwargs = dict(embed_dims=embed_dims, num_heads=num_heads, num_levels=num_levels,
                  num_points=num_points, value_proj_ratio=value_proj_ratio)
    if valid:
        module = MSDeformAttn(**kwargs)
        assert module.sampling_offsets.out_features == num_heads * num_levels * num_points * 2
    else:
        with pytest.raises(ValueError, match='embed_dims|num_heads|num_levels|num_points|'
                                             'value_proj_ratio'):
            MSDeformAttn(**kwargs)


# ---------------------------------------------------------------- beyond 32 bits
def test_level_sizes_are_summed_exactly_beyond_int32() -> None:
    """Level sizes whose products wrap in 32 (or 64) bits are still compared exactly: an int32
    (65536, 65536) level has 2**32 keys, not 0. Nothing is allocated (stride-0 views)."""
    loc = torch.zeros(1, 1, 1, 1, 1, 2)
    attn = torch.zeros(1, 1, 1, 1, 1)
    for shapes, keys in (([[65536, 65536]], 0), ([[2**32, 2**32]], 0), ([[2**32, 2**32]], 4)):
        value = torch.zeros(1, 1, 1, 1).expand(1, keys, 1, 1)
        spatial = torch.tensor(shapes, dtype=torch.int32 if shapes[0][0] < 2**31 else torch.int64)
        with pytest.raises(ValueError, match=rf'sum\(H\*W\) = {shapes[0][0] ** 2} keys'):
            ms_deform_attn(value, spatial, torch.zeros(1, dtype=torch.int64), loc, attn)
    # 2**32 + 1 keys, validated without materialising them.
    value = torch.zeros(1, 1, 1, 1).expand(1, 2**32 + 1, 1, 1)
    spatial = torch.tensor([[65536, 65536], [1, 1]], dtype=torch.int32)
    loc2 = torch.zeros(1, 1, 1, 2, 1, 2)
    attn2 = torch.zeros(1, 1, 1, 2, 1)
    starts = torch.tensor([0, 2**32])
    assert check_ms_deform_attn_inputs(value, spatial, starts, loc2, attn2) == [(65536, 65536),
                                                                               (1, 1)]
    # An int32 start index cannot hold 2**32: the wrapped value is refused.
    with pytest.raises(ValueError, match=r'level_start_index must be \[0, 4294967296\]'):
        check_ms_deform_attn_inputs(value, spatial, starts.int(), loc2, attn2)


def test_gpu_kernel_index_range_is_refused_beyond_int32() -> None:
    """The Triton kernel computes batch*keys and batch*queries*heads offsets in 32 bits and
    launches batch*heads programs on a grid axis limited to 65535: larger CUDA calls are refused
    up front with a clear error (checked on the shapes alone, no GPU needed)."""
    check = _check_gpu_index_range
    check(bs=2, num_keys=2**30 - 1, num_heads=8, num_queries=2**26 - 1)  # fits
    with pytest.raises(ValueError, match='value'):
        check(bs=2, num_keys=2**30, num_heads=8, num_queries=10)
    with pytest.raises(ValueError, match='sampling_locations'):
        check(bs=4, num_keys=100, num_heads=8, num_queries=2**26)
    with pytest.raises(ValueError, match='65535'):
        check(bs=8192, num_keys=100, num_heads=8, num_queries=10)


def test_native_kernel_offsets_beyond_int32() -> None:
    """The CPU kernel reads keys past index 2**31 (and a level that starts past it) correctly.

    The value tensor has 2**31 + ~33k keys (4.3 GB of bfloat16) but is never materialised: it is
    allocated uninitialised and only the rows the points sample are written, so only a few pages
    are touched. Runs in a subprocess, which checks its own resident memory and cannot take the
    test session down with it.
    """
    code = textwrap.dedent('''
        import torch
        from crossformer_mm.ops import ms_deform_attn

        def rss_mib():
            for line in open('/proc/self/status'):
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024

        torch.use_deterministic_algorithms(False)  # else empty() fills every page
        H, W = 32768, 65537  # H * W > 2**31
        shapes = torch.tensor([[1, 1], [H, W], [2, 2]])
        starts = torch.tensor([0, 1, 1 + H * W])
        num_keys = 1 + H * W + 4
        assert num_keys > 2**31 and int(starts[2]) > 2**31
        before = rss_mib()
        value = torch.empty(1, num_keys, 1, 1, dtype=torch.bfloat16)
        value[0, 0] = 0.5
        corners = [(H - 2) * W + W - 2, (H - 2) * W + W - 1, (H - 1) * W + W - 2,
                   (H - 1) * W + W - 1]
        for key, v in zip(corners, (1.0, 2.0, 4.0, 8.0)):
            value[0, 1 + key] = v
        for i, v in enumerate((16.0, 32.0, 64.0, 128.0)):
            value[0, 1 + H * W + i] = v
        loc = torch.full((1, 3, 1, 3, 1, 2), -10.0)
        loc[0, 0, 0, 0, 0] = torch.tensor([0.5, 0.5])
        loc[0, 1, 0, 1, 0] = torch.tensor([(W - 1.25) / W, (H - 0.75) / H])
        loc[0, 2, 0, 2, 0] = torch.tensor([0.375, 0.625])
        attn = torch.ones(1, 3, 1, 3, 1)
        with torch.no_grad():
            out = ms_deform_attn(value, shapes, starts, loc, attn)
        x = float(loc[0, 1, 0, 1, 0, 0]) * W - 0.5
        y = float(loc[0, 1, 0, 1, 0, 1]) * H - 0.5
        fx, fy = x - (W - 2), y - (H - 2)
        far = (1 - fy) * (1 - fx) * 1 + (1 - fy) * fx * 2 + fy * (1 - fx) * 4 + fy * fx * 8
        got = out.flatten().float().tolist()
        expected = [0.5, far, 0.1875 * 16 + 0.0625 * 32 + 0.5625 * 64 + 0.1875 * 128]
        grown = rss_mib() - before
        print(got, expected, grown)
        assert all(abs(g - e) <= 0.01 * abs(e) for g, e in zip(got, expected)), (got, expected)
        assert grown < 512, f'{grown:.0f} MiB resident: the value was materialised'
    ''')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]


def test_native_kernel_check_does_not_wrap_level_sizes() -> None:
    """The C++ kernel's own bounds check (it runs even when the Python validation is bypassed
    through ``MSDeformAttnFunction``) must not let a level whose H*W wraps around 64 bits pass
    as "inside value" (it would read out of bounds). In a subprocess: a regression crashes it,
    not the test session."""
    code = textwrap.dedent('''
        import torch
        from crossformer_mm import _ext
        value = torch.zeros(1, 4, 1, 1)
        loc = torch.full((1, 1, 1, 1, 1, 2), 0.5)
        attn = torch.ones(1, 1, 1, 1, 1)
        for shapes in ([[2**32, 2**32]], [[2**62, 4]], [[3, 2**62]]):
            try:
                _ext.ms_deform_attn_forward(value, torch.tensor(shapes),
                                            torch.zeros(1, dtype=torch.int64), loc, attn)
            except RuntimeError as err:
                assert 'lies outside value' in str(err), err
            else:
                raise AssertionError(f'{shapes} accepted')
        print('ok')
    ''')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and 'ok' in result.stdout, (result.returncode,
                                                             result.stderr[-3000:])


def test_reference_indexes_large_levels_exactly() -> None:
    """The reference gathers by integer index: a level with more than 2**24 keys (where float32
    cannot count every key) reads the right rows, as the kernel does."""
    h, w = 4097, 4097  # 16,785,409 keys > 2**24
    value = torch.zeros(1, h * w, 1, 1)
    rows = torch.arange(h * w - 3 * w, h * w)
    value[0, rows, 0, 0] = (rows % 7 + 1).float()  # distinct neighbours
    shapes = torch.tensor([[h, w]])
    starts = torch.zeros(1, dtype=torch.int64)
    gen = torch.Generator().manual_seed(0)
    loc = 1 - torch.rand(1, 64, 1, 1, 1, 2, generator=gen) * (2 / h)
    attn = torch.ones(1, 64, 1, 1, 1)
    with torch.no_grad():
        ours = ms_deform_attn(value, shapes, starts, loc, attn)
        ref = ms_deform_attn_pytorch(value, shapes, starts, loc, attn)
    assert ours.abs().min() > 0  # the points read the written rows
    # Pixel positions near 4096 have a float32 resolution of 5e-4 px, hence the tolerance; a
    # neighbouring row (what float32 index arithmetic reads) differs by 1 to 6.
    assert_matches(ref, ours.double(), 1e-3, 'reference vs kernel')
