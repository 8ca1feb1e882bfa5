"""benchmarks/demo_profile.py: the training iteration taken apart computes what ``train_step``
computes, and the script runs end to end on a tiny copy of the demo data (two timed iterations,
two test images drawn)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossformer_mm.datasets.demo_data import make_demo_data

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'benchmarks'))
sys.path.insert(0, str(ROOT / 'tools' / 'analysis_tools'))
from _harness import LapTimer, cpu_description  # noqa: E402
from demo_profile import TEST_PARTS, TRAIN_PARTS, profile_training  # noqa: E402

SCRIPT = ROOT / 'benchmarks' / 'demo_profile.py'
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_crossformer-demo_fpn_24e_demo-coco.py'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('profile')
    make_demo_data(str(root / 'data'), num_train=4, num_val=2, size=128, seed=0, which=('coco', ))
    data_root = f'{root}/data/demo_coco/'
    loader = 'num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)'
    (root / 'tiny.py').write_text(
        f"_base_ = '{DEMO_CONFIG}'\n"
        f"data_root = '{data_root}'\n"
        f"train_dataloader = dict(batch_size=2, {loader})\n"
        f"val_dataloader = dict(batch_size=1, {loader})\n"
        "test_dataloader = val_dataloader\n"
        "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')\n"
        "test_evaluator = val_evaluator\n"
        # random weights score below 0.05 and 0.3: keep boxes to evaluate and draw
        "model = dict(test_cfg=dict(score_thr=0.0))\n"
        "default_hooks = dict(visualization=dict(score_thr=0.0))\n")
    return root


def test_split_iteration_equals_train_step(tiny):
    """One iteration through the profile's parts and one ``train_step`` from the same weights on
    the same batch leave the same weights (the same losses, gradients and step)."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from crossformer_mm.utils.config import load_config
    from get_flops import build_model
    cfg = load_config(str(tiny / 'tiny.py'))
    torch.manual_seed(0)
    model = build_model(cfg)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model.init_weights()
        other = copy.deepcopy(model)
        before = [p.detach().clone() for p in model.parameters()]
        batch = next(iter(Runner.build_dataloader(cfg.train_dataloader, seed=0)))
        wrappers = [build_optim_wrapper(m, copy.deepcopy(cfg.optim_wrapper))
                    for m in (model, other)]
        timer = LapTimer()
        torch.manual_seed(1)  # drop path draws the same masks in both
        rows = profile_training(model, wrappers[0], [copy.deepcopy(batch)], iters=1, warmup=0,
                                clock=timer)
        torch.manual_seed(1)
        other.train()
        other.train_step(copy.deepcopy(batch), wrappers[1])
    assert list(rows[0]) == list(TRAIN_PARTS) and all(v >= 0 for v in rows[0].values())
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    changed = sum(int(not torch.equal(a, b)) for a, b in zip(model.parameters(), before))
    assert changed > len(before) // 2  # the step moved the weights


def test_script_runs_and_prints_the_tables(tiny, tmp_path):
    out = tmp_path / 'profile.json'
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny / 'tiny.py'), '--iters', '2', '--warmup', '1',
         '--threads', '1', '--json', str(out)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    assert f'CPU: {cpu_description()}' in text
    for part in TRAIN_PARTS + TEST_PARTS:
        assert f'| {part} | ' in text, part
    data = json.loads(out.read_text())
    assert len(data['train']) == 2
    for row in data['train']:
        assert set(row) == set(TRAIN_PARTS) and all(v >= 0 for v in row.values())
        assert row['backward'] > 0 and row['backbone'] > 0
    test = data['test']
    assert test['images'] == 2 and data['pictures'] == 2
    assert set(test['seconds']) == set(TEST_PARTS) and test['seconds']['test_step'] > 0
    assert 'coco/bbox_mAP' in test['metrics']
    assert data['hook'] == 'CFDetVisualizationHook'


def test_two_stage_config_is_refused(tmp_path):
    cfg = ROOT / 'configs' / 'mask_rcnn' / 'mask-rcnn_crossformer-t_fpn_1x_coco.py'
    result = subprocess.run([sys.executable, str(SCRIPT), str(cfg), '--iters', '1'], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert 'is not a single-stage detector' in result.stderr
