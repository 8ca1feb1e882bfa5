"""The GPU decisions of ``tools/setup_env.sh`` (``crossformer_mm/utils/gpu_env.py``): which torch
build, which CUDA toolkit, which archs, which mmcv wheel-cache key, on the CPU, with fake
``nvidia-smi`` / ``nvcc`` executables on PATH. The module is run as the setup script runs it (by
path, in a subprocess) and imported for its parts."""
import http.server
import os
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from crossformer_mm.utils import gpu_env
from crossformer_mm.utils.gpu_env import GPU, GpuEnvError

SCRIPT = Path(gpu_env.__file__)
ROOT = Path(__file__).resolve().parents[2]
V100 = '{i}, Tesla V100-SXM2-32GB, 7.0, {driver}, 32768'
A100 = '{i}, NVIDIA A100-SXM4-80GB, 8.0, {driver}, 81920'
H100 = '{i}, NVIDIA H100 80GB HBM3, 9.0, {driver}, 81559'


def fake_nvidia_smi(bin_dir: Path, rows: list, driver: str = '580.65.06',
                    old_driver: bool = False, no_devices: bool = False) -> None:
    """An ``nvidia-smi`` that answers the csv query like the real one (drivers before 510 refuse
    the ``compute_cap`` field; a node whose GPUs are gone says "No devices were found")."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    lines = [row.format(i=i, driver=driver) for i, row in enumerate(rows)]
    if old_driver:
        lines = [', '.join(line.split(', ')[:2] + line.split(', ')[3:]) for line in lines]
    body = '\n'.join(lines)
    script = '#!/bin/sh\n'
    if no_devices:
        script += 'echo "No devices were found"; exit 6\n'
    if old_driver:
        script += ('case "$*" in *compute_cap*) echo \'Field "compute_cap" is not a valid field '
                   'to query.\'; exit 2;; esac\n')
    script += f"cat <<'EOF'\n{body}\nEOF\n"
    (bin_dir / 'nvidia-smi').write_text(script)
    (bin_dir / 'nvidia-smi').chmod(0o755)


def fake_toolkit(home: Path, version: str) -> Path:
    """A CUDA toolkit folder whose ``nvcc --version`` reports ``version``."""
    (home / 'bin').mkdir(parents=True)
    (home / 'include').mkdir()
    (home / 'include' / 'cuda_runtime.h').write_text('')
    nvcc = home / 'bin' / 'nvcc'
    nvcc.write_text('#!/bin/sh\necho "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                    f'echo "Cuda compilation tools, release {version}, V{version}.99"\n')
    nvcc.chmod(0o755)
    return home


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The module run by path, as setup_env.sh runs it, with only ``tmp_path/bin`` and the
    system folders on PATH (no CUDA_HOME, no knob unless given)."""
    base = {k: v for k, v in os.environ.items()
            if k not in ('CUDA_HOME', 'CUDA_PATH', 'CFM_CUDA_ARCHS', 'CFM_TORCH', 'CFM_TOOLKIT')}
    base['PATH'] = f'{tmp_path / "bin"}:/usr/bin:/bin'
    base.update(env)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=base, cwd=tmp_path, timeout=60)


