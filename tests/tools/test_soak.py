"""Soak run (slow): 200 training iterations of the demo detector, as ``tools/train.py`` builds
it, with the gradients checked at every optimizer step and the resident memory sampled.

The config is ``configs/demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py`` on a small copy
of the demo data (16 images, 128 px, batch 2), switched to an iteration-based loop without
validation or checkpoints. Every optimizer step must see finite gradients (after clipping) on
every parameter that has one, and a positive gradient norm; every iteration a finite loss.
Memory: ``VmRSS`` from ``/proc/self/status`` after each iteration; the median of the last ten
iterations may exceed the median of iterations 51-60 (after warm-up) by at most
``RSS_GROWTH_BOUND_MIB``. The figures are printed at the end of the test.
"""
import math
import os
import statistics
from pathlib import Path
from typing import List

import pytest
import torch
from mmengine.hooks import Hook

from crossformer_mm.datasets.demo_data import make_demo_data
from crossformer_mm.utils.cli import build_runner, prepare_config

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_crossformer-demo_fpn_24e_demo-coco.py'
#: ``CFM_SOAK_ITERS`` shortens the run to check the harness itself (the bound is meant for 200).
ITERS = int(os.environ.get('CFM_SOAK_ITERS', 200))
WARMUP = min(50, ITERS // 4)
#: Allowed growth of the resident memory from after warm-up to the end of the run.
RSS_GROWTH_BOUND_MIB = 64.0


def rss_mib() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS in /proc/self/status')


class SoakHook(Hook):
    """Checks every optimizer step's gradients and every iteration's loss; samples VmRSS."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.rss: List[float] = []
        self.steps = 0
        self.problems: List[str] = []

    def before_train(self, runner) -> None:
        runner.optim_wrapper.optimizer.register_step_pre_hook(self._check_grads)

    def _check_grads(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        total, with_grad = 0.0, 0
        for group in optimizer.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                with_grad += 1
                if not torch.isfinite(p.grad).all():
                    self.problems.append(f'step {self.steps}: non-finite gradient of a '
                                         f'{tuple(p.shape)} parameter')
                    return
                total += float(p.grad.double().square().sum())
        if with_grad == 0 or not total > 0:
            self.problems.append(f'step {self.steps}: {with_grad} gradients, norm^2 {total}')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        loss = float(outputs['loss']) if outputs and 'loss' in outputs else float('nan')
        if not math.isfinite(loss):
            self.problems.append(f'iteration {runner.iter + 1}: loss {loss}')
        self.rss.append(rss_mib())


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_200_iterations_finite_gradients_bounded_memory(tmp_path: Path,
                                                              report_line) -> None:
    make_demo_data(str(tmp_path / 'data'), num_train=16, num_val=2, size=128, seed=0,
                   which=('coco', ))
    data_root = f'{tmp_path}/data/demo_coco/'
    config = tmp_path / 'soak.py'
    config.write_text(
        f"_base_ = '{DEMO_CONFIG}'\n"
        f"data_root = '{data_root}'\n"
        "train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,\n"
        "                        sampler=dict(type='InfiniteSampler', shuffle=True),\n"
        "                        dataset=dict(data_root=data_root))\n"
        f"train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={ITERS},\n"
        f"                 val_interval={10 * ITERS})\n"
        "val_dataloader = None\nval_cfg = None\nval_evaluator = None\n"
        "test_dataloader = None\ntest_cfg = None\ntest_evaluator = None\n"
        "param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,\n"
        f"                        end={WARMUP})]\n"
        "default_hooks = dict(logger=dict(interval=50),\n"
        f"                     checkpoint=dict(by_epoch=False, interval={10 * ITERS},\n"
        "                                     save_last=False))\n"
        "log_processor = dict(by_epoch=False)\n"
        "randomness = dict(seed=0)\n")
    cfg = prepare_config(str(config), str(tmp_path / 'work'), None, 'none',
                         data_keys=('train_dataloader', ))
    runner = build_runner(cfg)
    hook = SoakHook()
    runner.register_hook(hook, priority='LOWEST')
    runner.train()

    assert not hook.problems, hook.problems[:10]
    assert len(hook.rss) == ITERS and hook.steps == ITERS, (len(hook.rss), hook.steps)
    baseline = statistics.median(hook.rss[WARMUP:WARMUP + 10])
    final = statistics.median(hook.rss[-10:])
    growth = final - baseline
    peak = max(hook.rss[WARMUP:])
    message = (f'soak: {ITERS} iterations, {hook.steps} optimizer steps with finite gradients; '
               f'RSS after warm-up {baseline:.1f} MiB, at the end {final:.1f} MiB, growth '
               f'{growth:+.1f} MiB (bound {RSS_GROWTH_BOUND_MIB:.0f} MiB), peak {peak:.1f} MiB')
    report_line(message)
    assert growth <= RSS_GROWTH_BOUND_MIB, message
