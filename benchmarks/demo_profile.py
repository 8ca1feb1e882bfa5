"""Where the demo's time goes: one training iteration part by part, then the evaluation and the
picture writing of ``tools/test.py --show-dir``.

    python benchmarks/demo_profile.py [CONFIG] [--iters N] [--warmup W] [--checkpoint CKPT]
        [--val-images K] [--workers W] [--threads T] [--isa native|avx2] [--json FILE]

CONFIG defaults to the demo RetinaNet
(``configs/demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py``, data from
``python tools/make_demo_data.py``); any single-stage detector config works (RetinaNet,
FCOS, ...: a ``backbone``, ``neck`` and ``bbox_head``). The model is built from the config with
random weights (``Pretrained`` init dropped), or loaded from ``--checkpoint`` (a trained model
keeps other boxes through NMS than a random one, so the evaluation and drawing costs differ).

A training iteration is ``model.train_step`` taken apart at the places mmdet's
``SingleStageDetector.loss`` and ``OptimWrapper.update_params`` call into, timed with the wall
clock (and ``torch.cuda.synchronize`` on a GPU):

========================  ==================================================================
data                      ``next(loader)``: reading, decoding, augmenting and collating a batch
                          (with loader workers, the time waited for one)
preprocess                ``model.data_preprocessor``: normalise, pad and stack the images
backbone                  ``model.backbone(inputs)``
neck                      ``model.neck(features)``
head forward              ``model.bbox_head(x)``: class scores and box deltas of every level
targets + loss            ``bbox_head.loss_by_feat``: anchors, assigner, sampler, target encoding
                          and the losses
backward                  ``parse_losses`` and ``optim_wrapper.backward(loss)``
optimizer                 ``optim_wrapper.step()`` (gradient clipping included) and ``zero_grad``
========================  ==================================================================

The first ``--warmup`` iterations are not counted; the table gives each part's median over the
next ``--iters`` iterations, its share of the iteration (the median of the per-iteration sums)
and its minimum. Then the test set of the config (the first ``--val-images`` images with
``--val-images``) with the config's test loader: data, ``test_step``, ``evaluator.process``, the
final ``evaluator.evaluate`` (COCO evaluation) and the pictures: the config's visualization hook
drawing and writing every image (``tools/test.py --show-dir``), into a temporary folder. The
learning rate stays at the config's base value (no schedule): the parts cost the same.

``--isa avx2`` reruns the script in a fresh process whose torch, oneDNN and MKL kernels are
limited to AVX2 (``_harness.ISA_ENV``), the code paths of a CPU without AVX-512. The command,
the CPU (``_harness.cpu_description``) and torch's version and threads are printed above the
tables; compare tables from one machine only.
"""
import argparse
import copy
import json
import os
import os.path as osp
import shlex
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
sys.path.insert(0, HERE)
from _harness import ISA_ENV, LapTimer, code_label, cpu_description, require_isa  # noqa: E402

DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'retinanet_crossformer-demo_fpn_24e_demo-coco.py')
TRAIN_PARTS = ('data', 'preprocess', 'backbone', 'neck', 'head forward', 'targets + loss',
               'backward', 'optimizer')
TEST_PARTS = ('data', 'test_step', 'evaluator.process', 'evaluator.evaluate', 'pictures')
#: Set in the re-executed child of ``--isa``.
CHILD_ENV = 'CFM_DEMO_PROFILE_CHILD'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Time the demo part by part')
    parser.add_argument('config', nargs='?', default=DEMO_CONFIG,
                        help='single-stage detector config (default: the demo RetinaNet)')
    parser.add_argument('--iters', type=int, default=20, help='timed training iterations (20)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first (3)')
    parser.add_argument('--checkpoint', help='weights to start from (default: random init)')
    parser.add_argument('--val-images', type=int,
                        help='evaluate and draw the first K test images (default: all)')
    parser.add_argument('--workers', type=int,
                        help="data loader workers (default: the config's)")
    parser.add_argument('--threads', type=int, help='torch threads (default: torch default)')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--isa', choices=sorted(ISA_ENV), default='native',
                        help='instruction set of the kernels (native)')
    parser.add_argument('--json', help='also write every measured time here')
    args = parser.parse_args(argv)
    for name in ('iters', 'warmup', 'val_images', 'workers', 'threads'):
        value = getattr(args, name)
        if value is not None and value < (1 if name in ('iters', 'val_images', 'threads') else 0):
            parser.error(f'--{name.replace("_", "-")} must be at least '
                         f'{1 if name in ("iters", "val_images", "threads") else 0}, got {value}')
    if not osp.isfile(args.config):
        parser.error(f'config {args.config!r} does not exist')
    if args.checkpoint and not osp.isfile(args.checkpoint):
        parser.error(f'--checkpoint {args.checkpoint!r} does not exist')
    return args