def assignments(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return dict(line.split('=', 1) for line in shlex.split(result.stdout))


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('[setup] '), result.stderr
    return lines[0]


# --- reading the GPUs -----------------------------------------------------------------------

def test_query_gpus_reads_name_capability_driver_memory(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / 'bin', [V100, H100], driver='550.54.15')
    gpus = gpu_env.query_gpus(str(tmp_path / 'bin' / 'nvidia-smi'))
    assert gpus == [GPU(0, 'Tesla V100-SXM2-32GB', (7, 0), '550.54.15', 32768),
                    GPU(1, 'NVIDIA H100 80GB HBM3', (9, 0), '550.54.15', 81559)]
    assert [g.arch for g in gpus] == ['sm_70', 'sm_90']


def test_query_gpus_without_nvidia_smi_or_devices_is_empty(tmp_path: Path) -> None:
    assert gpu_env.query_gpus(str(tmp_path / 'missing')) == []
    fake_nvidia_smi(tmp_path / 'bin', [], no_devices=True)
    assert gpu_env.query_gpus(str(tmp_path / 'bin' / 'nvidia-smi')) == []
    result = run(tmp_path / 'none', 'targets')
    assert assignments(result) == {'CFM_TARGETS': ''}


def test_query_gpus_with_a_driver_too_old_for_compute_cap(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / 'bin', [V100], driver='470.82.01', old_driver=True)
    gpus = gpu_env.query_gpus(str(tmp_path / 'bin' / 'nvidia-smi'))
    assert gpus == [GPU(0, 'Tesla V100-SXM2-32GB', None, '470.82.01', 32768)]


def test_query_gpus_names_a_failing_nvidia_smi(tmp_path: Path) -> None:
    (tmp_path / 'nvidia-smi').write_text(
        '#!/bin/sh\necho "NVIDIA-SMI has failed because it could not communicate with the '
        'NVIDIA driver."\nexit 9\n')
    (tmp_path / 'nvidia-smi').chmod(0o755)
    with pytest.raises(GpuEnvError, match='could not communicate.*CFM_CUDA_ARCHS'):
        gpu_env.query_gpus(str(tmp_path / 'nvidia-smi'))


# --- the knob and keys ----------------------------------------------------------------------

def test_parse_archs_forms_and_errors() -> None:
    assert gpu_env.parse_archs('9.0;7.0, 8.0 sm_86 8.0+PTX') == [(7, 0), (8, 0), (8, 6), (9, 0)]
    assert gpu_env.parse_archs('100;120') == [(10, 0), (12, 0)]
    assert gpu_env.parse_archs(None) is None and gpu_env.parse_archs('  ') is None
    assert gpu_env.parse_archs('cpu') == []
    with pytest.raises(GpuEnvError, match='CFM_CUDA_ARCHS.*7.7 is no NVIDIA GPU'):
        gpu_env.parse_archs('7.7')
    with pytest.raises(GpuEnvError, match="CFM_CUDA_ARCHS: 'volta' is not a compute capab"):
        gpu_env.parse_archs('volta')


def test_arch_key_round_trips_and_keeps_the_cpu_key() -> None:
    assert gpu_env.arch_key([]) == 'cuda0'
    assert gpu_env.arch_key([(9, 0), (8, 0), (8, 0)]) == 'cuda-sm80_90'
    assert gpu_env.arch_key([(12, 0), (7, 0), (10, 0)]) == 'cuda-sm70_100_120'
    assert gpu_env.parse_key('torch-2.14.1_cu130-cuda-sm70_100_120') == (
        '2.14.1_cu130', [(7, 0), (10, 0), (12, 0)])
    assert gpu_env.parse_key('torch-2.14.1_cu130-cuda0') == ('2.14.1_cu130', [])
    with pytest.raises(ValueError):
        gpu_env.parse_key('mmcv-2.1.0')


def test_installed_mmcv_build_reads_the_record(tmp_path: Path) -> None:
    assert gpu_env.installed_mmcv_build(str(tmp_path)) is None
    (tmp_path / gpu_env.MMCV_RECORD).write_text('torch-2.14.1_cu126-cuda-sm70\n')
    assert gpu_env.installed_mmcv_build(str(tmp_path)) == ('2.14.1_cu126', [(7, 0)])


def test_driver_minimums_and_nvcc_arch_ranges() -> None:
    assert gpu_env.min_driver_for_cuda('12.6') == (525, 60, 13)
    assert gpu_env.min_driver_for_cuda('13.0') == (580,)
    with pytest.raises(GpuEnvError, match='CUDA 10.2'):
        gpu_env.min_driver_for_cuda('10.2')
    assert not gpu_env.nvcc_supports('13.0', (7, 0)) and gpu_env.nvcc_supports('13.0', (7, 5))
    assert gpu_env.nvcc_supports('12.6', (7, 0)) and not gpu_env.nvcc_supports('12.6', (10, 0))
    assert gpu_env.served_by((8, 9), [(8, 0), (8, 6)]) and not gpu_env.served_by((7, 0), [(7, 5)])


# --- step 1: the torch build ----------------------------------------------------------------

def test_no_gpu_keeps_the_default_torch(tmp_path: Path) -> None:
    plan = assignments(run(tmp_path, 'plan-torch'))
    assert plan['CFM_TARGETS'] == '' and plan['TORCH_INDEX'] == ''
    assert plan['TORCH_REQ'] == 'torch==2.14.1 torchvision==0.29.1'
    assert 'no NVIDIA GPU and no CFM_CUDA_ARCHS' in plan['TORCH_LINE']
    plan = assignments(run(tmp_path, 'plan-torch', CFM_TORCH='torch==2.13.0'))
    assert plan['TORCH_REQ'] == 'torch==2.13.0'


def test_v100_gets_the_cuda_12_6_build(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / 'bin', [V100] * 8, driver='535.104.05')
    plan = assignments(run(tmp_path, 'plan-torch'))
    assert plan['CFM_TARGETS'] == '7.0'
    assert plan['TORCH_REQ'] == 'torch==2.14.1+cu126 torchvision==0.29.1+cu126'
    assert plan['TORCH_INDEX'] == 'https://download.pytorch.org/whl/cu126'
    assert 'CUDA 12.6' in plan['TORCH_LINE'] and 'CUDA 13.0 has no 7.0' in plan['TORCH_LINE']


def test_h100_gets_the_default_cuda_13_build(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / 'bin', [H100] * 4, driver='580.65.06')
    plan = assignments(run(tmp_path, 'plan-torch'))
    assert (plan['CFM_TARGETS'], plan['TORCH_INDEX']) == ('9.0', '')
    assert plan['TORCH_REQ'] == 'torch==2.14.1 torchvision==0.29.1'
    assert 'CUDA 13.0 from the PyPI default' in plan['TORCH_LINE']


def test_h100_with_a_driver_too_old_for_cuda_13_gets_cuda_12_6(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / 'bin', [H100], driver='550.54.15')
    plan = assignments(run(tmp_path, 'plan-torch'))
    assert plan['TORCH_INDEX'].endswith('/cu126')
    assert 'CUDA 13.0 needs driver >= 580' in plan['TORCH_LINE']


def test_mixed_volta_and_hopper_node_gets_cuda_12_6(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / 'bin', [V100, A100, H100], driver='580.65.06')
    plan = assignments(run(tmp_path, 'plan-torch'))
    assert plan['CFM_TARGETS'] == '7.0;8.0;9.0' and plan['TORCH_INDEX'].endswith('/cu126')


def test_knob_on_a_node_without_gpus(tmp_path: Path) -> None:
    plan = assignments(run(tmp_path, 'plan-torch', CFM_CUDA_ARCHS='8.0;9.0'))
    assert (plan['CFM_TARGETS'], plan['TORCH_INDEX']) == ('8.0;9.0', '')
    assert 'no driver checked' in plan['TORCH_LINE']
    # The knob wins over the GPUs seen; "cpu" asks for no GPU target.
    fake_nvidia_smi(tmp_path / 'bin', [H100])
    assert assignments(run(tmp_path, 'targets', CFM_CUDA_ARCHS='7.0'))['CFM_TARGETS'] == '7.0'
    assert assignments(run(tmp_path, 'targets', CFM_CUDA_ARCHS='cpu'))['CFM_TARGETS'] == ''


@pytest.mark.parametrize('driver, old, expected', [
    ('470.82.01', True, 'driver 470.82.01 is too old for every torch 2.14.1 build (the oldest '
                        'needs >= 525.60.13): update the driver'),
    ('515.65.01', False, "driver 515.65.01 is too old for torch's CUDA 12.6 build (needs >= "
                         '525.60.13): update the driver'),
])
def test_old_driver_is_one_line(tmp_path: Path, driver: str, old: bool, expected: str) -> None:
    fake_nvidia_smi(tmp_path / 'bin', [V100], driver=driver, old_driver=old)
    assert expected in one_line_error(run(tmp_path, 'plan-torch'))


@pytest.mark.parametrize('knob, expected', [
    ('7.7', 'CFM_CUDA_ARCHS: compute capability 7.7 is no NVIDIA GPU this setup knows'),
    ('3.7', 'compute capability 3.7 is served by no torch 2.14.1 build'),
    ('7.0;10.0', 'no single torch 2.14.1 build serves compute capabilities 7.0, 10.0'),
])
def test_unknown_or_unserved_arch_is_one_line(tmp_path: Path, knob: str, expected: str) -> None:
    line = one_line_error(run(tmp_path, 'plan-torch', CFM_CUDA_ARCHS=knob))
    assert expected in line and 'CFM_' in line.split(':', 1)[1]


def test_unknown_arch_reported_by_nvidia_smi(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / 'bin', ['{i}, Future GPU, 14.0, {driver}, 1000'])
    assert 'compute capability 14.0' in one_line_error(run(tmp_path, 'targets'))


def test_installed_torch_is_kept_or_refused_with_the_fix(tmp_path: Path) -> None:
    plan = assignments(run(tmp_path, 'plan-torch', '--installed', '2.14.1+cu130', '13.0'))
    assert plan['TORCH_REQ'] == '' and 'kept' in plan['TORCH_LINE']
    fake_nvidia_smi(tmp_path / 'bin', [H100])
    plan = assignments(run(tmp_path, 'plan-torch', '--installed', '2.14.1+cu130', '13.0'))
    assert plan['TORCH_REQ'] == '' and 'serves 9.0' in plan['TORCH_LINE']
    fake_nvidia_smi(tmp_path / 'bin', [V100])
    line = one_line_error(run(tmp_path, 'plan-torch', '--installed', '2.14.1+cu130', '13.0'))
    assert 'no kernels for compute capability 7.0 (Tesla V100-SXM2-32GB)' in line
    assert 'remove the environment (CFM_VENV)' in line
    line = one_line_error(run(tmp_path, 'plan-torch', '--installed', '2.13.0+cpu', 'none'))
    assert 'CPU-only build' in line


# --- step 2: the toolkit and the mmcv build -------------------------------------------------

def plan_mmcv(tmp_path: Path, tag: str, cuda: str, targets: str, *extra: str, **env: str) -> dict:
    return assignments(run(tmp_path, 'plan-mmcv', '--torch-tag', tag, '--torch-cuda', cuda,
                           '--targets', targets, *extra, **env))


def test_cpu_plan_keeps_the_cpu_wheel_cache_key(tmp_path: Path) -> None:
    plan = plan_mmcv(tmp_path, '2.14.1_cu130', '13.0', '')
    assert plan['MMCV_KEY'] == 'torch-2.14.1_cu130-cuda0' and plan['MMCV_REBUILD'] == '1'
    assert plan['MMCV_ARCH_LIST'] == plan['TOOLKIT_SOURCE'] == ''
    # Without GPU targets any installed build serves, recorded or not.
    plan = plan_mmcv(tmp_path, '2.14.1_cu130', '13.0', '', '--installed-ok')
    assert plan['MMCV_REBUILD'] == '0'


def test_matching_system_nvcc_is_used(tmp_path: Path) -> None:
    home = fake_toolkit(tmp_path / 'cuda-13.0', '13.0')
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'nvcc').symlink_to(home / 'bin' / 'nvcc')
    plan = plan_mmcv(tmp_path, '2.14.1_cu130', '13.0', '9.0')
    assert plan['MMCV_KEY'] == 'torch-2.14.1_cu130-cuda-sm90'
    assert (plan['TOOLKIT_SOURCE'], plan['TOOLKIT_HOME']) == ('system', str(home))
    assert plan['MMCV_ARCH_LIST'] == '9.0' and plan['TOOLKIT_REQ'] == ''
    # CFM_TOOLKIT=pypi takes NVIDIA's packages all the same.
    plan = plan_mmcv(tmp_path, '2.14.1_cu130', '13.0', '9.0', CFM_TOOLKIT='pypi')
    assert plan['TOOLKIT_SOURCE'] == 'pypi' and 'CFM_TOOLKIT=pypi' in plan['MMCV_LINE']


