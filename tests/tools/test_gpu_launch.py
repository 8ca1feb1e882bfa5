"""No silent CPU training on a GPU node: tools/train.py, tools/test.py and tools/dist_*.sh refuse,
in one line with the fix, to start where ``nvidia-smi`` lists GPUs that torch cannot use (a fake
``nvidia-smi`` on PATH; a CPU-only torch simulated in the subprocesses), while a CPU run asked for
with ``--cpu`` / ``CFM_ALLOW_CPU=1`` still trains. And tools/slurm_*.sh: a fake ``srun`` records
what they launch (the environment's Python, task counts for 4 and 8 GPUs per node)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_crossformer-demo_fpn_24e_demo-coco.py'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A one-epoch demo config on four 96-pixel images."""
    from crossformer_mm.datasets.demo_data import make_demo_data
    root = tmp_path_factory.mktemp('gpu-launch')
    make_demo_data(str(root / 'data'), num_train=4, num_val=2, size=96, seed=0, which=('coco', ))
    data_root = f'{root}/data/demo_coco/'
    loader = 'num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)'
    (root / 'tiny.py').write_text(
        f"_base_ = '{DEMO_CONFIG}'\n"
        f"data_root = '{data_root}'\n"
        f'train_dataloader = dict(batch_size=2, {loader})\n'
        f'val_dataloader = dict(batch_size=2, {loader})\n'
        'test_dataloader = val_dataloader\n'
        "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')\n"
        'test_evaluator = val_evaluator\n'
        'train_cfg = dict(max_epochs=1, val_interval=2)\n')
    return root


@pytest.fixture
def cpu_only_torch(tmp_path):
    """A folder for PYTHONPATH whose sitecustomize makes torch a CPU-only build in every
    process started with it."""
    folder = tmp_path / 'cpu-only-torch'
    folder.mkdir()
    (folder / 'sitecustomize.py').write_text(textwrap.dedent('''
        import torch
        torch.version.cuda = None
    '''))
    return folder


def run(args, extra_path=(), env=None, timeout=600) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHON=sys.executable,
                    PYTHONPATH=os.pathsep.join([str(ROOT), *map(str, extra_path)]))
    for name in ('CFM_ALLOW_CPU', 'CUDA_VISIBLE_DEVICES'):
        full_env.pop(name, None)
    full_env.update(env or {})
    return subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def assert_refused(result, *needles) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if 'refusing' in line or needles[0]
             in line]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_train_refuses_cpu_only_torch_on_gpu_node(tiny, fake_nvidia_smi, cpu_only_torch):
    fake_nvidia_smi('A100', count=8)
    work = tiny / 'refused'
    result = run([sys.executable, 'tools/train.py', str(tiny / 'tiny.py'), '--work-dir',
                  str(work)], extra_path=[cpu_only_torch])
    assert_refused(result, 'refusing to start: torch', 'CPU-only build', '8 NVIDIA GPUs',
                   'setup_env.sh', '--cpu')
    assert not work.exists()  # nothing started


def test_test_tool_refuses_when_torch_cannot_start_cuda(tiny, fake_nvidia_smi):
    """This machine's CUDA build of torch with a GPU listed: CUDA cannot start (no driver)."""
    fake_nvidia_smi('H100')
    result = run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'),
                  str(tiny / 'none.pth')])
    assert_refused(result, 'refusing to start: torch cannot use the GPUs')


def test_dist_train_refuses_before_starting_processes(tiny, fake_nvidia_smi, cpu_only_torch):
    fake_nvidia_smi('V100', count=4, driver='535.104.05')
    work = tiny / 'dist-refused'
    result = run(['bash', 'tools/dist_train.sh', str(tiny / 'tiny.py'), '4', '--work-dir',
                  str(work)], extra_path=[cpu_only_torch])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if 'NVIDIA GPUs' in line]
    assert len(lines) == 1, result.stderr  # one line, from the check before torchrun
    assert 'CPU-only build but this node has 4 NVIDIA GPUs' in lines[0]
    assert 'Traceback' not in result.stderr and 'torch.distributed' not in result.stderr
    assert not work.exists()


