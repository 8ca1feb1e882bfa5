"""Which path the MSDA op takes on each device (crossformer_mm.ops.msda.backends), by simulation
on the CPU: CUDA's presence and compute capability, triton's and mmcv's availability and a Triton
compile error are monkeypatched; no GPU is needed. Tensors that report a CUDA device (their data
stay on the CPU) check that every launch runs under the tensors' own device."""
import sys
import warnings

import pytest
import torch

from crossformer_mm.ops import msda_backend, msda_triton, native_kernel_available
from crossformer_mm.ops.msda import backends

from test_msda import make_inputs, max_diff  # noqa: E402


class OnCuda(torch.Tensor):
    """A CPU tensor that says it lives on ``cuda:<index>`` (results of ops on it are plain CPU
    tensors): lets the CUDA paths run on the CPU."""
    __torch_function__ = torch._C._disabled_torch_function_impl
    index = 1

    @property
    def device(self) -> torch.device:
        return torch.device('cuda', self.index)

    @property
    def is_cuda(self) -> bool:
        return True


class DeviceGuard:
    """Stands in for ``torch.cuda.device``: records which device is current."""
    current: list = []

    def __init__(self, device) -> None:
        self.device = torch.device(device)

    def __enter__(self) -> None:
        DeviceGuard.current.append(self.device)

    def __exit__(self, *exc) -> None:
        DeviceGuard.current.pop()


class FakeMMCVExt:
    """mmcv's compiled ops: the forward and backward of the PyTorch reference, recording the
    current device and the dtypes they were given."""

    def __init__(self) -> None:
        self.calls = []

    def ms_deform_attn_forward(self, value, shapes, starts, loc, attn, im2col_step):
        assert value.shape[0] % im2col_step == 0
        self.calls.append(('forward', list(DeviceGuard.current), value.dtype, loc.dtype))
        return backends.ms_deform_attn_pytorch(value, shapes, starts, loc, attn)

    def ms_deform_attn_backward(self, value, shapes, starts, loc, attn, grad_output, grad_value,
                                grad_loc, grad_attn, im2col_step):
        self.calls.append(('backward', list(DeviceGuard.current), value.dtype, loc.dtype))
        grads = backends._pytorch_backward(value, shapes, starts, loc, attn, grad_output)
        for buffer, grad in zip((grad_value, grad_loc, grad_attn), grads):
            buffer.copy_(grad)


@pytest.fixture
def gpu(monkeypatch):
    """A simulated CUDA machine: compute capability ``gpu.cc`` (9.0 unless a test changes it),
    triton as installed here, no mmcv CUDA ops unless a test installs ``gpu.mmcv``."""

    class Sim:
        cc = (9, 0)
        mmcv = None

    sim = Sim()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: sim.cc)
    monkeypatch.setattr(torch.cuda, 'device', DeviceGuard)
    monkeypatch.setattr(
        backends, '_mmcv_ext', lambda: (sim.mmcv, 'mmcv 2.1.0 (built with CUDA 12.1)')
        if sim.mmcv is not None else (None, 'mmcv is not installed'))
    monkeypatch.setattr(backends, '_TRITON_FAILED', {})
    monkeypatch.setattr(backends, '_WARNED', set())
    return sim


def test_cpu_paths(monkeypatch):
    assert msda_backend('cpu') == ('cpu', 'CPU tensors run the C++ kernel of crossformer_mm._ext.')
    assert native_kernel_available('cpu')
    monkeypatch.setattr(backends, '_EXT', None)
    path, reason = msda_backend(torch.device('cpu'), torch.bfloat16)
    assert path == 'pytorch' and 'not built' in reason
    assert not native_kernel_available('cpu')
    path, reason = msda_backend('meta')
    assert path == 'pytorch' and 'meta' in reason


def test_cuda_path_choice(gpu, monkeypatch):
    assert msda_backend('cuda')[0] == 'triton'
    assert msda_backend('cuda:1', torch.float16) == (
        'triton', 'cuda:1 (compute capability 9.0) runs the Triton kernels.')
    assert native_kernel_available('cuda:0')

    gpu.cc = (7, 0)  # Volta: below what Triton supports
    path, reason = msda_backend('cuda:0')
    assert path == 'pytorch'
    assert 'compute capability 7.0, below 8.0' in reason and 'mmcv is not installed' in reason
    gpu.mmcv = FakeMMCVExt()
    path, reason = msda_backend('cuda:0')
    assert path == 'mmcv' and 'compute capability 7.0' in reason and 'CUDA 12.1' in reason
    assert not native_kernel_available('cuda:0')

    gpu.cc = (8, 0)
    monkeypatch.setattr(msda_triton, 'triton', None)
    path, reason = msda_backend('cuda:0')
    assert path == 'mmcv' and reason.startswith('Triton is not installed')
    gpu.mmcv = None
    assert msda_backend('cuda:0')[0] == 'pytorch'


def test_cuda_without_usable_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(backends, '_mmcv_ext', lambda: (None, 'mmcv is not installed'))
    path, reason = msda_backend('cuda')
    assert path == 'pytorch' and 'cannot use a CUDA device' in reason


def test_mmcv_probe_reports_what_is_installed(monkeypatch):
    """The real probe: mmcv here is either built with CUDA ops (then it serves) or not (then it
    says so); with mmcv not importable it says it is not installed."""
    backends._mmcv_ext.cache_clear()
    try:
        ext, note = backends._mmcv_ext()
        from mmcv.ops import get_compiling_cuda_version
        has_cuda = get_compiling_cuda_version() != 'not available'
        assert (ext is not None) == has_cuda, note
        if not has_cuda:
            assert 'built without CUDA ops' in note
        backends._mmcv_ext.cache_clear()
        monkeypatch.setitem(sys.modules, 'mmcv', None)  # `import mmcv` now fails
        assert backends._mmcv_ext() == (None, 'mmcv is not installed')
    finally:
        backends._mmcv_ext.cache_clear()


