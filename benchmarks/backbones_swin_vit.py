"""Speed and memory of CFSwinTransformer / CFVisionTransformer vs MMDetection / MMSegmentation.

Both implementations run with the same weights: the upstream model is built once (random init,
seed 0) and saved; our model loads the converted state dict. Every case (model × input × forward /
forward+backward) runs in its own subprocess so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the table shows images/s (best of the
timed iterations), the speed ratio ours/upstream and the peak RSS above the process's RSS after
building the model and the input (activations and workspace).

Usage:
    python benchmarks/backbones_swin_vit.py                 # the full table (slow on 2 cores)
    python benchmarks/backbones_swin_vit.py --quick         # small shapes, smoke run
    python benchmarks/backbones_swin_vit.py --families swin --iters 5 --threads 2
    python benchmarks/backbones_swin_vit.py --exact-memory --iters 1 --large-iters 1

Cases: Swin-T at 224² batch 8 and 800×1216 batch 1; ViT-B/16 at 224² batch 8 and 1024² batch 1
(dense: all patch tokens, position embedding resized from the 14×14 grid), forward and
forward+backward (ViT-B 1024² forward only unless ``--vit-dense-backward``). CPU only.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from _harness import time_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
              drop_path_rate=0.0)
VIT_B = dict(img_size=224, patch_size=16, embed_dims=768, num_layers=12, num_heads=12,
             out_indices=(3, 5, 7, 11), with_cls_token=True, final_norm=True)


def build(name: str, weights: str):
    """``swin-mmdet`` / ``swin-ours`` / ``vit-mmseg`` / ``vit-ours`` with the shared weights."""
    import torch
    sd = torch.load(weights, map_location='cpu', weights_only=True)
    if name == 'swin-mmdet':
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(**SWIN_T)
        model.load_state_dict(sd)
    elif name == 'vit-mmseg':
        from mmseg.models.backbones import VisionTransformer
        model = VisionTransformer(**VIT_B)
        model.load_state_dict(sd)
    elif name == 'swin-ours':
        from crossformer_mm.models.backbones.swin import CFSwinTransformer, load_swin_checkpoint
        model = CFSwinTransformer('tiny', drop_path_rate=0.0)
        load_swin_checkpoint(model, sd, strict=True, logger='silent')
    elif name == 'vit-ours':
        from crossformer_mm.models.backbones.vit import CFVisionTransformer, load_vit_checkpoint
        model = CFVisionTransformer('base', img_size=224, out_indices=(3, 5, 7, 11))
        load_vit_checkpoint(model, sd, strict=True, logger='silent')
    else:
        raise ValueError(f'unknown model {name!r}')
    return model


def save_upstream_weights(family: str, path: str) -> None:
    import torch
    torch.manual_seed(0)
    if family == 'swin':
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(**SWIN_T)
    else:
        from mmseg.models.backbones import VisionTransformer
        model = VisionTransformer(**VIT_B)
    model.init_weights()
    torch.save(model.state_dict(), path)


def run_case(name: str, weights: str, hw: Tuple[int, int], batch: int, backward: bool,
             iters: int, warmup: int) -> Dict[str, float]:
    import torch
    model = build(name, weights)
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(1))
    return time_backbone(model, x, backward, iters, warmup)


def spawn(name: str, weights: str, hw: Tuple[int, int], batch: int, backward: bool, iters: int,
          args: argparse.Namespace) -> Optional[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), '--case', name, '--weights', weights,
           '--hw', str(hw[0]), str(hw[1]), '--batch', str(batch), '--iters', str(iters),
           '--warmup', str(args.warmup), '--threads', str(args.threads)]
    cmd += ['--backward'] if backward else []
    env = dict(os.environ)
    if args.exact_memory:  # every large tensor mmapped and unmapped: RSS follows live tensors
        env['MALLOC_MMAP_THRESHOLD_'] = '65536'
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ['?'])[-1]
        print(f'  {name} {hw} b{batch}: failed ({err})', file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small shapes, 1 timed iteration')
    parser.add_argument('--families', nargs='+', default=['swin', 'vit'], choices=['swin', 'vit'])
    parser.add_argument('--iters', type=int, default=3, help='timed iterations (small inputs)')
    parser.add_argument('--large-iters', type=int, default=2,
                        help='timed iterations for 800×1216 / 1024² inputs')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=1,
                        help='alternate upstream / ours this many times (separate processes) '
                        'and keep the best of each: steadier on a loaded machine')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--vit-dense-backward', action='store_true',
                        help='also run ViT-B 1024² forward+backward (very slow / large upstream)')
    parser.add_argument('--exact-memory', action='store_true',
                        help='run the cases with MALLOC_MMAP_THRESHOLD_=65536 so that the peak '
                        'RSS follows the live tensors instead of the allocator\'s caching '
                        '(slower: use it for the memory columns)')
    parser.add_argument('--case', help=argparse.SUPPRESS)
    parser.add_argument('--weights', help=argparse.SUPPRESS)
    parser.add_argument('--hw', type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--backward', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:  # child process: one case
        import crossformer_mm  # noqa: F401  (compat layer, registration)
        print(json.dumps(run_case(args.case, args.weights, tuple(args.hw), args.batch,
                                  args.backward, args.iters, args.warmup)))
        return 0
    import crossformer_mm  # noqa: F401
    plans = {
        'swin': [((224, 224), 8, (False, True)), ((800, 1216), 1, (False, True))],
        'vit': [((224, 224), 8, (False, True)),
                ((1024, 1024), 1, (False, True) if args.vit_dense_backward else (False,))],
    }
    if args.quick:
        args.iters = args.large_iters = 1
        plans = {'swin': [((97, 131), 2, (False, True))], 'vit': [((80, 112), 2, (False, True))]}
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, threads '
          f'{args.threads or torch.get_num_threads()}, warmup {args.warmup}, best of '
          f'{args.iters} (small) / {args.large_iters} (large) timed iterations x '
          f'{args.rounds} round(s), load average {os.getloadavg()[0]:.1f}')
    print('| model | input | pass | upstream img/s | ours img/s | speed-up | upstream peak MiB '
          '| ours peak MiB |')
    print('|' + '---|' * 8)
    upstream = {'swin': 'swin-mmdet', 'vit': 'vit-mmseg'}
    label = {'swin': 'Swin-T (mmdet)', 'vit': 'ViT-B/16 (mmseg)'}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families:
            weights = os.path.join(tmp, f'{fam}.pth')
            save_upstream_weights(fam, weights)
            for hw, batch, passes in plans[fam]:
                large = hw[0] * hw[1] * batch > 224 * 224 * 8
                iters = args.large_iters if large else args.iters
                for backward in passes:
                    ref = ours = None
                    for _ in range(args.rounds):  # alternate, keep the best of each
                        r = spawn(upstream[fam], weights, hw, batch, backward, iters, args)
                        o = spawn(f'{fam}-ours', weights, hw, batch, backward, iters, args)
                        ref = r if ref is None or (r and r['img_s'] > ref['img_s']) else ref
                        ours = o if ours is None or (o and o['img_s'] > ours['img_s']) else ours
                    if ref is None or ours is None:
                        continue
                    print(f'| {label[fam]} | {hw[0]}×{hw[1]} b{batch} | '
                          f'{"fwd+bwd" if backward else "fwd"} | {ref["img_s"]:.3f} | '
                          f'{ours["img_s"]:.3f} | {ours["img_s"] / ref["img_s"]:.2f}× | '
                          f'{ref["act_mib"]:.0f} | {ours["act_mib"]:.0f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
