"""Speed and memory of the CrossFormer backbone: SDPA path vs explicit path vs mmdet's Swin-T.

Every case (model × input × forward / forward+backward) runs in its own subprocess so that its
peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the table shows
images/s, the ratio to the explicit CrossFormer path of the same size, and the peak RSS above the
process's RSS after building the model (activations, workspace).

Usage:
    python benchmarks/backbones.py            # 224² batch 8 and 800×1216 batch 1, 3 timed iters
    python benchmarks/backbones.py --quick    # a small smoke run (128² batch 2, 256×384 batch 1)
    python benchmarks/backbones.py --models crossformer-s-fused crossformer-s-explicit \
        --iters 5 --threads 2

Random weights; CPU only. Timings on a shared machine are noisy: compare within one run.
"""
import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from _harness import time_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('crossformer-t-fused', 'crossformer-t-explicit', 'crossformer-s-fused',
          'crossformer-s-explicit', 'swin-t-mmdet')


def build(name: str):
    """Build a backbone by benchmark name (random weights, eval/train set by the caller)."""
    if name.startswith('crossformer'):
        from crossformer_mm.models.backbones.crossformer import CrossFormer
        _, size, path = name.split('-')
        model = CrossFormer({'t': 'tiny', 's': 'small'}[size], drop_path_rate=0.0)
        model.set_fused_attn(path == 'fused')
        return model
    if name == 'swin-t-mmdet':
        from mmdet.models.backbones import SwinTransformer
        return SwinTransformer(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                               window_size=7, drop_path_rate=0.0)
    raise ValueError(f'unknown model {name!r}; valid: {MODELS}')


def run_case(name: str, hw: Tuple[int, int], batch: int, backward: bool, iters: int,
             warmup: int) -> Dict[str, float]:
    """Time one case in this process; returns images/s and memory figures."""
    import torch
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(batch, 3, *hw)
    return time_backbone(model, x, backward, iters, warmup)


def spawn(name: str, hw: Tuple[int, int], batch: int, backward: bool, args) -> Optional[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), '--case', name, '--hw', str(hw[0]),
           str(hw[1]), '--batch', str(batch), '--iters', str(args.iters), '--warmup',
           str(args.warmup), '--threads', str(args.threads)] + (['--backward'] if backward else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ['?'])[-1]
        print(f'  {name} {hw} b{batch} {"fwd+bwd" if backward else "fwd"}: skipped ({err})',
              file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small sizes, 1 timed iteration')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--iters', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--no-backward', action='store_true', help='forward only')
    parser.add_argument('--case', help=argparse.SUPPRESS)
    parser.add_argument('--hw', type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--backward', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
    if args.case:  # child process: one case
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case, tuple(args.hw), args.batch, args.backward,
                                  args.iters, args.warmup)))
        return 0
    if args.quick:
        args.iters, args.warmup = 1, 1
        shapes = [((128, 128), 2), ((256, 384), 1)]
    else:
        shapes = [((224, 224), 8), ((800, 1216), 1)]
    import torch
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, threads '
          f'{args.threads or torch.get_num_threads()}, iters {args.iters} (best), '
          f'warmup {args.warmup}')
    header = (f'| model | input | pass | img/s | vs explicit | vs Swin-T | peak RSS MiB | '
              f'activations MiB |')
    print(header)
    print('|' + '---|' * 8)
    for hw, batch in shapes:
        for backward in ([False] if args.no_backward else [False, True]):
            results = {m: spawn(m, hw, batch, backward, args) for m in args.models}
            for m, r in results.items():
                if r is None:
                    continue
                size = m.split('-')[1] if m.startswith('crossformer') else None
                ref = results.get(f'crossformer-{size}-explicit') if size else None
                swin = results.get('swin-t-mmdet')
                vs_ref = f'{r["img_s"] / ref["img_s"]:.2f}×' if ref else '–'
                vs_swin = f'{r["img_s"] / swin["img_s"]:.2f}×' if swin else '–'
                print(f'| {m} | {hw[0]}×{hw[1]} b{batch} | {"fwd+bwd" if backward else "fwd"} | '
                      f'{r["img_s"]:.2f} | {vs_ref} | {vs_swin} | {r["peak_mib"]:.0f} | '
                      f'{r["act_mib"]:.0f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