def test_mismatched_system_nvcc_falls_back_to_pypi(tmp_path: Path) -> None:
    fake_toolkit(tmp_path / 'cuda', '12.4')
    plan = plan_mmcv(tmp_path, '2.14.1_cu130', '13.0', '8.0;9.0',
                     CUDA_HOME=str(tmp_path / 'cuda'))
    assert plan['TOOLKIT_SOURCE'] == 'pypi' and plan['TOOLKIT_HOME'] == ''
    assert plan['TOOLKIT_REQ'].split() == [
        'nvidia-cuda-nvcc==13.0.*', 'nvidia-cuda-cccl==13.0.*', 'nvidia-cuda-crt==13.0.*',
        'nvidia-nvvm==13.0.*', 'nvidia-cuda-runtime==13.0.*']
    assert plan['MMCV_KEY'] == 'torch-2.14.1_cu130-cuda-sm80_90'
    assert plan['MMCV_ARCH_LIST'] == '8.0;9.0'
    assert 'the system nvcc 12.4 does not match' in plan['MMCV_LINE']
    line = one_line_error(run(tmp_path, 'plan-mmcv', '--torch-tag', '2.14.1_cu130',
                              '--torch-cuda', '13.0', '--targets', '9.0',
                              CUDA_HOME=str(tmp_path / 'cuda'), CFM_TOOLKIT='system'))
    assert 'CFM_TOOLKIT=system but the system nvcc is 12.4' in line