def _loader_cfg(cfg: Any, key: str, workers: Optional[int]) -> Any:
    loader = copy.deepcopy(cfg[key])
    if workers is not None:
        loader.update(num_workers=workers, persistent_workers=workers > 0)
    return loader


def profile_training(model: Any, optim_wrapper: Any, loader: Any, iters: int, warmup: int,
                     clock: LapTimer) -> List[Dict[str, float]]:
    """Per iteration, the seconds of each of :data:`TRAIN_PARTS` (timed ones only)."""
    from mmdet.models.utils import unpack_gt_instances
    head = model.bbox_head
    model.train()
    rows = []
    it = iter(loader)
    for i in range(warmup + iters):
        clock.start()
        try:
            data = next(it)
        except StopIteration:
            it = iter(loader)
            data = next(it)
        clock.lap('data')
        with optim_wrapper.optim_context(model):
            data = model.data_preprocessor(data, True)
            clock.lap('preprocess')
            feats = model.backbone(data['inputs'])
            clock.lap('backbone')
            x = model.neck(feats)
            clock.lap('neck')
            outs = head(x)
            clock.lap('head forward')
            gt_instances, gt_ignore, img_metas = unpack_gt_instances(data['data_samples'])
            losses = head.loss_by_feat(*outs, gt_instances, img_metas, gt_ignore)
            clock.lap('targets + loss')
        loss, _ = model.parse_losses(losses)
        optim_wrapper.backward(loss)
        clock.lap('backward')
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        clock.lap('optimizer')
        if i >= warmup:
            rows.append(dict(clock.parts))
    return rows


def profile_test(model: Any, cfg: Any, loader: Any, hook: Any, out_dir: str,
                 clock: LapTimer) -> Dict[str, Any]:
    """Seconds of each of :data:`TEST_PARTS` over the test set, and the metrics."""
    import torch
    from mmengine.evaluator import Evaluator
    evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    runner = argparse.Namespace(work_dir=out_dir, timestamp='profile', iter=0)
    model.eval()
    totals = dict.fromkeys(TEST_PARTS, 0.0)
    images = 0
    with torch.no_grad():
        clock.start()
        for batch_idx, data in enumerate(loader):
            clock.lap('data')
            outputs = model.test_step(data)
            clock.lap('test_step')
            evaluator.process(outputs, data)
            clock.lap('evaluator.process')
            hook.after_test_iter(runner, batch_idx, data, outputs)
            clock.lap('pictures')
            images += len(outputs)
        metrics = evaluator.evaluate(len(loader.dataset))
        clock.lap('evaluator.evaluate')
    for name, seconds in clock.parts.items():
        totals[name] += seconds
    return dict(seconds=totals, images=images, metrics={k: float(v) for k, v in metrics.items()
                                                        if isinstance(v, (int, float))})


def training_table(rows: List[Dict[str, float]]) -> str:
    sums = [sum(r.values()) for r in rows]
    total = statistics.median(sums)
    lines = ['| part | median ms | share | min ms |', '|---|---|---|---|']
    for name in TRAIN_PARTS:
        values = [r[name] for r in rows]
        med = statistics.median(values)
        lines.append(f'| {name} | {1e3 * med:.1f} | {100 * med / total:.0f}% | '
                     f'{1e3 * min(values):.1f} |')
    lines.append(f'| **iteration** (sum of the parts) | {1e3 * total:.1f} | 100% | '
                 f'{1e3 * min(sums):.1f} |')
    return '\n'.join(lines)


