"""tools/analysis_tools/compare.py: a matrix of two tiny detector configs x two seeds trained to
the end of their schedules writes one JSON per run and one table with mean ± spread under the
command and the CPU; a rerun skips the finished runs and resumes the ones killed midway from
their last checkpoint."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config
from tiny_data import tiny_demo_coco

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
sys.path.insert(0, str(ROOT / 'benchmarks'))
from _harness import cpu_description  # noqa: E402
from compare import Eta, Run, fmt_duration, table  # noqa: E402

COMPARE = ROOT / 'tools' / 'analysis_tools' / 'compare.py'
# The demo RetinaNet at 128x128 without random augmentation (4 epochs there, 2 here).
DET_CONFIG = (ROOT / 'configs' / 'demo' /
              'retinanet_crossformer-demo_fpn_deterministic-4e_demo-coco.py')
R18_CONFIG = ROOT / 'configs' / 'retinanet' / 'retinanet_r18-c32_fpn_24e_demo-coco.py'
KILL_SWITCH_DIR = Path(__file__).resolve().parent  # kill_switch.py


def _result(config: str, seed: int, ap: float, **kw) -> dict:
    base = dict(config=config, task='det', seed=seed, metrics={'coco/bbox_mAP': ap},
                params=2.5e6, flops=1.5e9, flops_shape=[256, 256], train_s_per_iter=0.5,
                total_s=130.0, infer_img_per_s=10.0, peak_mib=800.0, peak_growth_mib=300.0,
                resumed_from=None)
    base.update(kw)
    return base


def test_table_pools_seeds_mean_and_half_range():
    results = [_result('a/x.py', 0, 0.60, train_s_per_iter=0.4, peak_mib=700.0),
               _result('a/x.py', 1, 0.64, train_s_per_iter=0.6, peak_mib=900.0,
                       resumed_from=4),
               _result('b/y.py', 0, 0.50)]
    text = table(results, ['x.py', 'y.py']).splitlines()
    assert text[0].split(' | ')[1:4] == ['box AP', 'seeds', 'params (M)']
    x = [c.strip() for c in text[2].strip('|').split('|')]
    # mean ± half the range, seeds, mean s/iter, the highest peak memory, * for the resumed run
    assert x[:3] == ['x.py*', '62.0 ± 2.0', '0,1']
    assert x[5] == '0.500' and x[6] == '2m10s' and x[8] == '900 (+300)'
    y = [c.strip() for c in text[3].strip('|').split('|')]
    assert y[:3] == ['y.py', '50.0', '0']


def test_eta_uses_measured_rates():
    eta = Eta()
    a = Run('a.py', 'a.py', 'det', 0, 100, '/tmp/a', None)
    b = Run('b.py', 'b.py', 'det', 0, 200, '/tmp/b', None)
    assert eta.matrix_left(a, 10, None, [b]) is None  # nothing measured yet
    # the current run at 0.5 s/it, b unknown: the mean of the known rates (a's, from its result)
    eta.learn(dict(config='a.py', iters=100, train_s=50.0, test_s=5.0))
    assert eta.run_left(a, 40) == pytest.approx(60 * 0.5 + 5.0)
    assert eta.matrix_left(a, 40, 0.5, [b]) == pytest.approx(35.0 + 200 * 0.5)
    eta.learn(dict(config='b.py', iters=200, train_s=200.0, test_s=0.0))
    assert eta.matrix_left(None, 0, None, [a, b]) == pytest.approx(55.0 + 200.0)
    assert [fmt_duration(s) for s in (42.04, 725, 11220, None)] == ['42.0s', '12m05s', '3h07m',
                                                                     '?']


@pytest.fixture(scope='module')
def matrix(tmp_path_factory):
    """Two tiny configs (the demo CrossFormer RetinaNet and its ResNet-18 baseline, 8 training
    images at 128x128, batch 2, 2 epochs = 8 iterations) on a tiny copy of the demo data; the
    CrossFormer one carries the test's kill switch."""
    root = tmp_path_factory.mktemp('compare')
    common = tiny_demo_coco(root)
    (root / 'tiny-cf.py').write_text(
        f"_base_ = '{DET_CONFIG}'\n"
        "custom_imports = dict(imports=['crossformer_mm', 'kill_switch'],\n"
        "                      allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='KillSwitchHook')]\n"
        "randomness = dict(deterministic=False)\n"
        "train_cfg = dict(max_epochs=2)\n"
        "param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,\n"
        "                        end=4)]\n" + common)
    backbone = dict(Config.fromfile(str(R18_CONFIG)).model.backbone.to_dict(), _delete_=True)
    (root / 'tiny-r18.py').write_text(
        f"_base_ = '{DET_CONFIG}'\n"
        f"model = dict(backbone={backbone!r})\n"
        "randomness = dict(deterministic=False)\n" + common)
    return root