def test_v100_build_needs_a_system_cuda_12_toolkit(tmp_path: Path) -> None:
    # PyPI has no CUDA 12 nvcc: a same-major system toolkit serves, another major is refused.
    fake_toolkit(tmp_path / 'cuda-12.4', '12.4')
    plan = plan_mmcv(tmp_path, '2.14.1_cu126', '12.6', '7.0',
                     CUDA_HOME=str(tmp_path / 'cuda-12.4'))
    assert plan['TOOLKIT_SOURCE'] == 'system' and plan['MMCV_KEY'].endswith('-cuda-sm70')
    fake_toolkit(tmp_path / 'cuda-13.0', '13.0')
    line = one_line_error(run(tmp_path, 'plan-mmcv', '--torch-tag', '2.14.1_cu126',
                              '--torch-cuda', '12.6', '--targets', '7.0',
                              CUDA_HOME=str(tmp_path / 'cuda-13.0')))
    assert "torch's CUDA 12.6 needs a CUDA 12.x nvcc and PyPI has none" in line
    assert 'the system nvcc is 13.0' in line and 'module load cuda/12.6' in line
    with pytest.raises(GpuEnvError, match='PyPI has none for CUDA 12: install or load'):
        gpu_env.choose_toolkit('12.6', [(7, 0)], gpu_env.find_system_nvcc(
            {'PATH': str(tmp_path / 'empty')}, fallbacks=()))


