"""Deformable DETR: the package's detector against MMDetection's, on the CPU.

Builds mmdet 3.3.0's ``DeformableDETR`` (mmcv's MSDA: grid_sample fallback on the CPU,
``nn.MultiheadAttention``) and ``CFDeformableDETR`` (the package's MSDA kernel, SDPA) from the
same config (the COCO R50 config: 6+6 layers, 256 dims, 300 queries), with the same weights, and
times one training iteration (forward + losses + backward + AdamW step) and one inference on one
image, then prints the ratios and the peak memory. The two implementations are timed in one
process, alternating step by step (one ``_harness.time_fn`` call per step: wall and CPU time),
so that both see the same machine load, after one warm-up step each. The peak resident memory of
the first step of each runs in a fresh process (``_harness.run_case``): the RSS before the step
plus the peak growth during it (``_harness.peak_memory``: ``VmHWM`` reset through
``/proc/self/clear_refs``), i.e. the process's peak RSS during the step, model included.

    python benchmarks/detectors.py [--size 512 853] [--variant plain|refine|twostage]
                                   [--repeat 2] [--threads 1] [--modes train infer] [--no-memory]
                                   [--code CHECKOUT [CHECKOUT ...]]

``--code`` takes one or more checkouts of this package (default: this one): the whole comparison
runs once per checkout, each in its own process importing that checkout's ``crossformer_mm`` and
config, and one table lists them all (e.g. the current code and an older commit, each beside
mmdet's model).

The default input is 512x853 (an 800x1333 image scaled by 0.64); ``--size 800 1333`` runs the
full COCO size (slow on two cores).
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from _harness import code_label, peak_memory, run_case, time_fn

#: The checkout whose package and config are measured (``--code``; default: this one).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VARIANTS = {
    'plain': dict(with_box_refine=False, as_two_stage=False),
    'refine': dict(with_box_refine=True, as_two_stage=False),
    'twostage': dict(with_box_refine=True, as_two_stage=True),
}


def model_cfg(variant: str, ours: bool) -> dict:
    """The model of ``configs/deformable_detr/deformable-detr*_r50_16xb2-50e_coco.py``
    (mmdet's config when ``ours`` is False), without the pretrained backbone download."""
    from mmengine.config import Config
    cfg = Config.fromfile(
        os.path.join(ROOT, 'configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'))
    model = copy.deepcopy(cfg.model.to_dict())
    model['backbone']['init_cfg'] = None
    model.update(VARIANTS[variant])
    if not ours:
        model['type'] = 'DeformableDETR'
        model['bbox_head']['type'] = 'DeformableDETRHead'
    return model


def make_batch(h: int, w: int, num_gts: int = 8, batch: int = 1, masks: bool = False,
               device: str = 'cpu'):
    """``batch`` random ``h`` x ``w`` images with ``num_gts`` random boxes each (and, with
    ``masks``, a filled-box instance mask per box, for Mask R-CNN)."""
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, 3, h, w, generator=g)
    samples = []
    for _ in range(batch):
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             batch_input_shape=(h, w), pad_shape=(h, w),
                                             scale_factor=(1., 1.)))
        xy = torch.rand(num_gts, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(num_gts, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 8
        gt = InstanceData()
        gt.bboxes = torch.cat([xy, xy + wh], 1)
        gt.labels = torch.randint(0, 80, (num_gts, ), generator=g)
        if masks:
            import numpy as np
            bitmaps = np.zeros((num_gts, h, w), dtype=np.uint8)
            for i, (x0, y0, x1, y1) in enumerate(gt.bboxes.round().int().tolist()):
                bitmaps[i, y0:y1, x0:x1] = 1
            gt.masks = BitmapMasks(bitmaps, h, w)
        sample.gt_instances = gt
        samples.append(sample.to(device) if device != 'cpu' else sample)
    return inputs.to(device), samples


def build(impl: str, variant: str, weights: str):
    import torch
    import crossformer_mm  # noqa: F401  (registers the package's models)
    from mmdet.registry import MODELS
    model = MODELS.build(model_cfg(variant, ours=impl == 'ours'))
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    return model


def make_step(model, mode: str, inputs, samples):
    """One training iteration (losses, backward, AdamW step) or one inference."""
    import torch
    if mode == 'train':
        model.train()
        optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

        def step():
            losses = model.loss(inputs, copy.deepcopy(samples))
            loss = sum(v for k, v in losses.items() if 'loss' in k)
            optim.zero_grad()
            loss.backward()
            optim.step()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                model.predict(inputs, copy.deepcopy(samples))
    return step


def memory_worker(impl: str, mode: str, variant: str, h: int, w: int, threads: int,
                  weights: str) -> Dict[str, float]:
    """Peak resident memory (MiB) of one step in this (fresh) process: ``peak_rss_mb``, the
    process's peak RSS during the step, and ``peak_over_model_mb``, its growth over the RSS
    right before the step (model and batch built)."""
    import torch
    torch.set_num_threads(threads)
    model = build(impl, variant, weights)
    step = make_step(model, mode, *make_batch(h, w))
    with peak_memory() as mem:
        step()
    return dict(peak_rss_mb=mem.base_mib + mem.peak_mib, peak_over_model_mb=mem.peak_mib)


def main(argv: Optional[List[str]] = None) -> None:
    global ROOT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, nargs=2, default=(512, 853), metavar=('H', 'W'))
    parser.add_argument('--variant', choices=list(VARIANTS), default='plain')
    parser.add_argument('--repeat', type=int, default=2, help='timed steps per implementation')
    parser.add_argument('--threads', type=int, default=1,
                        help='intra-op threads (1: stable timings on a shared machine)')
    parser.add_argument('--modes', nargs='+', choices=['train', 'infer'],
                        default=['train', 'infer'])
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory runs')
    parser.add_argument('--code', nargs='+', default=[ROOT],
                        help='checkouts of this package whose detector is measured')
    parser.add_argument('--no-header', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--worker', nargs=3, metavar=('IMPL', 'MODE', 'WEIGHTS'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    h, w = args.size
    # the settings every child process (per checkout, per memory run) gets
    common = [os.path.abspath(__file__), '--size', str(h), str(w), '--variant', args.variant,
              '--threads', str(args.threads)]
    if len(args.code) > 1:  # one process per checkout, one table
        for n, code in enumerate(args.code):
            subprocess.run([sys.executable, *common, '--repeat', str(args.repeat), '--modes',
                            *args.modes, '--code', code]
                           + (['--no-memory'] if args.no_memory else [])
                           + (['--no-header'] if n else []), check=True)
        return
    ROOT = os.path.abspath(args.code[0])
    sys.path.insert(0, ROOT)
    if args.worker:
        impl, mode, weights = args.worker
        print(json.dumps(memory_worker(impl, mode, args.variant, h, w, args.threads, weights)))
        return

    import torch
    torch.set_num_threads(args.threads)
    import crossformer_mm  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.logging import MMLogger
    torch.manual_seed(0)
    ref = MODELS.build(model_cfg(args.variant, ours=False))
    MMLogger.get_current_instance().setLevel('WARNING')  # init_weights logs every parameter
    ref.init_weights()
    times: Dict[str, Dict[str, List[Tuple[float, float]]]] = {}
    memory: Dict[str, Dict[str, Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, 'weights.pth')
        torch.save(ref.state_dict(), weights)
        del ref
        models = {impl: build(impl, args.variant, weights) for impl in ('mmdet', 'ours')}
        inputs, samples = make_batch(h, w)
        for mode in args.modes:
            steps = {impl: make_step(m, mode, inputs, samples) for impl, m in models.items()}
            for impl, step in steps.items():
                step()  # warm-up
            # alternate the two implementations so that both see the same machine load
            for _ in range(args.repeat):
                for impl, step in steps.items():
                    t = time_fn(step, 1, warmup=0)
                    times.setdefault(mode, {}).setdefault(impl, []).append(
                        (t['times_s'][0], t['cpu_s'][0]))
            print(mode, {k: [(round(t, 2), round(c, 2)) for t, c in v]
                         for k, v in times[mode].items()}, '(wall s, CPU s)', flush=True)
        del models
        if not args.no_memory:
            for mode in args.modes:
                for impl in ('mmdet', 'ours'):
                    res = run_case(common + ['--code', ROOT, '--worker', impl, mode, weights])
                    if res is None:
                        raise RuntimeError(f'memory run {impl} / {mode} failed')
                    memory.setdefault(mode, {})[impl] = res

    if not args.no_header:
        print(f'\nDeformable DETR R50 ({args.variant}), 1 image {h}x{w}, {args.threads} threads, '
              f'torch {torch.__version__}; best of {args.repeat} alternating timed steps after a '
              'warm-up; peak RSS of one step in a fresh process\n')
        print('| code | step | mmdet 3.3.0 + mmcv: wall / CPU (s) | crossformer_mm: wall / CPU '
              '(s) | speed-up wall / CPU | peak RSS mmdet / ours (MB) |')
        print('|---|---|---|---|---|---|')
    for mode, t in times.items():
        mw, mc = min(x[0] for x in t['mmdet']), min(x[1] for x in t['mmdet'])
        ow, oc = min(x[0] for x in t['ours']), min(x[1] for x in t['ours'])
        mem = memory.get(mode)
        mem_str = (f'{mem["mmdet"]["peak_rss_mb"]:.0f} / {mem["ours"]["peak_rss_mb"]:.0f}'
                   if mem else 'not measured')
        name = 'training iteration' if mode == 'train' else 'inference'
        print(f'| {code_label(ROOT)} | {name} | {mw:.2f} / {mc:.2f} | {ow:.2f} / {oc:.2f} | '
              f'{mw / ow:.2f}x / {mc / oc:.2f}x | {mem_str} |', flush=True)


if __name__ == '__main__':
    main()