def compare(root: Path, *extra: str, env: dict = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=f'{ROOT}{os.pathsep}{KILL_SWITCH_DIR}',
                    OMP_NUM_THREADS='1')
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(COMPARE), str(root / 'tiny-cf.py'), str(root / 'tiny-r18.py'),
         '--seeds', '0', '1', '--full-schedule', '--work-dir', str(root / 'runs'),
         '--progress-every', '0', '--flops-shape', '128', '128', '--threads', '1', *extra],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow  # about 2 minutes: four short trainings, one killed and resumed
@pytest.mark.timeout(1200)
def test_matrix_runs_skips_finished_and_resumes_killed(matrix):
    runs = matrix / 'runs'
    # 1. The CrossFormer runs die in the 6th iteration (epoch 2): the matrix goes on without them.
    first = compare(matrix, env=dict(KILL_AT='train:6'))
    log = first.stdout + first.stderr
    assert first.returncode == 1, log[-4000:]
    assert '2 of 4 runs did not finish: tiny-cf.py seed 0, tiny-cf.py seed 1' in first.stderr
    for seed in (0, 1):
        assert (runs / 'tiny-r18' / f'seed{seed}' / 'result.json').is_file()
        assert not (runs / 'tiny-cf' / f'seed{seed}' / 'result.json').exists()
        assert (runs / 'tiny-cf' / f'seed{seed}' / 'work' / 'epoch_1.pth').is_file()
    # progress: iterations, s/it and time left, per run and for the matrix
    assert re.search(r'\[3/4\] tiny-r18.py seed 0: iteration 8/8 \(100%\), [\d.]+ s/it, run '
                     r'\S+ left, all runs \S+ left \(1 more\)', first.stdout), first.stdout
    r18 = {seed: (runs / 'tiny-r18' / f'seed{seed}' / 'result.json').read_bytes()
           for seed in (0, 1)}

    # 2. The same command: the ResNet runs are skipped, the CrossFormer runs resume at epoch 2.
    second = compare(matrix, '--out', str(matrix / 'table.md'))
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-4000:]
    for seed in (0, 1):
        assert f'tiny-r18.py seed {seed}: finished earlier, skipped' in second.stdout
        assert (runs / 'tiny-r18' / f'seed{seed}' / 'result.json').read_bytes() == r18[seed]
        assert f'tiny-cf.py seed {seed}: resuming' in second.stdout
    assert 'iteration 5/8' in second.stdout and 'iteration 1/8' not in second.stdout

    results = {(name, seed): json.loads((runs / name / f'seed{seed}' / 'result.json').read_text())
               for name in ('tiny-cf', 'tiny-r18') for seed in (0, 1)}
    for (name, seed), r in results.items():
        assert r['iters'] == 8 and r['seed'] == seed and r['test_images'] == 4
        assert r['resumed_from'] == (4 if name == 'tiny-cf' else None)
        assert 0 <= r['metrics']['coco/bbox_mAP'] <= 1
        assert r['params'] > 1e6 and r['flops'] > 0 and r['peak_mib'] > 0
        assert r['train_s'] > 0 and r['total_s'] == pytest.approx(r['train_s'] + r['test_s'])
        assert r['settings']['seed'] == seed and r['settings']['mode'] == 'full-schedule'
    # the seeds give different models; the two configs different parameter counts
    for name in ('tiny-cf', 'tiny-r18'):
        assert results[name, 0]['first_loss'] != results[name, 1]['first_loss']
    assert results['tiny-cf', 0]['params'] != results['tiny-r18', 0]['params']
    # no checkpoints left behind by finished runs (no --keep-checkpoints)
    assert not list(runs.rglob('*.pth'))

    # The report: command and CPU above one table with both configs and their two seeds.
    text = (matrix / 'table.md').read_text()
    assert text in second.stdout
    lines = text.splitlines()
    assert lines[0].startswith('command: python ') and '--full-schedule' in lines[0]
    assert lines[1] == f'CPU: {cpu_description()}'
    rows = {line.split(' | ')[0].lstrip('| '): line for line in lines if line.startswith('| tiny')}
    assert set(rows) == {'tiny-cf.py*', 'tiny-r18.py'}
    for name, key in (('tiny-cf.py*', 'tiny-cf'), ('tiny-r18.py', 'tiny-r18')):
        aps = [100 * results[key, s]['metrics']['coco/bbox_mAP'] for s in (0, 1)]
        want = f'{sum(aps) / 2:.1f} ± {abs(aps[0] - aps[1]) / 2:.1f}'
        assert f'| {want} | 0,1 |' in rows[name], rows[name]
    assert json.loads((matrix / 'table.json').read_text())[0]['config'].endswith('tiny-cf.py')


def test_missing_config_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(COMPARE), str(tmp_path / 'nope.py'),
                             '--work-dir', str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert "error: config '" in result.stderr and 'does not exist' in result.stderr