def test_volta_target_with_a_cuda_13_torch_is_refused(tmp_path: Path) -> None:
    line = one_line_error(run(tmp_path, 'plan-mmcv', '--torch-tag', '2.14.1_cu130',
                              '--torch-cuda', '13.0', '--targets', '7.0', CFM_TOOLKIT='pypi'))
    assert 'nvcc 13.0 cannot compile for compute capability 7.0' in line


@pytest.mark.parametrize('record, targets, rebuild', [
    ('torch-2.14.1_cu130-cuda-sm80_90', '8.0', '0'),
    ('torch-2.14.1_cu130-cuda-sm80_90', '8.0;9.0', '0'),
    ('torch-2.14.1_cu130-cuda-sm80', '8.0;9.0', '1'),     # wrong archs
    ('torch-2.14.1_cu130-cuda0', '9.0', '1'),             # CPU-only build on a GPU target
    ('torch-2.13.0_cpu-cuda-sm90', '9.0', '1'),           # built for another torch
    (None, '9.0', '1'),                                   # nothing recorded
])
def test_installed_mmcv_is_rebuilt_unless_it_serves_the_targets(tmp_path: Path, record, targets,
                                                               rebuild) -> None:
    record_file = tmp_path / 'record'
    if record:
        record_file.write_text(record + '\n')
    plan = plan_mmcv(tmp_path, '2.14.1_cu130', '13.0', targets, '--installed-ok',
                     '--record', str(record_file), CFM_TOOLKIT='pypi')
    assert plan['MMCV_REBUILD'] == rebuild
    assert plan['MMCV_KEY'] == 'torch-2.14.1_cu130-' + gpu_env.arch_key(
        gpu_env.parse_archs(targets))


