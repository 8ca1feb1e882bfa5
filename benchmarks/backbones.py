"""Speed and memory of the package's backbones against a plain implementation and upstream.

Three families, each a list of (model, input, pass) cases on the CPU:

* ``crossformer``: CrossFormer-T/S as shipped (``fused``: the fast path — chunked inference,
  native group attention / SDPA, oneDNN dense layers) against ``plain``, the same model and
  weights computed the plain way (``set_fused_attn(False)``: explicit
  ``softmax(q·kᵀ·scale + bias + mask)·v`` and ``F.linear`` on whole tensors), and against
  MMDetection's ``SwinTransformer`` (Swin-T) for scale.
* ``swin``: ``CFSwinTransformer`` (Swin-T) against MMDetection 3.3.0's ``SwinTransformer`` with
  the same weights (upstream built with seed 0, its state dict converted and loaded into ours).
* ``vit``: ``CFVisionTransformer`` (ViT-B/16) against MMSegmentation 1.x's ``VisionTransformer``
  with the same weights; 1024² is the dense-prediction case (all patch tokens, position
  embedding resized from the 14×14 grid).

Inputs: 224² batch 8 and 800×1216 batch 1 (ViT: 1024² batch 1), forward and forward+backward
(ViT 1024²: forward only unless ``--vit-dense-backward``).

Every case runs in its own subprocess; the two implementations of a comparison alternate
``--rounds`` times and the best of each is kept (steadier on a shared machine). Timing runs use
the default allocator. Memory: "peak MiB" is the process's peak RSS above its RSS once the model
and input exist; with ``--exact-memory`` it comes from an extra one-step run per case with
``MALLOC_MMAP_THRESHOLD_=65536``, so that the RSS follows the live tensors rather than what
the allocator keeps cached (that run is not timed: mapping every buffer distorts timings).

Usage:
    python benchmarks/backbones.py                          # every family (slow on 2 cores)
    python benchmarks/backbones.py --quick                  # smoke run, small shapes
    python benchmarks/backbones.py --families swin --rounds 3 --exact-memory --threads 2

Random weights; CPU only. Compare within one run.
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
FAMILIES = ('crossformer', 'swin', 'vit')
# comparisons: family -> list of (ours, reference) model names
PAIRS = {
    'crossformer': [('crossformer-t-fused', 'crossformer-t-plain'),
                    ('crossformer-s-fused', 'crossformer-s-plain'),
                    ('crossformer-s-fused', 'swin-t-mmdet')],
    'swin': [('swin-ours', 'swin-t-mmdet')],
    'vit': [('vit-ours', 'vit-mmseg')],
}


def build(name: str, weights: Optional[str]):
    """A backbone by benchmark name; Swin/ViT models load the shared upstream weights."""
    import torch
    if name.startswith('crossformer'):
        from crossformer_mm.models.backbones.crossformer import CrossFormer
        _, size, path = name.split('-')
        model = CrossFormer({'t': 'tiny', 's': 'small'}[size], drop_path_rate=0.0)
        model.set_fused_attn(path == 'fused')  # plain: explicit attention, whole-tensor F.linear
        return model
    sd = torch.load(weights, map_location='cpu', weights_only=True) if weights else None
    if name == 'swin-t-mmdet':
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(**SWIN_T)
    elif name == 'vit-mmseg':
        from mmseg.models.backbones import VisionTransformer
        model = VisionTransformer(**VIT_B)
    elif name == 'swin-ours':
        from crossformer_mm.models.backbones.swin import CFSwinTransformer, load_swin_checkpoint
        model = CFSwinTransformer('tiny', drop_path_rate=0.0)
        load_swin_checkpoint(model, sd, strict=True, logger='silent')
        return model
    elif name == 'vit-ours':
        from crossformer_mm.models.backbones.vit import CFVisionTransformer, load_vit_checkpoint
        model = CFVisionTransformer('base', img_size=224, out_indices=(3, 5, 7, 11))
        load_vit_checkpoint(model, sd, strict=True, logger='silent')
        return model
    else:
        raise ValueError(f'unknown model {name!r}')
    if sd is not None:
        model.load_state_dict(sd)
    return model


def save_upstream_weights(family: str, path: str) -> None:
    """Random upstream weights (seed 0) that both implementations of a family load."""
    import torch
    torch.manual_seed(0)
    if family == 'vit':
        from mmseg.models.backbones import VisionTransformer
        model = VisionTransformer(**VIT_B)
    else:
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(**SWIN_T)
    model.init_weights()
    torch.save(model.state_dict(), path)


def run_case(name: str, weights: Optional[str], hw: Tuple[int, int], batch: int,
             backward: bool, iters: int, warmup: int) -> Dict[str, float]:
    import torch
    model = build(name, weights)
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(1))
    return time_backbone(model, x, backward, iters, warmup)


def spawn(name: str, weights: Optional[str], hw: Tuple[int, int], batch: int, backward: bool,
          iters: int, warmup: int, threads: int, exact_memory: bool = False) -> Optional[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), '--case', name, '--hw', str(hw[0]),
           str(hw[1]), '--batch', str(batch), '--iters', str(iters), '--warmup', str(warmup),
           '--threads', str(threads)]
    cmd += ['--weights', weights] if weights else []
    cmd += ['--backward'] if backward else []
    env = dict(os.environ)
    if exact_memory:  # every large tensor mmapped and unmapped: RSS follows live tensors
        env['MALLOC_MMAP_THRESHOLD_'] = '65536'
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ['?'])[-1]
        print(f'  {name} {hw} b{batch}: failed ({err})', file=sys.stderr)
        return None
    return json.loads(lines[-1])


def plans(family: str, quick: bool, vit_dense_backward: bool):
    """(input, batch, passes) of a family."""
    if quick:
        return [((97, 131), 2, (False, True))]
    if family == 'vit':
        return [((224, 224), 8, (False, True)),
                ((1024, 1024), 1, (False, True) if vit_dense_backward else (False, ))]
    return [((224, 224), 8, (False, True)), ((800, 1216), 1, (False, True))]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument('--quick', action='store_true', help='small shapes, 1 timed iteration')
    parser.add_argument('--iters', type=int, default=3, help='timed iterations (small inputs)')
    parser.add_argument('--large-iters', type=int, default=2,
                        help='timed iterations for the 800×1216 / 1024² inputs')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=1,
                        help='alternate the two implementations this many times (separate '
                        'processes) and keep the best of each')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--no-backward', action='store_true', help='forward only')
    parser.add_argument('--vit-dense-backward', action='store_true',
                        help='also run ViT-B 1024² forward+backward (slow, large upstream)')
    parser.add_argument('--exact-memory', action='store_true',
                        help='memory columns from an extra untimed run per case with '
                        'MALLOC_MMAP_THRESHOLD_=65536 (peak RSS follows the live tensors)')
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
    if args.quick:
        args.iters = args.large_iters = 1
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, threads '
          f'{args.threads or torch.get_num_threads()}, warmup {args.warmup}, best of '
          f'{args.iters} (224²) / {args.large_iters} (large) timed iterations x {args.rounds} '
          f'round(s), memory {"exact (separate run)" if args.exact_memory else "from timing run"}'
          f', load average {os.getloadavg()[0]:.1f}')
    print('| ours | reference | input | pass | ours img/s | reference img/s | speed-up | '
          'peak MiB ours | peak MiB reference |')
    print('|' + '---|' * 9)
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families:
            weights = None
            if fam in ('swin', 'vit') or any('swin' in r for _, r in PAIRS[fam]):
                weights = os.path.join(tmp, f'{"vit" if fam == "vit" else "swin"}.pth')
                if not os.path.exists(weights):
                    save_upstream_weights('vit' if fam == 'vit' else 'swin', weights)
            for hw, batch, passes in plans(fam, args.quick, args.vit_dense_backward):
                large = hw[0] * hw[1] * batch > 224 * 224 * 8
                iters = args.large_iters if large else args.iters
                for backward in passes:
                    if backward and args.no_backward:
                        continue
                    best: Dict[str, dict] = {}
                    names = sorted({n for pair in PAIRS[fam] for n in pair})
                    for _ in range(args.rounds):  # alternate, keep the best of each
                        for name in names:
                            r = spawn(name, weights, hw, batch, backward, iters, args.warmup,
                                      args.threads)
                            if r and (name not in best or r['img_s'] > best[name]['img_s']):
                                best[name] = r
                    if args.exact_memory:
                        for name in list(best):
                            r = spawn(name, weights, hw, batch, backward, 1, 0, args.threads,
                                      exact_memory=True)
                            best[name]['act_mib'] = r['act_mib'] if r else float('nan')
                    for ours, ref in PAIRS[fam]:
                        if ours not in best or ref not in best:
                            continue
                        o, r = best[ours], best[ref]
                        print(f'| {ours} | {ref} | {hw[0]}×{hw[1]} b{batch} | '
                              f'{"fwd+bwd" if backward else "fwd"} | {o["img_s"]:.3f} | '
                              f'{r["img_s"]:.3f} | {o["img_s"] / r["img_s"]:.2f}× | '
                              f'{o["act_mib"]:.0f} | {r["act_mib"]:.0f} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
