"""Side-by-side comparison of two configs on the same data with the same recipe.

    python tools/analysis_tools/compare.py OURS BASELINE [--iters N] [--batch B] [--recipe ours]
        [--flops-shape H W] [--val-images K] [--demo-data] [--device cpu|cuda] [--out FILE.md]

Typical pairs: one of our configs and the MMDetection / MMSegmentation config it derives from
(``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py`` vs ``configs/retinanet/...``), or a demo
config and the same model with an mmdet ``ResNet`` backbone
(``configs/demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py`` vs
``configs/retinanet/retinanet_r18-c32_fpn_24e_demo-coco.py``).

Each config runs in its own process (so peak memory is its own): build the model from scratch
(``Pretrained`` init configs are dropped: both sides start from random weights), train ``N``
iterations with batch ``B`` on the config's training set — with ``--recipe ours`` (default) both
use OURS' ``optim_wrapper`` and a linear warm-up over the first N/5 iterations, with
``--recipe own`` each its own ``optim_wrapper`` — then run the test set (the first K images with
``--val-images``) and its evaluator. ``--demo-data`` swaps both configs' datasets for the embedded
demo data (``python tools/make_demo_data.py``; COCO for detectors, ADE20K for segmentors, class
counts set to the demo's) so that COCO / ADE20K configs run without the real datasets.

Reported per config: the metric (COCO box / mask AP or mIoU, in %), parameters, FLOPs (one image of
``--flops-shape``, counted by ``get_flops.py``), training seconds per iteration (median over the
iterations after the first 5, forward + backward + step, data loading excluded), inference
images per second (``test_step``, batch 1, data loading excluded), and peak memory from the
model's build to the end of the test (``benchmarks/_harness.peak_memory``, which the benchmarks
use too; CUDA: peak allocated; CPU: the process's peak resident set size, ``VmHWM`` reset
through ``/proc/self/clear_refs`` right before the build, and in brackets its growth over the
resident set at that moment).
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, 'benchmarks'))  # last: its scripts shadow nothing

from _harness import peak_memory  # noqa: E402  (the benchmarks' peak-memory measurement)

DEMO_BASES = {
    'det': 'configs/demo/_base_/demo-coco_detection.py',
    'ins': 'configs/demo/_base_/demo-coco_instance.py',
    'seg': 'configs/demo/_base_/demo-ade_semantic.py',
}
DEMO_CLASSES = {'det': 5, 'ins': 5, 'seg': 6}
METRICS = {'det': ['coco/bbox_mAP'], 'ins': ['coco/bbox_mAP', 'coco/segm_mAP'], 'seg': ['mIoU']}
METRIC_NAMES = {'coco/bbox_mAP': 'box AP', 'coco/segm_mAP': 'mask AP', 'mIoU': 'mIoU'}


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


def load_cfg(path: str, demo_data: bool, batch: int, val_images: Optional[int]) -> Any:
    """The config with its dataloaders set up for the comparison."""
    from crossformer_mm.utils.config import load_config
    cfg = load_config(path)
    kind = _task(cfg)
    if demo_data:
        demo = load_config(os.path.join(ROOT, DEMO_BASES[kind]))
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                    'test_evaluator'):
            cfg[key] = copy.deepcopy(demo[key])
        for d in _walk(cfg.model):
            if 'num_classes' in d:
                d['num_classes'] = DEMO_CLASSES[kind]
    cfg.train_dataloader.update(batch_size=batch, num_workers=0, persistent_workers=False)
    cfg.test_dataloader.update(batch_size=1, num_workers=0, persistent_workers=False)
    if val_images:
        cfg.test_dataloader.dataset['indices'] = val_images
    return cfg


def worker(args: argparse.Namespace) -> Dict[str, Any]:
    """Train + test one config; returns the measurements."""
    import torch
    from mmengine.evaluator import Evaluator
    from mmengine.optim import LinearLR, build_optim_wrapper
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    import crossformer_mm  # noqa: F401
    from get_flops import build_model, complexity
    from crossformer_mm.utils.config import load_config

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads) if args.threads else None
    cfg = load_cfg(args.config, args.demo_data, args.batch, args.val_images)
    recipe = load_config(args.recipe_config) if args.recipe_config else cfg
    scope, kind = cfg.get('default_scope', 'mmdet'), _task(cfg)
    device = torch.device(args.device)
    with peak_memory(device.type) as mem:
        model = build_model(cfg)
        with DefaultScope.overwrite_default_scope(scope):
            model.init_weights()
            model.to(device)
            optim_wrapper = build_optim_wrapper(model, copy.deepcopy(recipe.optim_wrapper))
            warmup = LinearLR(optim_wrapper, start_factor=0.001, by_epoch=False, begin=0,
                              end=max(1, args.iters // 5))
            loader = Runner.build_dataloader(cfg.train_dataloader, seed=args.seed)
            model.train()
            times, losses = [], []
            it = iter(loader)
            for _ in range(args.iters):
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
                times.append(time.perf_counter() - t0)
                losses.append(float(log_vars['loss']))
                warmup.step()
            model.eval()
            test_loader = Runner.build_dataloader(cfg.test_dataloader)
            evaluator = Evaluator(cfg.test_evaluator)
            evaluator.dataset_meta = test_loader.dataset.metainfo
            infer = []
            with torch.no_grad():
                for data in test_loader:
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    outputs = model.test_step(data)
                    if device.type == 'cuda':
                        torch.cuda.synchronize()
                    infer.append(time.perf_counter() - t0)
                    evaluator.process(outputs, data)
            metrics = evaluator.evaluate(len(test_loader.dataset))
    peak = mem.base_mib + mem.peak_mib
    peak_growth = None if device.type == 'cuda' else mem.peak_mib  # over the RSS before the build
    model.cpu()
    cx = complexity(cfg, tuple(args.flops_shape), model)
    steady = times[5:] if len(times) > 5 else times
    return dict(
        config=args.config, task=kind, iters=args.iters, batch=args.batch,
        metrics={k: float(metrics[k]) for k in METRICS[kind] if k in metrics},
        params=cx['params'], flops=cx['flops'], flops_shape=list(args.flops_shape),
        train_s_per_iter=statistics.median(steady), first_loss=losses[0], last_loss=losses[-1],
        infer_img_per_s=len(infer) / sum(infer), test_images=len(infer), peak_mib=peak,
        peak_growth_mib=peak_growth, device=str(device), threads=torch.get_num_threads())


def _fmt_metric(v: Optional[float]) -> str:
    return '–' if v is None else f'{100 * v:.1f}' if v <= 1 else f'{v:.1f}'


def table(results: List[Dict[str, Any]], names: List[str]) -> str:
    """A markdown table: one row per config."""
    kind = results[0]['task']
    mcols = METRICS[kind]
    head = (['model'] + [METRIC_NAMES[m] for m in mcols]
            + ['params (M)', f'FLOPs (G, {results[0]["flops_shape"][0]}x'
               f'{results[0]["flops_shape"][1]})', 'train s/iter', 'infer img/s',
               'peak mem (MiB)', 'loss first→last'])
    rows = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, r in zip(names, results):
        mem = f'{r["peak_mib"]:.0f}'
        if r.get('peak_growth_mib') is not None:
            mem += f' (+{r["peak_growth_mib"]:.0f})'
        cells = ([name] + [_fmt_metric(r['metrics'].get(m)) for m in mcols]
                 + [f'{r["params"] / 1e6:.2f}', f'{r["flops"] / 1e9:.2f}',
                    f'{r["train_s_per_iter"]:.3f}', f'{r["infer_img_per_s"]:.1f}', mem,
                    f'{r["first_loss"]:.2f} → {r["last_loss"]:.2f}'])
        rows.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Compare two configs side by side')
    parser.add_argument('ours', nargs='?', help='our config')
    parser.add_argument('baseline', nargs='?', help='baseline config (mmdet::/mmseg:: allowed)')
    parser.add_argument('--iters', type=int, default=100, help='training iterations (100)')
    parser.add_argument('--batch', type=int, default=4, help='training batch size (4)')
    parser.add_argument('--recipe', choices=['ours', 'own'], default='ours',
                        help="optimizer for both: OURS' (default) or each config's own")
    parser.add_argument('--flops-shape', type=int, nargs=2, default=(256, 256),
                        metavar=('H', 'W'), help='image size for the FLOP count (256 256)')
    parser.add_argument('--val-images', type=int, help='test on the first K images only')
    parser.add_argument('--demo-data', action='store_true',
                        help='swap the datasets for the embedded demo data')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch default)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='also write the table (markdown) and the raw JSON here')
    # internal: run one config in this process
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--config', help=argparse.SUPPRESS)
    parser.add_argument('--recipe-config', help=argparse.SUPPRESS)
    parser.add_argument('--json-out', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def resolve(path: str) -> str:
    """``mmdet::x.py`` / ``mmseg::x.py`` → the installed upstream config file."""
    if '::' not in path:
        return path
    scope, rel = path.split('::', 1)
    import importlib
    pkg = importlib.import_module(scope)
    return os.path.join(os.path.dirname(pkg.__file__), '.mim', 'configs', rel)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = worker(args)
        with open(args.json_out, 'w') as f:
            json.dump(result, f)
        return 0
    if not args.ours or not args.baseline:
        print('error: give OURS and BASELINE configs', file=sys.stderr)
        return 2
    configs = [resolve(args.ours), resolve(args.baseline)]
    for c in configs:
        if not os.path.isfile(c):
            print(f'error: config {c!r} does not exist', file=sys.stderr)
            return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, config in enumerate(configs):
            out = os.path.join(tmp, f'{i}.json')
            cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--config', config,
                   '--json-out', out, '--iters', str(args.iters), '--batch', str(args.batch),
                   '--flops-shape', *map(str, args.flops_shape), '--device', args.device,
                   '--seed', str(args.seed)]
            if args.recipe == 'ours':
                cmd += ['--recipe-config', configs[0]]
            if args.val_images:
                cmd += ['--val-images', str(args.val_images)]
            if args.demo_data:
                cmd.append('--demo-data')
            if args.threads:
                cmd += ['--threads', str(args.threads)]
            print(f'[{i + 1}/2] {config}: train {args.iters} iterations, then test', flush=True)
            env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:] + proc.stderr[-5000:], file=sys.stderr)
                print(f'error: {config} failed', file=sys.stderr)
                return 1
            with open(out) as f:
                results.append(json.load(f))
    if results[0]['task'] != results[1]['task']:
        print('error: the two configs are different tasks', file=sys.stderr)
        return 2
    names = [os.path.basename(args.ours), os.path.basename(args.baseline)]
    text = table(results, names)
    r = results[0]
    note = (f'{args.iters} training iterations, batch {args.batch}, recipe: '
            f'{"OURS optimizer for both" if args.recipe == "ours" else "each its own"}; '
            f'{r["test_images"]} test images; device {r["device"]}, {r["threads"]} threads')
    print(text)
    print(note)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n\n' + note + '\n')
        with open(os.path.splitext(args.out)[0] + '.json', 'w') as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