def _cuda_inputs(index: int = 1, dtype=torch.float32):
    value, shapes, starts, loc, attn = make_inputs(dtype=dtype)
    OnCuda.index = index
    return value.as_subclass(OnCuda), shapes, starts, loc, attn


def test_mmcv_path_runs_under_the_tensors_device(gpu):
    gpu.cc = (7, 0)
    gpu.mmcv = FakeMMCVExt()
    value, shapes, starts, loc, attn = _cuda_inputs(index=1, dtype=torch.float64)
    value = value.to(torch.bfloat16).as_subclass(OnCuda)  # mmcv has no bf16: it gets float32
    loc, attn = loc.float(), attn.float()
    with pytest.warns(RuntimeWarning, match='compute capability 7.0'):
        out = backends.forward(value, shapes, starts, loc, attn, False)
    expected = backends.ms_deform_attn_pytorch(value.float(), shapes, starts, loc, attn)
    assert out.dtype == torch.bfloat16 and max_diff(out, expected) <= 1e-2
    grad_out = torch.randn(out.shape).to(torch.bfloat16)
    grads = backends.backward(value, shapes, starts, loc, attn, grad_out, False)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
    assert gpu.mmcv.calls == [(step, [torch.device('cuda', 1)], torch.float32, torch.float32)
                              for step in ('forward', 'backward')]


def test_deterministic_mode_keeps_off_mmcv(gpu):
    """mmcv's backward adds with atomics: in deterministic mode the PyTorch formulation runs."""
    gpu.cc = (7, 5)
    gpu.mmcv = FakeMMCVExt()
    value, shapes, starts, loc, attn = _cuda_inputs()
    with pytest.warns(RuntimeWarning, match='in deterministic mode the PyTorch formulation'):
        out = backends.forward(value, shapes, starts, loc, attn, True)
    backends.backward(value, shapes, starts, loc, attn, torch.ones(out.shape), True)
    assert gpu.mmcv.calls == []
    assert max_diff(out, backends.ms_deform_attn_pytorch(value, shapes, starts, loc, attn)) == 0


def _failing_compile(*args, **kwargs):
    """A real Triton compile error: a kernel Triton's frontend rejects."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    @triton.jit
    def broken(x_ptr, BLOCK: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, BLOCK), undefined_name)  # noqa: F821

    triton.compile(ASTSource(fn=broken, signature={'x_ptr': '*fp32', 'BLOCK': 'constexpr'},
                             constexprs={'BLOCK': 16}), target=GPUTarget('cuda', 90, 32))


@pytest.mark.parametrize('with_mmcv', [False, True])
def test_triton_compile_error_falls_back_and_is_remembered(gpu, monkeypatch, with_mmcv):
    gpu.mmcv = FakeMMCVExt() if with_mmcv else None
    monkeypatch.setattr(msda_triton, 'ms_deform_attn_forward_triton', _failing_compile)
    value, shapes, starts, loc, attn = _cuda_inputs()
    with pytest.warns(RuntimeWarning, match='failed to compile for sm_90 in float32'):
        out = backends.forward(value, shapes, starts, loc, attn, False)
    assert max_diff(out, backends.ms_deform_attn_pytorch(value, shapes, starts, loc, attn)) < 1e-6
    path, reason = msda_backend('cuda:1', torch.float32)
    assert path == ('mmcv' if with_mmcv else 'pytorch')
    assert 'CompilationError' in reason
    assert msda_backend('cuda:1', torch.float16)[0] == 'triton'  # other dtypes still compile
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # once per process
        backends.forward(value, shapes, starts, loc, attn, False)
    if with_mmcv:
        assert [c[0] for c in gpu.mmcv.calls] == ['forward', 'forward']


def test_errors_outside_triton_are_not_swallowed(gpu, monkeypatch):
    def bad_input(*args, **kwargs):
        raise ValueError('not a compile error')

    monkeypatch.setattr(msda_triton, 'ms_deform_attn_forward_triton', bad_input)
    with pytest.raises(ValueError, match='not a compile error'):
        backends.forward(*_cuda_inputs(), False)
    assert backends._TRITON_FAILED == {}


class Launches:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` records the device that is
    current at the launch."""

    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.name, list(DeviceGuard.current)))


def test_triton_launches_run_under_the_tensors_device(monkeypatch):
    """Every launch (forward, atomic and deterministic backward, its value pass) runs inside
    ``torch.cuda.device(<the tensors' device>)``, not on whatever device is current."""
    log = []
    monkeypatch.setattr(torch.cuda, 'device', DeviceGuard)
    for name in ('_msda_fwd_kernel', '_msda_bwd_kernel', '_msda_bwd_value_kernel'):
        monkeypatch.setattr(msda_triton, name, Launches(name, log))
    value, shapes, starts, loc, attn = _cuda_inputs(index=3)
    out = msda_triton.ms_deform_attn_forward_triton(value, shapes, starts, loc, attn)
    grad_out = torch.ones(out.shape)
    for det in (False, True):
        msda_triton.ms_deform_attn_backward_triton(value, shapes, starts, loc, attn, grad_out,
                                                   deterministic=det)
    on3 = [torch.device('cuda', 3)]
    assert log == [('_msda_fwd_kernel', on3), ('_msda_bwd_kernel', on3),
                   ('_msda_bwd_kernel', on3), ('_msda_bwd_value_kernel', on3)]
    assert DeviceGuard.current == []
