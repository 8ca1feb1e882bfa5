"""tools/misc/check_env.py, the verify command: a real run on this machine (no GPU) and simulated
GPU nodes (a fake ``nvidia-smi`` on PATH, torch's CUDA state patched in-process) for each failure
it must catch, each with its one-line fix."""
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'misc' / 'check_env.py'
CU130_ARCHS = ['sm_75', 'sm_80', 'sm_86', 'sm_90', 'sm_100', 'sm_120']


def check_env(*args: str) -> int:
    """Run the tool in this process (so the patches apply); its exit status."""
    module = runpy.run_path(str(TOOL), run_name='check_env')
    return module['main'](list(args))


def problems(out: str) -> list:
    return [line[4:] for line in out.splitlines() if line.startswith('  - ')]


@pytest.fixture
def cuda_torch(monkeypatch):
    """torch as on a GPU node where CUDA works: a CUDA 13.0 build, one H100 visible."""
    monkeypatch.setattr(torch.version, 'cuda', '13.0')
    monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: list(CU130_ARCHS))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: 'NVIDIA H100')


def test_cpu_machine_report_exits_0():
    """The command as setup_env.sh runs it, on this CPU-only machine, in a fresh interpreter."""
    result = subprocess.run([sys.executable, str(TOOL)], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for needle in (f'torch           {torch.__version__}', 'mmcv ', 'NVIDIA driver   none',
                   'ok: this environment can run here (CPU)'):
        assert needle in out, out
    cpu_row = next(line for line in out.splitlines() if line.strip().startswith('cpu '))
    assert cpu_row.rstrip().endswith('cpu'), cpu_row  # the MSDA path of the CPU: its C++ kernel


def test_gpu_required_on_cpu_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('PATH', str(tmp_path))  # no nvidia-smi
    assert check_env('--gpu', '--no-triton') == 1
    assert problems(capsys.readouterr().out) == [
        'no usable NVIDIA GPU (--gpu); fix: run on a GPU node']


def test_torch_without_the_gpus_arch(fake_nvidia_smi, cuda_torch, capsys):
    fake_nvidia_smi('V100', count=2)
    assert check_env('--no-triton') == 1
    out = capsys.readouterr().out
    (torch_line, ) = [p for p in problems(out) if p.startswith('torch')]
    assert 'no kernels for sm_70 (Tesla V100-SXM2-32GB, GPU 0, 1)' in torch_line
    assert 'fix: remove the environment' in torch_line
    assert 'GPU 0' in out and 'sm_70' in out


def test_cpu_only_torch_on_gpu_node(fake_nvidia_smi, monkeypatch, capsys):
    fake_nvidia_smi('A100', count=8)
    monkeypatch.setattr(torch.version, 'cuda', None)
    monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: [])
    assert check_env('--no-triton') == 1
    out = capsys.readouterr().out
    assert 'CPU-only build' in out
    assert 'is a CPU-only build but this node has 8 NVIDIA GPUs' in problems(out)[0]
    # A CPU run on purpose passes, the GPUs still reported.
    assert check_env('--no-triton', '--cpu-only') == 0
    assert 'NVIDIA A100-SXM4-80GB' in capsys.readouterr().out


def test_driver_too_old(fake_nvidia_smi, cuda_torch, monkeypatch, capsys):
    fake_nvidia_smi('H100', driver='535.104.05')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert check_env('--no-triton') == 1
    out = capsys.readouterr().out
    assert 'NVIDIA driver   535.104.05' in out
    assert problems(out)[0].startswith('the NVIDIA driver 535.104.05 is too old for torch')
    assert 'none: torch cannot use this GPU' in out
    # --launch, as tools/dist_train.sh runs it: the problem lines only, on stderr.
    assert check_env('--launch') == 1
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.startswith('the NVIDIA driver 535.104.05')


def test_mmcv_without_cuda_ops(fake_nvidia_smi, cuda_torch, capsys):
    """This machine's mmcv was built without a GPU: on a GPU node its ops do not serve it."""
    fake_nvidia_smi('H100')
    assert check_env('--no-triton') == 1
    out = capsys.readouterr().out
    assert 'CPU ops only (no CUDA kernels in _ext' in out
    (line, ) = problems(out)
    assert line.startswith("mmcv's compiled ops have no CUDA kernels")
    assert 'sm_90 (GPU 0)' in line and 'rebuilds mmcv' in line


def test_bad_arch_is_one_line(capsys):
    assert check_env('--arch', '4.2', '--no-triton') == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is no NVIDIA GPU this setup knows' in err


def test_arch_target_on_login_node(tmp_path, monkeypatch, capsys):
    """A node without GPUs checking the archs of the GPU nodes: torch's build covers sm_80, the
    Triton kernels compile for it ahead of time, this machine's mmcv has no CUDA ops for it."""
    monkeypatch.setenv('PATH', str(tmp_path))  # no nvidia-smi
    assert check_env('--arch', '8.0') == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith('arch 8.0'))
    cells = row.split()
    assert cells[3] == 'sm_80' and cells[5:7] == ['yes', 'NO'], row
    assert 'ok (4 kernels, float32)' in row, row
    (line, ) = problems(out)
    assert 'none for sm_80 (arch 8.0)' in line and 'CFM_CUDA_ARCHS="8.0"' in line
