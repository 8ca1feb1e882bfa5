"""The Triton MSDA kernels, run on the CPU through Triton's interpreter (small shapes), and
compiled ahead of time for the GPU architectures and dtypes the package claims (no GPU needed).

``TRITON_INTERPRET=1`` has to be set before triton is imported, so the interpreter checks run in
a fresh interpreter (``_msda_triton_interp.py``)."""
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def test_triton_kernels_match_reference_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, os.path.join(HERE, '_msda_triton_interp.py')],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'failures: []' in proc.stdout


#: Every kernel for every architecture and every dtype at least once (the default run); the
#: slow test compiles the whole matrix.
AOT_SUBSET = [(70, torch.float16), (75, torch.bfloat16), (80, torch.float64), (86, torch.float32),
              (90, torch.bfloat16)]
AOT_MATRIX = [(cc, dtype) for cc in (70, 75, 80, 86, 90)
              for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)]


def _check_compiles(cc: int, dtype: torch.dtype) -> None:
    from crossformer_mm.ops.msda_triton import KERNELS, compile_ahead
    cubins = compile_ahead(cc, dtype)
    assert sorted(cubins) == sorted(KERNELS)
    for name, cubin in cubins.items():
        assert isinstance(cubin, bytes) and cubin[:4] == b'\x7fELF', (name, cc, dtype)


@pytest.mark.parametrize('cc,dtype', AOT_SUBSET, ids=[f'sm_{c}-{d}' for c, d in AOT_SUBSET])
def test_triton_kernels_compile_ahead(cc, dtype):
    """Every kernel lowers to a cubin for the GPUs the package claims, without a GPU: catches
    code that the interpreter accepts but the compiler rejects for an arch or a dtype."""
    _check_compiles(cc, dtype)


@pytest.mark.slow
@pytest.mark.parametrize('cc,dtype', AOT_MATRIX, ids=[f'sm_{c}-{d}' for c, d in AOT_MATRIX])
def test_triton_kernels_compile_ahead_full_matrix(cc, dtype):
    _check_compiles(cc, dtype)


def test_deterministic_kernels_use_no_atomics():
    from crossformer_mm.ops.msda_triton import _compile_kernels
    kernels = _compile_kernels(86, torch.float32)  # compiled by the subset above
    assert 'atom' in kernels['backward_atomic'].asm['ptx']  # the check can see atomics
    for name in ('forward', 'backward_deterministic', 'backward_value'):
        assert 'atom' not in kernels[name].asm['ptx'], (name, 'uses atomics')


def test_compile_ahead_errors(monkeypatch):
    from crossformer_mm.ops import msda_triton
    with pytest.raises(ValueError, match='dtype must be one of'):
        msda_triton.compile_ahead(80, torch.int32)
    with pytest.raises(ValueError, match='cc must be a compute capability'):
        msda_triton.compile_ahead('sm_80', torch.float32)
    monkeypatch.setattr(msda_triton, 'triton', None)
    with pytest.raises(RuntimeError, match='needs the `triton` package'):
        msda_triton.compile_ahead(80, torch.float32)
