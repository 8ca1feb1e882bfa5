"""End to end through the command-line tools on a tiny copy of the demo data: train, test with
pictures, clear errors for bad input, SIGKILL + --resume, and two-process training on gloo."""
import os
import os.path as osp
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crossformer_mm.datasets.demo_data import make_demo_data

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_crossformer-demo_fpn_24e_demo-coco.py'


def run(args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)
    env.update(kwargs.pop('env', {}))
    return subprocess.run(args, cwd=kwargs.pop('cwd', ROOT), env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('e2e')
    make_demo_data(str(root / 'data'), num_train=8, num_val=4, size=128, seed=0, which=('coco', ))
    data_root = f'{root}/data/demo_coco/'
    loader = "num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)"
    (root / 'tiny.py').write_text(
        f"_base_ = '{DEMO_CONFIG}'\n"
        f"data_root = '{data_root}'\n"
        f"train_dataloader = dict(batch_size=2, {loader})\n"
        f"val_dataloader = dict(batch_size=2, {loader})\n"
        "test_dataloader = val_dataloader\n"
        "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')\n"
        "test_evaluator = val_evaluator\n"
        "train_cfg = dict(max_epochs=2, val_interval=2)\n"
        # Two epochs leave every score below the default 0.05: keep the top boxes regardless.
        "model = dict(test_cfg=dict(score_thr=0.0))\n"
        "default_hooks = dict(logger=dict(interval=1))\n")
    return root


def assert_user_error(result, *needles):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope='module')
def trained(tiny):
    work = tiny / 'work'
    result = run([sys.executable, 'tools/train.py', str(tiny / 'tiny.py'), '--work-dir', str(work)])
    assert result.returncode == 0, result.stderr[-4000:]
    return work, result


def test_train_writes_checkpoints_and_coco_metrics(trained):
    work, result = trained
    assert (work / 'epoch_2.pth').is_file()
    assert open(work / 'last_checkpoint').read().strip().endswith('epoch_2.pth')
    assert 'coco/bbox_mAP' in result.stdout + result.stderr
    # Training shows progress as MM tools do: iterations, ETA and losses.
    log = result.stdout + result.stderr
    assert 'Epoch(train)' in log and 'eta:' in log and 'loss_cls' in log


def test_test_tool_evaluates_and_saves_pictures(tiny, trained):
    work, _ = trained
    result = run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'), str(work / 'epoch_2.pth'),
                  '--work-dir', str(work), '--show-dir', 'vis'])
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'metrics: coco/bbox_mAP=' in result.stdout
    pictures = [p for p in work.rglob('vis/*') if p.suffix in ('.jpg', '.png')]
    assert len(pictures) == 4


def test_missing_config_is_a_clear_error():
    assert_user_error(run([sys.executable, 'tools/train.py', 'configs/demo/nope.py']),
                      'error:', 'does not exist')


def test_unknown_type_names_close_matches(tiny):
    result = run([sys.executable, 'tools/train.py', str(tiny / 'tiny.py'), '--work-dir',
                  str(tiny / 'bad'), '--cfg-options', 'model.backbone.type=CrossFomer'])
    assert_user_error(result, "unknown type 'CrossFomer'", 'model.backbone', 'CrossFormer')


def test_missing_dataset_says_how_to_generate(tiny):
    result = run([sys.executable, 'tools/train.py', str(tiny / 'tiny.py'), '--work-dir',
                  str(tiny / 'bad'), '--cfg-options',
                  f'train_dataloader.dataset.data_root={tiny}/nodata/demo_coco/'])
    assert_user_error(result, 'make_demo_data.py', 'train_dataloader')


def test_bad_checkpoints(tiny):
    assert_user_error(run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'),
                           str(tiny / 'missing.pth')]), 'does not exist')
    junk = tiny / 'junk.pth'
    junk.write_text('this is not a checkpoint')
    assert_user_error(run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'), str(junk),
                           '--work-dir', str(tiny / 'bad')]), 'not a PyTorch checkpoint')


def test_sigkill_then_resume_finishes(tiny):
    work = tiny / 'killed'
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, 'tools/train.py', str(tiny / 'tiny.py'), '--work-dir', str(work),
            '--cfg-options', 'train_cfg.max_epochs=3', 'train_cfg.val_interval=3']
    log_path = tiny / 'killed.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        # Wait for the first checkpoint and for epoch 2 to be under way, then SIGKILL.
        while time.time() < deadline and proc.poll() is None:
            if (work / 'epoch_1.pth').exists() and 'Epoch(train) [2][1/4]' in log_path.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, 'training ended before it could be killed'
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (work / 'epoch_3.pth').exists()
    result = run(args + ['--resume'])
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'resumed epoch: 1' in result.stdout + result.stderr or \
        'resumed epoch: 2' in result.stdout + result.stderr
    assert (work / 'epoch_3.pth').is_file()


def test_dist_train_two_processes_on_gloo(tiny):
    work = tiny / 'dist'
    result = run(['bash', 'tools/dist_train.sh', str(tiny / 'tiny.py'), '2', '--work-dir',
                  str(work)], env=dict(PORT=str(29500 + os.getpid() % 1000)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    assert (work / 'epoch_2.pth').is_file()
    assert 'coco/bbox_mAP' in result.stdout + result.stderr
