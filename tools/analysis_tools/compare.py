"""Side-by-side comparison of configs on the same data, recipe and seeds: one table per task.

    python tools/analysis_tools/compare.py CONFIG [CONFIG ...] [--seeds S [S ...]]
        [--iters N | --full-schedule] [--batch B] [--recipe ours|own] [--demo-data]
        [--work-dir DIR] [--flops-shape H W] [--val-images K] [--workers W] [--threads T]
        [--device cpu|cuda] [--progress-every SEC] [--keep-checkpoints] [--out FILE.md]

Typical matrices: one of our configs and the MMDetection / MMSegmentation configs it derives from
(``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py`` vs ``configs/retinanet/...``), or a demo
config and the same model with an upstream backbone at the same widths
(``configs/demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py`` vs
``configs/retinanet/retinanet_r18-c32_fpn_24e_demo-coco.py`` and
``configs/retinanet/retinanet_swin-demo-p4-w7_fpn_24e_demo-coco.py``). The old form
``compare.py OURS BASELINE`` is a matrix of two configs and one seed.

Every (config, seed) pair is one run, in its own process (so peak memory is its own). A run
builds the model from scratch (``Pretrained`` init configs are dropped: every model starts from
random weights, seeded by the run's seed), trains it, then runs the test set (the first K images
with ``--val-images``, batch 1) through its evaluator.

* ``--iters N`` (default 100): ``N`` iterations of ``train_step`` with batch ``B`` (default 4) and
  a linear warm-up over the first N/5, no LR schedule after it.
* ``--full-schedule``: the config's own training loop to its end (``max_epochs`` / ``max_iters``),
  with its LR schedule, through mmengine's Runner, batch ``B`` only if given. Validation during
  training is switched off (the test at the end is the evaluation) and a checkpoint is saved every
  epoch (every tenth of the iterations for iteration-based loops), so that a killed run resumes.

``--recipe ours`` (default): in each task the first config listed gives every config of that task
its ``optim_wrapper`` (with ``--full-schedule`` also its ``train_cfg`` and ``param_scheduler``);
``--recipe own``: each config keeps its own. ``--demo-data`` swaps the configs' datasets for the
embedded demo data (``python tools/make_demo_data.py``; COCO for detectors, ADE20K for
segmentors, class counts set to the demo's) so that COCO / ADE20K configs run without the real
datasets.

Resuming: each run lives in ``--work-dir``/<config name>/seed<S>/ (default work dir
``work_dirs/compare``): ``result.json`` once finished, ``log.txt`` (the run's output), ``work/``
(the Runner's work dir). Rerunning the same command skips every run whose ``result.json`` was made
with the same settings (config contents, recipe, data, seed, ...), resumes a ``--full-schedule``
run killed midway from its last checkpoint and restarts an ``--iters`` run. A failed run does not
stop the matrix: the others go on, the tables show the finished ones and the exit status is 1.

Progress: the current run's iteration, its s/iteration (wall clock, data loading included), the
time left in the run and in the whole matrix (the runs left, each at its config's measured
s/iteration, or the mean of the configs measured so far, plus their test time when known), every
``--progress-every`` seconds.

Reported per config (mean over the seeds that finished): the metric (COCO box / mask AP or mIoU,
in %; mean ± half the range over the seeds), parameters, FLOPs (one image of ``--flops-shape``, by
default a segmentor's training crop or else 256x256, counted by ``get_flops.py``), training
seconds per iteration (median over the iterations after the first 5, forward + backward + step,
data loading excluded), total time (training, data loading and checkpoints included, each
iteration counted once if a run was resumed, plus the test), inference images per second (``test_step``, batch 1, data loading excluded) and peak memory (the highest of
the seeds) from the model's build to the end of the test (``benchmarks/_harness.peak_memory``,
which the benchmarks use too; CUDA: peak allocated; CPU: the process's peak resident set size,
``VmHWM`` reset through ``/proc/self/clear_refs`` right before the build, and in brackets its
growth over the resident set at that moment; a resumed run's is that of its last part). The
command line, the CPU (``_harness.cpu_description``) and the code's commit are printed above the
tables.
"""
import argparse
import copy
import hashlib
import json
import os
import os.path as osp
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.append(osp.join(ROOT, 'benchmarks'))  # last: its scripts shadow nothing

