"""crossformer_mm.utils.gpu_check: the architectures in a fatbin, which GPUs a build serves, and
the diagnosis of a node whose GPUs torch cannot use (fake ``nvidia-smi``, patched torch)."""
import struct

import pytest
import torch

from crossformer_mm.utils import gpu_check
from crossformer_mm.utils.gpu_check import (GPUUnusableError, arch_served, fatbin_archs,
                                            parse_arch_list, refuse_cpu_on_gpu_node,
                                            torch_gpu_problems)

CU130_ARCHS = ['sm_75', 'sm_80', 'sm_86', 'sm_90', 'sm_100', 'sm_120']


def write_elf(path, entries=None, section=b'.nv_fatbin') -> None:
    """A 64-bit ELF file with a ``section`` holding one fatbin container of ``entries``
    (``(kind, sm)``: 1 PTX, 2 cubin), each with a small payload."""
    fatbin = b''
    if entries is not None:
        body = b''
        for kind, sm in entries:
            payload = bytes([sm]) * 24
            head = struct.pack('<HHIQ', kind, 0x101, 64, len(payload)) + bytes(12)
            head += struct.pack('<I', sm) + bytes(64 - 32)
            body += head + payload
        fatbin = struct.pack('<IHHQ', 0xBA55ED50, 1, 16, len(body)) + body + bytes(8)
    names = b'\0.shstrtab\0' + section + b'\0'
    names_at, fatbin_at = 64, 64 + len(names)
    shoff = fatbin_at + len(fatbin)
    header = bytearray(64)
    header[:7] = b'\x7fELF\x02\x01\x01'
    struct.pack_into('<Q', header, 0x28, shoff)
    struct.pack_into('<HHH', header, 0x3A, 64, 3, 1)

    def sh(name, offset, size):
        return struct.pack('<IIQQQQIIQQ', name, 1, 0, 0, offset, size, 0, 0, 1, 0)

    sections = bytes(64) + sh(1, names_at, len(names)) + sh(11, fatbin_at, len(fatbin))
    path.write_bytes(bytes(header) + names + fatbin + sections)


def test_fatbin_archs_reads_cubins_and_ptx(tmp_path):
    write_elf(tmp_path / 'ext.so', [(2, 80), (2, 90), (1, 90), (2, 80)])
    assert fatbin_archs(str(tmp_path / 'ext.so')) == ({80, 90}, {90})


def test_fatbin_archs_without_device_code(tmp_path):
    write_elf(tmp_path / 'cpu.so', None, section=b'.text')
    assert fatbin_archs(str(tmp_path / 'cpu.so')) == (set(), set())
    (tmp_path / 'not-elf.so').write_bytes(b'#!/bin/sh\n' * 10)
    with pytest.raises(ValueError, match='not a 64-bit ELF'):
        fatbin_archs(str(tmp_path / 'not-elf.so'))


def test_arch_served():
    cubins, ptx = parse_arch_list(CU130_ARCHS + ['compute_120'])
    assert cubins == {75, 80, 86, 90, 100, 120} and ptx == {120}
    assert arch_served((8, 9), cubins, ptx)  # sm_86 cubin runs on 8.9
    assert not arch_served((7, 0), cubins, ptx)  # no Volta in CUDA 13 builds
    assert arch_served((12, 1), set(), {120})  # PTX runs on newer GPUs
    assert not arch_served((9, 0), {80}, set())  # a cubin never crosses a major version


@pytest.fixture
def cuda_torch(monkeypatch):
    """A CUDA 13.0 torch whose CUDA works (what torch reports on a good GPU node)."""
    monkeypatch.setattr(torch.version, 'cuda', '13.0')
    monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: list(CU130_ARCHS))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)


def test_no_gpu_no_problem(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))  # no nvidia-smi
    assert torch_gpu_problems() == []
    refuse_cpu_on_gpu_node()  # a CPU machine: nothing to refuse


def test_usable_gpus_no_problem(fake_nvidia_smi, cuda_torch):
    fake_nvidia_smi('H100', count=8)
    assert torch_gpu_problems() == []


def test_cpu_only_torch_on_gpu_node(fake_nvidia_smi, monkeypatch):
    fake_nvidia_smi('A100', count=4)
    monkeypatch.setattr(torch.version, 'cuda', None)
    (problem, ) = torch_gpu_problems()
    assert 'CPU-only build' in problem.reason and '4 NVIDIA GPUs' in problem.reason
    assert 'setup_env.sh' in problem.fix


def test_torch_build_without_the_arch(fake_nvidia_smi, cuda_torch):
    fake_nvidia_smi('V100', count=2)
    (problem, ) = torch_gpu_problems()
    assert 'no kernels for sm_70' in problem.reason and 'GPU 0, 1' in problem.reason


def test_driver_too_old(fake_nvidia_smi, cuda_torch, monkeypatch):
    fake_nvidia_smi('H100', driver='535.104.05')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    (problem, ) = torch_gpu_problems()
    assert 'driver 535.104.05 is too old' in problem.reason and '>= 580' in problem.reason


def test_cuda_that_does_not_start_says_why(fake_nvidia_smi, cuda_torch, monkeypatch):
    fake_nvidia_smi('H100')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)

    def init():
        raise RuntimeError('CUDA driver initialization failed\nmore')

    monkeypatch.setattr(torch.cuda, 'init', init)
    (problem, ) = torch_gpu_problems()
    assert problem.reason.endswith('CUDA driver initialization failed')


def test_cuda_that_does_not_start_on_older_torch(fake_nvidia_smi, monkeypatch):
    """Older torch (2.1 among them) lists no architectures where CUDA cannot start: the build's
    own list is read instead, and the problem is that CUDA does not start, not a missing
    architecture."""
    fake_nvidia_smi('H100')
    monkeypatch.setattr(torch.version, 'cuda', '12.1')
    monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: [])
    monkeypatch.setattr(torch._C, '_cuda_getArchFlags', lambda: 'sm_80 sm_90', raising=False)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert gpu_check.torch_arch_list() == ['sm_80', 'sm_90']
    (problem, ) = torch_gpu_problems()
    assert problem.reason.startswith('torch cannot use the GPUs'), problem.reason
    monkeypatch.setattr(torch.version, 'cuda', None)  # a CPU-only build lists none
    assert gpu_check.torch_arch_list() == []


def test_refusal_and_explicit_cpu(fake_nvidia_smi, monkeypatch):
    fake_nvidia_smi('H100')
    monkeypatch.setattr(torch.version, 'cuda', None)
    for name in ('CUDA_VISIBLE_DEVICES', gpu_check.ALLOW_CPU_ENV):
        monkeypatch.setenv(name, '')  # recorded, so that the test's changes are undone
        monkeypatch.delenv(name)
    with pytest.raises(GPUUnusableError) as err:
        refuse_cpu_on_gpu_node()
    message = str(err.value)
    assert '\n' not in message and 'CPU-only build' in message and '--cpu' in message
    refuse_cpu_on_gpu_node(cpu=True)  # --cpu: hides the GPUs, marks the choice for children
    assert gpu_check.os.environ['CUDA_VISIBLE_DEVICES'] == ''
    assert gpu_check.os.environ[gpu_check.ALLOW_CPU_ENV] == '1'
    refuse_cpu_on_gpu_node()  # now a CPU run on purpose
    monkeypatch.delenv(gpu_check.ALLOW_CPU_ENV)
    refuse_cpu_on_gpu_node()  # an empty CUDA_VISIBLE_DEVICES counts as asking for the CPU
