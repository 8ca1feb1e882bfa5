"""The op on a torch without ``torch.library.custom_op`` (< 2.4): ``MSDeformAttnFunction``, a
``torch.autograd.Function`` over the same forward and backward, forced here on a torch that has
the registered op (``function._USE_CUSTOM_OP = False``) and compared with it -- the same values
and gradients, bit for bit, deterministic mode included; compiling or exporting it says it needs
torch >= 2.4 (on torch 2.1 too, where the Function is the only path). A fresh interpreter
without ``custom_op`` and ``torch.compiler.is_compiling`` (the APIs torch 2.1 lacks) imports the
ops and runs them."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from crossformer_mm.ops import MSDeformAttn, ms_deform_attn
from crossformer_mm.ops.msda import backends, function

from test_msda import _module_inputs, _randomise, make_inputs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(use_custom_op: bool, monkeypatch, dtype=torch.float32, deterministic=None):
    monkeypatch.setattr(function, '_USE_CUSTOM_OP', use_custom_op)
    value, shapes, starts, loc, attn = make_inputs(dtype=dtype, num_queries=9)
    leaves = [t.requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn(value, shapes, starts, loc, attn, deterministic=deterministic)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    return out, torch.autograd.grad(out, leaves, grad)


@pytest.mark.needs_custom_op
@pytest.mark.filterwarnings('ignore:ms_deform_attn')
@pytest.mark.parametrize('kernel', ['cpu', 'pytorch'])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_function_matches_registered_op(monkeypatch, kernel, dtype):
    if kernel == 'pytorch':  # the path without the C++ extension
        monkeypatch.setattr(backends, '_EXT', None)
    op_out, op_grads = _run(True, monkeypatch, dtype)
    fn_out, fn_grads = _run(False, monkeypatch, dtype)
    assert 'MSDeformAttnFunction' in type(fn_out.grad_fn).__name__
    assert 'MSDeformAttnFunction' not in type(op_out.grad_fn).__name__
    assert torch.equal(fn_out, op_out) and fn_out.dtype == dtype
    for a, b in zip(fn_grads, op_grads):
        assert torch.equal(a, b)


@pytest.mark.needs_custom_op
def test_function_deterministic_backward(monkeypatch):
    """Deterministic mode through the Function: bit-identical run after run and to the op."""
    runs = [_run(False, monkeypatch, deterministic=True) for _ in range(2)]
    op = _run(True, monkeypatch, deterministic=True)
    for other in (runs[1], op):
        assert torch.equal(runs[0][0], other[0])
        assert all(torch.equal(a, b) for a, b in zip(runs[0][1], other[1]))
    torch.use_deterministic_algorithms(True)
    try:
        assert all(torch.equal(a, b) for a, b in zip(_run(False, monkeypatch)[1], op[1]))
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.needs_custom_op
def test_function_module_matches_registered_op(monkeypatch):
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=32, num_heads=4, num_levels=2, num_points=3, dropout=0.0)
    _randomise(module)
    inputs = _module_inputs()
    results = []
    for use_custom_op in (True, False):
        monkeypatch.setattr(function, '_USE_CUSTOM_OP', use_custom_op)
        module.zero_grad()
        out = module(**inputs)
        out.square().sum().backward()
        results.append((out, [p.grad.clone() for p in module.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


class _Op(torch.nn.Module):
    def forward(self, *inputs):
        return ms_deform_attn(*inputs)


def test_function_refuses_compile_and_export(monkeypatch):
    """The Function's one line, not Dynamo's account of what it could not trace."""
    monkeypatch.setattr(function, '_USE_CUSTOM_OP', False)
    inputs = make_inputs(dtype=torch.float32)
    expected = (r'^ms_deform_attn: torch.compile and torch.export of the op need torch >= 2.4 '
                r'\(torch.library.custom_op\); this is torch ' + re.escape(torch.__version__))
    torch._dynamo.reset()
    try:
        compiled = torch.compile(ms_deform_attn, fullgraph=True, backend='aot_eager')
        with pytest.raises(AssertionError, match=expected):
            compiled(*inputs)
        torch._dynamo.reset()
        with pytest.raises(AssertionError, match=expected):
            torch.export.export(_Op(), tuple(inputs))
    finally:
        torch._dynamo.reset()


def test_ops_import_and_run_without_custom_op():
    """Imported in a fresh interpreter without the torch APIs that torch 2.1 lacks, the ops
    register no op and run forward / backward / deterministic backward through the Function."""
    code = textwrap.dedent('''
        import sys
        import torch
        for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain'):
            sys.modules[name] = None  # the ops alone: what they import must do without the APIs
        apis = [(torch.library, 'custom_op'), (torch.compiler, 'is_compiling')]
        saved = {name: getattr(owner, name) for owner, name in apis if hasattr(owner, name)}
        for owner, name in apis:  # absent already on torch 2.1
            if name in saved:
                delattr(owner, name)
        import crossformer_mm.ops as ops
        from crossformer_mm.ops import torch_compat
        from crossformer_mm.ops.msda import function
        # Back for torch's own modules that use them (torch.onnx, torch._dynamo).
        for owner, name in apis:
            if name in saved:
                setattr(owner, name, saved[name])
        assert not function._USE_CUSTOM_OP
        assert torch_compat.is_compiling is not saved.get('is_compiling')
        assert not torch_compat.is_compiling()
        assert not hasattr(torch.ops.crossformer_mm, 'ms_deform_attn')
        shapes = torch.tensor([[4, 3], [2, 2]])
        starts = torch.tensor([0, 12])
        value = torch.rand(2, 16, 2, 4, dtype=torch.float64, requires_grad=True)
        loc = torch.rand(2, 5, 2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
        attn = torch.rand(2, 5, 2, 2, 3, dtype=torch.float64)
        out = ops.ms_deform_attn(value, shapes, starts, loc, attn, deterministic=True)
        assert 'MSDeformAttnFunction' in type(out.grad_fn).__name__
        ref = ops.ms_deform_attn_pytorch(value, shapes, starts, loc, attn)
        assert (out - ref).abs().max() < 1e-12
        grads = torch.autograd.grad(out.sum(), [value, loc])
        expected = torch.autograd.grad(ref.sum(), [value, loc])
        assert all((a - b).abs().max() < 1e-10 for a, b in zip(grads, expected))
        print('ok')
    ''')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stdout + proc.stderr[-3000:]