from _harness import code_label, cpu_description, peak_memory  # noqa: E402

DEMO_BASES = {
    'det': 'configs/demo/_base_/demo-coco_detection.py',
    'ins': 'configs/demo/_base_/demo-coco_instance.py',
    'seg': 'configs/demo/_base_/demo-ade_semantic.py',
}
DEMO_CLASSES = {'det': 5, 'ins': 5, 'seg': 6}
METRICS = {'det': ['coco/bbox_mAP'], 'ins': ['coco/bbox_mAP', 'coco/segm_mAP'], 'seg': ['mIoU']}
METRIC_NAMES = {'coco/bbox_mAP': 'box AP', 'coco/segm_mAP': 'mask AP', 'mIoU': 'mIoU'}
TASK_NAMES = {'det': 'object detection', 'ins': 'instance segmentation',
              'seg': 'semantic segmentation'}

#: Prefix of the progress lines a run prints (JSON after it), read by the matrix process.
PROGRESS = '@@progress '
#: Iterations at the start of a run left out of the median s/iteration (warm-up).
WARMUP_ITERS = 5


class UserError(Exception):
    """A mistake in the command line, printed as one line (exit status 2)."""


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------
def _walk(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _walk(value)


def _task(cfg: Any) -> str:
    if cfg.get('default_scope') == 'mmseg':
        return 'seg'
    return 'ins' if any('mask_head' in d for d in _walk(cfg.model)) else 'det'


def load_cfg(path: str, demo_data: bool, batch: Optional[int], val_images: Optional[int],
             workers: int = 0) -> Any:
    """The config with its dataloaders set up for the comparison (``batch`` None: its own)."""
    from crossformer_mm.utils.config import load_config
    cfg = load_config(path)
    kind = _task(cfg)
    if demo_data:
        demo = load_config(osp.join(ROOT, DEMO_BASES[kind]))
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                    'test_evaluator'):
            cfg[key] = copy.deepcopy(demo[key])
        for d in _walk(cfg.model):
            if 'num_classes' in d:
                d['num_classes'] = DEMO_CLASSES[kind]
    if batch:
        cfg.train_dataloader.batch_size = batch
    cfg.train_dataloader.update(num_workers=workers, persistent_workers=workers > 0)
    cfg.test_dataloader.update(batch_size=1, num_workers=0, persistent_workers=False)
    if val_images:
        cfg.test_dataloader.dataset['indices'] = val_images
    return cfg


def apply_recipe(cfg: Any, recipe: Any, full_schedule: bool) -> None:
    """Give ``cfg`` the optimizer (and with ``full_schedule`` the schedule) of ``recipe``."""
    cfg.optim_wrapper = copy.deepcopy(recipe.optim_wrapper)
    if full_schedule:
        for key in ('train_cfg', 'param_scheduler'):
            if key in recipe:
                cfg[key] = copy.deepcopy(recipe[key])


def prepare_cfg(config: str, recipe_config: Optional[str], args: argparse.Namespace) -> Any:
    """The config exactly as a run uses it (before the per-run seed and work dir)."""
    from crossformer_mm.utils.config import load_config
    batch = args.batch if args.batch else (None if args.full_schedule else 4)
    cfg = load_cfg(config, args.demo_data, batch, args.val_images, args.workers)
    if recipe_config:
        apply_recipe(cfg, load_config(recipe_config), args.full_schedule)
    return cfg


def _scoped(cfg: Any):
    """Context in which ``cfg``'s registries resolve (its upstream modules registered)."""
    from get_flops import register_scope
    from mmengine.registry import DefaultScope
    scope = cfg.get('default_scope', 'mmdet')
    register_scope(scope)
    return DefaultScope.overwrite_default_scope(scope)


def schedule_length(cfg: Any) -> int:
    """Training iterations of ``cfg``'s own loop (``max_iters``, or ``max_epochs`` times the
    batches per epoch)."""
    from mmengine.runner import Runner
    train_cfg = cfg.get('train_cfg') or {}
    if train_cfg.get('max_iters'):
        return int(train_cfg['max_iters'])
    if not train_cfg.get('max_epochs'):
        raise UserError('--full-schedule needs `train_cfg.max_epochs` or `train_cfg.max_iters` '
                        'in the config')
    with _scoped(cfg):
        loader = Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader), seed=0)
    return int(train_cfg['max_epochs']) * len(loader)