def test_explicit_cpu_run_trains_on_gpu_node(tiny, fake_nvidia_smi, cpu_only_torch):
    fake_nvidia_smi('A100', count=8)
    work = tiny / 'cpu-on-purpose'
    result = run(['bash', 'tools/dist_train.sh', str(tiny / 'tiny.py'), '1', '--work-dir',
                  str(work), '--cpu'], extra_path=[cpu_only_torch],
                 env=dict(PORT=str(29500 + os.getpid() % 1000)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    assert (work / 'epoch_1.pth').is_file()


# ------------------------------------------------------------------------------------------
# Slurm
# ------------------------------------------------------------------------------------------


@pytest.fixture
def slurm_repo(tmp_path):
    """A copy of the Slurm scripts in a repository with a .venv, and a fake ``srun`` that writes
    its arguments, one per line, to ``srun-args``."""
    repo = tmp_path / 'repo'
    (repo / 'tools').mkdir(parents=True)
    for name in ('slurm_run.sh', 'slurm_train.sh', 'slurm_test.sh'):
        shutil.copy(ROOT / 'tools' / name, repo / 'tools' / name)
    python = repo / '.venv' / 'bin' / 'python'
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\n')
    python.chmod(0o755)
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'srun').write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/srun-args\n')
    (bin_dir / 'srun').chmod(0o755)
    return repo, bin_dir, tmp_path / 'srun-args'


def slurm(slurm_repo, script: str, *args: str, **env: str):
    repo, bin_dir, record = slurm_repo
    full_env = {k: v for k, v in os.environ.items()
                if k not in ('PYTHON', 'CFM_VENV', 'SLURM_GPUS_ON_NODE', 'GPUS', 'GPUS_PER_NODE',
                             'SRUN_ARGS', 'CPUS_PER_TASK')}
    full_env['PATH'] = f'{bin_dir}{os.pathsep}{os.environ["PATH"]}'
    full_env.update(env)
    result = subprocess.run(['bash', str(repo / 'tools' / script), *args], env=full_env,
                            capture_output=True, text=True, timeout=60)
    argv = record.read_text().splitlines() if result.returncode == 0 else None
    if record.exists():
        record.unlink()
    return result, argv


@pytest.mark.parametrize('gpus,per_node,nodes', [('8', None, 1), ('4', None, 1), ('16', '4', 4),
                                                  ('16', '8', 2)])
def test_slurm_train_task_counts_and_python(slurm_repo, gpus, per_node, nodes):
    env = dict(GPUS=gpus, **({'GPUS_PER_NODE': per_node} if per_node else {}))
    result, argv = slurm(slurm_repo, 'slurm_train.sh', 'gpu', 'job', 'cfg.py', 'work', '--amp',
                         **env)
    assert result.returncode == 0, result.stderr
    per = per_node or gpus
    for option in ('-p', 'gpu', '--job-name=job', f'--nodes={nodes}', f'--gres=gpu:{per}',
                   f'--ntasks={gpus}', f'--ntasks-per-node={per}', '--cpus-per-task=5'):
        assert option in argv, (option, argv)
    repo = slurm_repo[0]
    tool = argv.index(str(repo / 'tools' / 'train.py'))
    assert argv[tool - 2:tool] == [str(repo / '.venv' / 'bin' / 'python'), '-u']
    assert argv[tool + 1:] == ['cfg.py', '--work-dir=work', '--amp', '--launcher', 'slurm']


def test_slurm_test_python_and_gpus_per_node_from_slurm(slurm_repo):
    result, argv = slurm(slurm_repo, 'slurm_test.sh', 'gpu', 'job', 'cfg.py', 'ckpt.pth',
                         GPUS='8', SLURM_GPUS_ON_NODE='4', PYTHON='/opt/env/bin/python',
                         SRUN_ARGS='--qos=high --time=1:00:00')
    assert result.returncode == 0, result.stderr
    assert '--nodes=2' in argv and '--ntasks-per-node=4' in argv and '--gres=gpu:4' in argv
    assert '--qos=high' in argv and '--time=1:00:00' in argv
    tool = argv.index(str(slurm_repo[0] / 'tools' / 'test.py'))
    assert argv[tool - 2] == '/opt/env/bin/python'
    assert argv[tool + 1:] == ['cfg.py', 'ckpt.pth', '--launcher', 'slurm']


def test_slurm_without_venv_uses_python_on_path(slurm_repo):
    shutil.rmtree(slurm_repo[0] / '.venv')
    result, argv = slurm(slurm_repo, 'slurm_train.sh', 'gpu', 'job', 'cfg.py', 'work', GPUS='2')
    assert result.returncode == 0, result.stderr
    assert argv[argv.index(str(slurm_repo[0] / 'tools' / 'train.py')) - 2] == 'python'
    assert '--ntasks=2' in argv and '--ntasks-per-node=2' in argv


@pytest.mark.parametrize('env,message', [
    (dict(GPUS='12', GPUS_PER_NODE='8'), 'GPUS (12) must be a multiple of GPUS_PER_NODE (8)'),
    (dict(GPUS='eight'), "GPUS must be a positive whole number, got 'eight'"),
])
def test_slurm_bad_counts_are_one_line(slurm_repo, env, message):
    result, _ = slurm(slurm_repo, 'slurm_train.sh', 'gpu', 'job', 'cfg.py', 'work', **env)
    assert result.returncode == 2 and result.stderr.strip() == f'error: {message}'