def test_table(test: Dict[str, Any]) -> str:
    total = sum(test['seconds'].values())
    n = max(1, test['images'])
    lines = ['| part | total s | ms / image | share |', '|---|---|---|---|']
    for name in TEST_PARTS:
        s = test['seconds'][name]
        share = 100 * s / max(total, 1e-12)
        lines.append(f'| {name} | {s:.2f} | {1e3 * s / n:.1f} | {share:.0f}% |')
    lines.append(f'| **test + pictures** | {total:.2f} | {1e3 * total / n:.1f} | 100% |')
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner, load_checkpoint, set_random_seed

    import crossformer_mm  # noqa: F401
    from crossformer_mm.utils.config import check_data_roots, load_config
    sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))
    from get_flops import build_model, register_scope

    if args.threads:
        torch.set_num_threads(args.threads)
    set_random_seed(0)
    cfg = load_config(args.config)
    scope = cfg.get('default_scope', 'mmdet')
    if scope != 'mmdet':
        raise SystemExit(f'error: {args.config} is not a detection config (default_scope '
                         f'{scope!r})')
    model = build_model(cfg)
    if not all(hasattr(model, name) for name in ('backbone', 'neck', 'bbox_head')) or \
            hasattr(model, 'rpn_head'):
        raise SystemExit(f'error: {args.config} is not a single-stage detector (backbone, neck '
                         'and bbox_head); this profile takes those apart')
    check_data_roots(cfg, ('train_dataloader', 'test_dataloader'))
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else None
    clock = LapTimer(sync)
    from mmengine.registry import DefaultScope
    register_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        if args.checkpoint:
            load_checkpoint(model, args.checkpoint, map_location='cpu')
        else:
            model.init_weights()
        model.to(device)
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        train_loader = Runner.build_dataloader(
            _loader_cfg(cfg, 'train_dataloader', args.workers), seed=0)
        rows = profile_training(model, optim_wrapper, train_loader, args.iters, args.warmup,
                                clock)
        test_loader_cfg = _loader_cfg(cfg, 'test_dataloader', args.workers)
        if args.val_images:
            test_loader_cfg.dataset['indices'] = args.val_images
        test_loader = Runner.build_dataloader(test_loader_cfg)
        from mmdet.registry import HOOKS, VISUALIZERS
        visualizer = VISUALIZERS.build(dict(cfg.visualizer, name='demo_profile'))
        visualizer.dataset_meta = test_loader.dataset.metainfo
        hook_cfg = dict(cfg.default_hooks['visualization'], draw=True, test_out_dir='vis')
        hook = HOOKS.build(hook_cfg)
        with tempfile.TemporaryDirectory(prefix='demo-profile-') as out_dir:
            test = profile_test(model, cfg, test_loader, hook, out_dir, clock)
            pictures = sum(len(files) for _, _, files in os.walk(out_dir))
    return dict(train=rows, test=test, pictures=pictures, batch=cfg.train_dataloader.batch_size,
                hook=hook_cfg['type'], threads=torch.get_num_threads(),
                torch=torch.__version__, cpu=cpu_description(), code=code_label(ROOT),
                isa=args.isa, capability=torch.backends.cpu.get_cpu_capability())


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.isa != 'native' and not os.environ.get(CHILD_ENV):
        env = dict(os.environ, **ISA_ENV[args.isa], **{CHILD_ENV: '1'})
        return subprocess.call([sys.executable, osp.abspath(__file__)]
                               + (sys.argv[1:] if argv is None else list(argv)), env=env)
    require_isa(args.isa)
    from crossformer_mm.utils.cli import USER_ERRORS
    try:
        result = run(args)
    except USER_ERRORS as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    command = 'python ' + shlex.join([osp.relpath(osp.abspath(__file__))]
                                     + (sys.argv[1:] if argv is None else list(argv)))
    test = result['test']
    metric = ', '.join(f'{k}={v:.3f}' for k, v in test['metrics'].items() if k.endswith('mAP'))
    print(f'command: {command}\nCPU: {result["cpu"]} (kernels: {result["capability"]})\n'
          f'torch {result["torch"]}, {result["threads"]} threads; code {result["code"]}; '
          f'config {osp.relpath(args.config, ROOT)}\n')
    print(f'training iteration, batch {result["batch"]}: median of {args.iters} after '
          f'{args.warmup} warm-up\n')
    print(training_table(result['train']))
    print(f'\ntest set: {test["images"]} images, {result["pictures"]} pictures written by '
          f'{result["hook"]}{"; " + metric if metric else ""}\n')
    print(test_table(test))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(result, command=command), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