def flops_shape(cfg: Any, given: Optional[List[int]]) -> Tuple[int, int]:
    """``given``, else the fixed input size of the config's data preprocessor (a segmentor's
    training crop), else 256x256 (the demo COCO images)."""
    if given:
        return int(given[0]), int(given[1])
    size = (cfg.model.get('data_preprocessor') or {}).get('size')
    return (int(size[0]), int(size[1])) if size else (256, 256)


def _fingerprint(cfg: Any) -> str:
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# One run (in its own process)
# --------------------------------------------------------------------------------------------
def _progress(done: int, total: int, wall_s: float) -> None:
    print(PROGRESS + json.dumps(dict(iter=done, total=total, wall_s=wall_s)), flush=True)


def _test(model: Any, cfg: Any, device: Any) -> Tuple[Dict[str, float], List[float], float]:
    """Runs the test set through ``model`` and the evaluator: metrics, per-image
    ``test_step`` seconds, wall seconds of the whole test."""
    import torch
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner
    start = time.perf_counter()
    model.eval()
    loader = Runner.build_dataloader(cfg.test_dataloader)
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    infer = []
    with torch.no_grad():
        for data in loader:
            if device.type == 'cuda':
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs = model.test_step(data)
            if device.type == 'cuda':
                torch.cuda.synchronize()
            infer.append(time.perf_counter() - t0)
            evaluator.process(outputs, data)
    metrics = evaluator.evaluate(len(loader.dataset))
    return metrics, infer, time.perf_counter() - start