def test_gpu_target_with_cpu_only_torch_is_refused(tmp_path: Path) -> None:
    line = one_line_error(run(tmp_path, 'plan-mmcv', '--torch-tag', '2.13.0_cpu',
                              '--targets', '8.0'))
    assert 'CPU-only build' in line and 'CFM_VENV' in line


def test_find_system_nvcc_skips_a_wrapper_without_headers(tmp_path: Path) -> None:
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'nvcc').write_text('#!/bin/sh\nexit 0\n')
    (tmp_path / 'bin' / 'nvcc').chmod(0o755)
    home = fake_toolkit(tmp_path / 'real', '13.0')
    env = {'PATH': str(tmp_path / 'bin')}
    assert gpu_env.find_system_nvcc(env, fallbacks=()) is None
    assert gpu_env.find_system_nvcc(env, fallbacks=(str(home),)) == (str(home), '13.0')


# --- the toolkit folder and the wheel index -------------------------------------------------

def test_assemble_cuda_home_links_the_packages(tmp_path: Path) -> None:
    root = tmp_path / 'site' / 'nvidia' / 'cu13'
    for rel in ('bin/nvcc', 'bin/ptxas', 'include/cuda_runtime.h', 'include/__init__.py',
                'include/cccl/cub/cub.cuh', 'lib/libcudart.so.13', 'nvvm/bin/cicc'):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    dest = gpu_env.assemble_cuda_home([root], tmp_path / 'cuda')
    assert (dest / 'bin' / 'nvcc').resolve() == root / 'bin' / 'nvcc'
    assert (dest / 'nvvm' / 'bin' / 'cicc').read_text() == 'nvvm/bin/cicc'
    assert (dest / 'include' / 'cccl' / 'cub' / 'cub.cuh').is_file()
    assert not (dest / 'include' / '__init__.py').exists()
    assert (dest / 'lib64' / 'libcudart.so').resolve() == root / 'lib' / 'libcudart.so.13'
    # Rebuilt from scratch on a second call; no nvcc is an error naming the fix.
    assert gpu_env.assemble_cuda_home([root], dest) == dest
    (root / 'bin' / 'nvcc').unlink()
    with pytest.raises(GpuEnvError, match='no nvcc in .*reinstall'):
        gpu_env.assemble_cuda_home([root], tmp_path / 'cuda2')


class _Index(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == '/whl/cu126/torch/' else 404)
        self.end_headers()
        self.wfile.write(b'<a href="torch-2.14.1+cu126.whl">torch</a>')

    def log_message(self, *args) -> None:
        pass


def test_probe_index_passes_a_reachable_index_and_names_the_fix_otherwise(tmp_path) -> None:
    server = http.server.HTTPServer(('127.0.0.1', 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f'http://127.0.0.1:{server.server_port}/whl/cu126'
        gpu_env.probe_index(url)
        assert run(tmp_path, 'probe-index', url).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    line = one_line_error(run(tmp_path, 'probe-index', f'http://127.0.0.1:{port}/whl/cu126'))
    assert f'cannot reach the wheel index http://127.0.0.1:{port}/whl/cu126' in line
    assert 'install torch 2.14.1' in line


def test_setup_env_runs_the_module_and_keeps_the_cpu_cache_path() -> None:
    script = (ROOT / 'tools' / 'setup_env.sh').read_text()
    assert '"$GPU_ENV" targets' in script and '"$GPU_ENV" plan-torch' in script
    assert '"$GPU_ENV" plan-mmcv' in script and 'WHEEL_DIR="$CACHE/wheels/$MMCV_KEY"' in script