def _train_iters(args: argparse.Namespace, cfg: Any, device: Any) -> Tuple[Any, Dict[str, Any]]:
    """``--iters N``: N train steps in a plain loop; returns the model and the timings."""
    import torch
    from mmengine.optim import LinearLR, build_optim_wrapper
    from mmengine.runner import Runner
    from get_flops import build_model
    model = build_model(cfg)
    model.init_weights()
    model.to(device)
    optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    warmup = LinearLR(optim_wrapper, start_factor=0.001, by_epoch=False, begin=0,
                      end=max(1, args.iters // 5))
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=args.seed)
    model.train()
    steps, walls, losses = [], [], []
    it = iter(loader)
    for i in range(args.iters):
        w0 = time.perf_counter()
        try:
            data = next(it)
        except StopIteration:
            it = iter(loader)
            data = next(it)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        log_vars = model.train_step(data, optim_wrapper)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        end = time.perf_counter()
        steps.append(end - t0)
        walls.append(end - w0)
        losses.append(float(log_vars['loss']))
        warmup.step()
        _progress(i + 1, args.iters, walls[-1])
    return model, dict(steps=steps, walls=walls, losses=losses, resumed_from=None)


class _StepTimes:
    """Times every training iteration of a Runner: ``train_step`` alone (between the last
    ``before_train_iter`` and the first ``after_train_iter`` hook) and the wall clock since the
    previous iteration ended (data loading, hooks, checkpoints). Each iteration is appended to a
    JSON-lines file at once, so that a killed run keeps what it measured."""

    def __init__(self, path: str) -> None:
        from mmengine.hooks import Hook
        self.path = path
        self.resumed_from: Optional[int] = None
        self._t0 = self._last = 0.0
        times = self

        class Start(Hook):
            def before_train(self, runner) -> None:
                times.resumed_from = runner.iter or None
                times._last = time.perf_counter()

            def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
                times._t0 = time.perf_counter()

        class End(Hook):
            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
                now = time.perf_counter()
                step, wall = now - times._t0, now - times._last
                times._last = now
                loss = float(outputs['loss']) if outputs and 'loss' in outputs else None
                with open(times.path, 'a') as f:
                    f.write(json.dumps(dict(iter=runner.iter + 1, step_s=step, wall_s=wall,
                                            loss=loss)) + '\n')
                _progress(runner.iter + 1, runner.max_iters, wall)

        self.start, self.end = Start(), End()

    def read(self) -> Dict[str, Any]:
        """Every iteration once (the last measurement of an iteration repeated after a resume)."""
        by_iter: Dict[int, dict] = {}
        with open(self.path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    by_iter[row['iter']] = row
        rows = [by_iter[k] for k in sorted(by_iter)]
        return dict(steps=[r['step_s'] for r in rows], walls=[r['wall_s'] for r in rows],
                    losses=[r['loss'] for r in rows if r['loss'] is not None],
                    resumed_from=self.resumed_from)


def _train_full(args: argparse.Namespace, cfg: Any) -> Tuple[Any, Dict[str, Any]]:
    """``--full-schedule``: the config's own loop through the Runner, resumed from the run's
    last checkpoint if there is one; returns the trained model and the timings."""
    from crossformer_mm.compat.checkpoint import find_resume_checkpoint, remove_torn_files
    from crossformer_mm.utils.cli import build_runner
    from get_flops import _no_pretrained
    work = osp.join(args.run_dir, 'work')
    os.makedirs(work, exist_ok=True)
    cfg.work_dir = work
    cfg.launcher = 'none'
    deterministic = (cfg.get('randomness') or {}).get('deterministic', False)
    cfg.randomness = dict(seed=args.seed, deterministic=deterministic)
    _no_pretrained(cfg.model)
    # The test after training is the evaluation: no validation loop, no `save_best`.
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    for key in ('val_interval', 'val_begin', 'dynamic_intervals'):
        cfg.train_cfg.pop(key, None)
    by_epoch = 'max_epochs' in cfg.train_cfg
    interval = 1 if by_epoch else max(1, int(cfg.train_cfg['max_iters']) // 10)
    cfg.default_hooks['checkpoint'] = dict(type='CheckpointHook', by_epoch=by_epoch,
                                           interval=interval, max_keep_ckpts=2)
    found = find_resume_checkpoint(work)
    remove_torn_files(work)
    cfg.resume, cfg.load_from = found is not None, found
    times_path = osp.join(args.run_dir, 'iterations.jsonl')
    if found is None and osp.exists(times_path):
        os.remove(times_path)  # no checkpoint: every iteration runs again
    runner = build_runner(cfg)
    times = _StepTimes(times_path)
    runner.register_hook(times.start, 'LOWEST')
    runner.register_hook(times.end, 'HIGHEST')
    model = runner.train()
    return model, times.read()


def worker(args: argparse.Namespace) -> Dict[str, Any]:
    """Train + test one config with one seed; returns the measurements."""
    import torch
    from mmengine.runner import set_random_seed

    import crossformer_mm  # noqa: F401
    from get_flops import complexity

    set_random_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = prepare_cfg(args.config, args.recipe_config, args)
    kind = _task(cfg)
    device = torch.device(args.device)
    started = time.perf_counter()
    with peak_memory(device.type) as mem:
        with _scoped(cfg):
            if args.full_schedule:
                model, trained = _train_full(args, cfg)
            else:
                model, trained = _train_iters(args, cfg, device)
            print('training done; testing', flush=True)
            metrics, infer, test_s = _test(model, cfg, device)
    peak = mem.base_mib + mem.peak_mib
    peak_growth = None if device.type == 'cuda' else mem.peak_mib  # over the RSS before the build
    model.cpu()
    shape = flops_shape(cfg, args.flops_shape)
    cx = complexity(cfg, shape, model)
    steps = trained['steps']
    steady = steps[WARMUP_ITERS:] if len(steps) > WARMUP_ITERS else steps
    train_s = sum(trained['walls'])
    losses = trained['losses'] or [float('nan')]
    return dict(
        config=args.config, settings=_read_json(osp.join(args.run_dir, 'settings.json')),
        task=kind, seed=args.seed, iters=len(steps),
        batch=int(cfg.train_dataloader.batch_size),
        metrics={k: float(metrics[k]) for k in METRICS[kind] if k in metrics},
        params=cx['params'], flops=cx['flops'], flops_shape=list(shape),
        train_s_per_iter=statistics.median(steady), train_s=train_s, test_s=test_s,
        total_s=train_s + test_s, process_s=time.perf_counter() - started,
        first_loss=losses[0], last_loss=losses[-1],
        infer_img_per_s=len(infer) / sum(infer), test_images=len(infer), peak_mib=peak,
        peak_growth_mib=peak_growth, resumed_from=trained['resumed_from'], device=str(device),
        threads=torch.get_num_threads(), cpu=cpu_description(), torch=torch.__version__,
        commit=code_label(ROOT))


# --------------------------------------------------------------------------------------------
# The matrix (this process)
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One (config, seed) pair of the matrix."""
    config: str
    name: str
    task: str
    seed: int
    iters: int
    folder: str
    recipe_config: Optional[str]
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f'{self.name} seed {self.seed}'

    @property
    def result_path(self) -> str:
        return osp.join(self.folder, 'result.json')


def fmt_duration(seconds: Optional[float]) -> str:
    """``42.0s``, ``12m05s``, ``3h07m``; ``?`` when unknown."""
    if seconds is None:
        return '?'
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f'{seconds:.1f}s'
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f'{minutes}m{sec:02d}s'
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m'


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: Any) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


class Eta:
    """Time left in the matrix from the seconds per iteration measured so far."""

    def __init__(self) -> None:
        self.rate: Dict[str, float] = {}    # config -> wall seconds per training iteration
        self.test_s: Dict[str, float] = {}  # config -> seconds of its test

    def learn(self, result: dict) -> None:
        if result.get('iters'):
            self.rate[result['config']] = result['train_s'] / result['iters']
        self.test_s[result['config']] = result.get('test_s', 0.0)

    def run_left(self, run: Run, done: int = 0, rate: Optional[float] = None) -> Optional[float]:
        rate = rate or self.rate.get(run.config) or (
            statistics.mean(self.rate.values()) if self.rate else None)
        if rate is None:
            return None
        return (run.iters - done) * rate + self.test_s.get(run.config, 0.0)

    def matrix_left(self, current: Optional[Run], done: int, rate: Optional[float],
                    pending: List[Run]) -> Optional[float]:
        parts = [self.run_left(current, done, rate)] if current else []
        for run in pending:
            same = current is not None and run.config == current.config
            parts.append(self.run_left(run, 0, rate if same else None))
        if any(p is None for p in parts):
            return None
        return sum(parts)


def launch(run: Run, args: argparse.Namespace, index: int, total: int, eta: Eta,
           pending: List[Run]) -> Optional[dict]:
    """Runs one (config, seed) in a fresh process, printing its progress; its result or None."""
    cmd = [sys.executable, osp.abspath(__file__), '--worker', '--config', run.config,
           '--run-dir', run.folder, '--seed', str(run.seed), '--device', args.device,
           '--workers', str(args.workers)]
    if args.flops_shape:
        cmd += ['--flops-shape', *map(str, args.flops_shape)]
    cmd += ['--full-schedule'] if args.full_schedule else ['--iters', str(args.iters)]
    for flag, value in (('--batch', args.batch), ('--val-images', args.val_images),
                        ('--threads', args.threads), ('--recipe-config', run.recipe_config)):
        if value:
            cmd += [flag, str(value)]
    if args.demo_data:
        cmd.append('--demo-data')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               PYTHONUNBUFFERED='1')
    if args.device == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''  # the Runner would move the model to a visible GPU
    head = f'[{index}/{total}] {run.label}'
    print(f'{head}: {"resuming" if osp.isdir(osp.join(run.folder, "work")) else "starting"} '
          f'({run.iters} training iterations, then the test); log: '
          f'{osp.join(run.folder, "log.txt")}', flush=True)
    walls: List[float] = []
    last_print, done = 0.0, 0
    with open(osp.join(run.folder, 'log.txt'), 'a') as log:
        log.write(f'$ {shlex.join(cmd)}\n')
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                if not line.startswith(PROGRESS):
                    continue
                state = json.loads(line[len(PROGRESS):])
                done = state['iter']
                walls.append(state['wall_s'])
                now = time.monotonic()
                if now - last_print < args.progress_every and done < state['total']:
                    continue
                last_print = now
                recent = walls[-50:]
                rate = statistics.mean(recent[1:] if len(recent) > 1 else recent)
                left = eta.matrix_left(run, done, rate, pending)
                print(f'{head}: iteration {done}/{state["total"]} '
                      f'({100 * done / state["total"]:.0f}%), {rate:.3f} s/it, run '
                      f'{fmt_duration(eta.run_left(run, done, rate))} left, all runs '
                      f'{fmt_duration(left)} left ({len(pending)} more)', flush=True)
            proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
    result = _read_json(run.result_path) if proc.returncode == 0 else None
    if result is not None and result.get('settings') != run.settings:
        result = None
    if result is None:
        with open(osp.join(run.folder, 'log.txt')) as f:
            tail = f.read().splitlines()[-15:]
        print('\n'.join('    ' + ln for ln in tail), file=sys.stderr)
        print(f'{head}: failed (exit status {proc.returncode}); rerun the same command to '
              f'{"resume" if args.full_schedule else "retry"} it', file=sys.stderr, flush=True)
    return result


def _spread(values: List[float]) -> Tuple[float, float]:
    return statistics.mean(values), (max(values) - min(values)) / 2


def _fmt_metric(values: List[float]) -> str:
    if not values:
        return '–'
    scale = 100 if all(v <= 1 for v in values) else 1
    mean, half = _spread([scale * v for v in values])
    return f'{mean:.1f}' if len(values) == 1 else f'{mean:.1f} ± {half:.1f}'


def table(results: List[Dict[str, Any]], names: List[str]) -> str:
    """A markdown table of one task: one row per config (its seeds pooled), in ``names`` order."""
    kind = results[0]['task']
    mcols = METRICS[kind]
    shape = results[0]['flops_shape']
    head = (['model'] + [METRIC_NAMES[m] for m in mcols]
            + ['seeds', 'params (M)', f'FLOPs (G, {shape[0]}x{shape[1]})', 'train s/iter',
               'total time', 'infer img/s', 'peak mem (MiB)'])
    rows = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name in names:
        runs = [r for r in results if osp.basename(r['config']) == name]
        if not runs:
            continue
        worst = max(runs, key=lambda r: r['peak_mib'])
        mem = f'{worst["peak_mib"]:.0f}'
        if worst.get('peak_growth_mib') is not None:
            mem += f' (+{worst["peak_growth_mib"]:.0f})'
        resumed = '*' if any(r.get('resumed_from') for r in runs) else ''
        cells = ([name + resumed]
                 + [_fmt_metric([r['metrics'][m] for r in runs if m in r['metrics']])
                    for m in mcols]
                 + [','.join(str(r['seed']) for r in runs),
                    f'{runs[0]["params"] / 1e6:.2f}', f'{runs[0]["flops"] / 1e9:.2f}',
                    f'{statistics.mean(r["train_s_per_iter"] for r in runs):.3f}',
                    fmt_duration(statistics.mean(r['total_s'] for r in runs)),
                    f'{statistics.mean(r["infer_img_per_s"] for r in runs):.1f}', mem])
        rows.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows)


def report(results: List[Dict[str, Any]], runs: List[Run], args: argparse.Namespace,
           command: str) -> str:
    """The header (command, CPU, code) and one table per task, with its settings."""
    cpus = sorted({r['cpu'] for r in results})
    commits = sorted({r['commit'] for r in results})
    r0 = results[0]
    lines = [f'command: {command}',
             f'CPU: {" | ".join(cpus)}',
             f'torch {r0["torch"]}, device {r0["device"]}, {r0["threads"]} threads; code: '
             + ', '.join(commits) + (' (runs from different commits)' if len(commits) > 1
                                     else '')]
    order = []
    for run in runs:
        if run.task not in order:
            order.append(run.task)
    for kind in order:
        done = [r for r in results if r['task'] == kind]
        if not done:
            continue
        names = list(dict.fromkeys(run.name for run in runs if run.task == kind))
        recipe = next(run.recipe_config for run in runs if run.task == kind)
        schedule = ('each config\'s full schedule' if args.full_schedule
                    else f'{args.iters} iterations')
        batches = sorted({r['batch'] for r in done})
        recipe_text = (f'recipe of {osp.basename(recipe)} for all' if recipe
                       else 'each config its own recipe')
        lines += ['', f'{TASK_NAMES[kind]}: {schedule}, batch '
                  f'{"/".join(map(str, batches))}, {recipe_text}; '
                  f'{done[0]["test_images"]} test images'
                  f'{", demo data" if args.demo_data else ""}', '', table(done, names)]
    lines += ['', 'metric: mean ± half the range over the seeds; s/iter, total time, infer '
              'img/s: mean over the seeds; peak memory: the highest of the seeds (in brackets '
              'its growth over the process before the build).']
    if any(r.get('resumed_from') for r in results):
        lines.append('*: resumed after an interruption (total time counts each iteration once; '
                     'peak memory is that of the last part).')
    return '\n'.join(lines)


def plan(args: argparse.Namespace) -> List[Run]:
    """The runs of the matrix, in order: every config's seeds, configs in the order given."""
    import crossformer_mm  # noqa: F401
    from crossformer_mm.utils.config import check_data_roots, check_types
    configs = [resolve(c) for c in args.configs]
    for c in configs:
        if not osp.isfile(c):
            raise UserError(f'config {c!r} does not exist')
    names = [osp.basename(c) for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f'two configs have the same file name ({", ".join(dupes)}): their runs '
                        'would share a folder; copy one under another name')
    seeds = args.seeds if args.seeds is not None else [args.seed]
    if len(set(seeds)) != len(seeds):
        raise UserError(f'--seeds lists a seed twice: {seeds}')
    from crossformer_mm.utils.config import load_config
    tasks = {c: _task(load_config(c)) for c in configs}
    recipe_of: Dict[str, str] = {}
    for c in configs:
        recipe_of.setdefault(tasks[c], c)
    runs = []
    for config, name in zip(configs, names):
        recipe = recipe_of[tasks[config]] if args.recipe == 'ours' else None
        cfg = prepare_cfg(config, recipe, args)
        check_types(cfg)
        check_data_roots(cfg, ('train_dataloader', 'test_dataloader'))
        iters = schedule_length(cfg) if args.full_schedule else args.iters
        for seed in seeds:
            settings = dict(config=osp.abspath(config), config_sha=_fingerprint(cfg),
                            mode='full-schedule' if args.full_schedule else 'iters',
                            iters=iters, recipe_config=recipe and osp.abspath(recipe),
                            demo_data=args.demo_data, batch=args.batch,
                            val_images=args.val_images, workers=args.workers,
                            flops_shape=list(flops_shape(cfg, args.flops_shape)),
                            device=args.device,
                            threads=args.threads, seed=seed)
            folder = osp.join(args.work_dir, osp.splitext(name)[0], f'seed{seed}')
            runs.append(Run(config, name, tasks[config], seed, iters, folder, recipe, settings))
    return runs


def run_matrix(args: argparse.Namespace, command: str) -> int:
    runs = plan(args)
    print(f'{len(runs)} runs ({len({r.config for r in runs})} configs x '
          f'{len({r.seed for r in runs})} seeds) in {osp.abspath(args.work_dir)}', flush=True)
    eta = Eta()
    finished: Dict[int, dict] = {}  # index in `runs` -> result
    todo: List[Run] = []
    for k, run in enumerate(runs):
        previous = _read_json(run.result_path)
        if previous is not None and previous.get('settings') == run.settings:
            finished[k] = previous
            eta.learn(previous)
            print(f'{run.label}: finished earlier, skipped ({run.result_path})')
            continue
        if previous is not None:
            print(f'{run.label}: its result was made with other settings; running it again')
            os.remove(run.result_path)
        todo.append(run)
    failed: List[Run] = []
    for i, run in enumerate(todo):
        os.makedirs(run.folder, exist_ok=True)
        settings_path = osp.join(run.folder, 'settings.json')
        if _read_json(settings_path) != run.settings:
            # A run interrupted with other settings: its checkpoints do not apply.
            shutil.rmtree(osp.join(run.folder, 'work'), ignore_errors=True)
            for stale in ('iterations.jsonl', 'log.txt'):
                if osp.exists(osp.join(run.folder, stale)):
                    os.remove(osp.join(run.folder, stale))
            _write_json(settings_path, run.settings)
        try:
            result = launch(run, args, i + 1, len(todo), eta, todo[i + 1:])
        except KeyboardInterrupt:
            print(f'\ninterrupted during {run.label}; rerun the same command to continue',
                  file=sys.stderr)
            return 130
        if result is None:
            failed.append(run)
            continue
        if not args.keep_checkpoints:
            shutil.rmtree(osp.join(run.folder, 'work'), ignore_errors=True)
        finished[runs.index(run)] = result
        eta.learn(result)
        print(f'[{i + 1}/{len(todo)}] {run.label}: done in {fmt_duration(result["process_s"])}; '
              f'{len(todo) - i - 1} runs left, about '
              f'{fmt_duration(eta.matrix_left(None, 0, None, todo[i + 1:]))}', flush=True)
    results = [finished[k] for k in sorted(finished)]
    if results:
        text = report(results, runs, args, command)
        print('\n' + text)
        if args.out:
            with open(args.out, 'w') as f:
                f.write(text + '\n')
            _write_json(osp.splitext(args.out)[0] + '.json', results)
    if failed:
        print(f'{len(failed)} of {len(runs)} runs did not finish: '
              + ', '.join(r.label for r in failed)
              + '; rerun the same command to resume them', file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Compare configs on the same data, recipe and seeds (one table per task)')
    parser.add_argument('configs', nargs='*', metavar='CONFIG',
                        help='configs to compare (mmdet::/mmseg:: allowed); the first of each '
                        'task gives the recipe with --recipe ours')
    length = parser.add_mutually_exclusive_group()
    length.add_argument('--iters', type=int, default=100,
                        help='training iterations of every run (100)')
    length.add_argument('--full-schedule', action='store_true',
                        help="train each config to the end of its own schedule")
    parser.add_argument('--batch', type=int,
                        help='training batch size (default: 4 with --iters, the config\'s own '
                        'with --full-schedule)')
    parser.add_argument('--recipe', choices=['ours', 'own'], default='ours',
                        help='optimizer (and schedule) of the first config of each task for '
                        'all (default) or each config its own')
    parser.add_argument('--seeds', type=int, nargs='+', help='seeds: one run per config and seed')
    parser.add_argument('--seed', type=int, default=0, help='the seed when --seeds is not given')
    parser.add_argument('--work-dir', default='work_dirs/compare',
                        help='folder of the runs (results, logs, checkpoints); a rerun skips '
                        'the finished runs and resumes the others (work_dirs/compare)')
    parser.add_argument('--flops-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="image size for the FLOP count (default: a segmentor's training "
                        'crop, else 256 256)')
    parser.add_argument('--val-images', type=int, help='test on the first K images only')
    parser.add_argument('--demo-data', action='store_true',
                        help='swap the datasets for the embedded demo data')
    parser.add_argument('--workers', type=int, default=0,
                        help='training data loader worker processes (0: in the training process)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch default)')
    parser.add_argument('--progress-every', type=float, default=30.0, metavar='SEC',
                        help='seconds between progress lines (30)')
    parser.add_argument('--keep-checkpoints', action='store_true',
                        help="keep each finished --full-schedule run's checkpoints")
    parser.add_argument('--out', help='also write the tables (markdown) here and the raw '
                        'results next to it (.json)')
    # internal: one run in this process
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--config', help=argparse.SUPPRESS)
    parser.add_argument('--run-dir', help=argparse.SUPPRESS)
    parser.add_argument('--recipe-config', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error(f'--iters must be at least 1, got {args.iters}')
    if args.batch is not None and args.batch < 1:
        parser.error(f'--batch must be at least 1, got {args.batch}')
    if args.workers < 0:
        parser.error(f'--workers must be 0 or more, got {args.workers}')
    return args


def resolve(path: str) -> str:
    """``mmdet::x.py`` / ``mmseg::x.py`` → the installed upstream config file."""
    if '::' not in path:
        return path
    scope, rel = path.split('::', 1)
    import importlib
    pkg = importlib.import_module(scope)
    return osp.join(osp.dirname(pkg.__file__), '.mim', 'configs', rel)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = worker(args)
        _write_json(osp.join(args.run_dir, 'result.json'), result)
        return 0
    if not args.configs:
        print('error: give the configs to compare (at least one)', file=sys.stderr)
        return 2
    command = shlex.join([osp.relpath(sys.argv[0]) if argv is None else 'compare.py']
                         + (sys.argv[1:] if argv is None else list(argv)))
    from crossformer_mm.utils.cli import USER_ERRORS
    try:
        return run_matrix(args, 'python ' + command)
    except (UserError, ) + USER_ERRORS as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
