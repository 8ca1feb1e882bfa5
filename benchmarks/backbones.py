"""Speed and memory of the package's backbones against their explicit path and upstream.

Three families, each a list of (ours, reference) comparisons on the CPU:

* ``crossformer``: CrossFormer-T/S as built by default (``fused_attn=True``: SDPA) against the
  same model and weights with ``set_fused_attn(False)`` (explicit
  ``softmax(q·kᵀ·scale + bias + mask)·v``), and CrossFormer-S against MMDetection's
  ``SwinTransformer`` (Swin-T) for scale.
  With ``--official DIR`` (a checkout of the official CrossFormer code, branch ``crossformer``,
  whose ``models/crossformer.py`` needs ``timm``), CrossFormer-T/S are also timed against the
  official classifier with the same weights (official model built with seed 0, its state dict
  loaded into ours); the official forward includes its pooling and 1000-class head.
* ``swin``: ``CFSwinTransformer`` (Swin-T) against MMDetection 3.3.0's ``SwinTransformer`` with
  the same weights (upstream built with seed 0, its state dict converted and loaded into ours).
* ``vit``: ``CFVisionTransformer`` (ViT-B/16) against MMSegmentation 1.x's ``VisionTransformer``
  with the same weights; 1024² is the dense-prediction case (all patch tokens, position
  embedding resized from the 14×14 grid).

``--isa native avx2`` runs every comparison twice, the second time with the kernels of torch,
oneDNN and MKL limited to AVX2 (``_harness.ISA_ENV``): the code paths of a CPU without AVX-512,
side by side with this CPU's own in one run.

Inputs: 224² batch 8 and, with ``--large``, 800×1216 batch 1 (ViT: 1024² batch 1); forward and
forward+backward (``--no-backward``: forward only).

``--code`` takes one or more checkouts of this package (default: this one); our models are built
from each, so that two versions are compared in one run (e.g. a worktree of an older commit,
with its native extension built). Each comparison is timed in its own fresh process
(``_harness.run_case``) that builds both models, warms both up and lets them take turns
``--rounds`` times (``--iters`` timed calls each turn, ``_harness.time_fn``, default allocator),
keeping the best call of each: the two models see the same process and the same machine load.
Memory: the peak growth during one step after a warm-up step (``_harness.peak_memory``), one
model per untimed process started with ``_harness.MEMORY_ENV`` (``--no-memory`` skips it).

Usage:
    python benchmarks/backbones.py --quick                  # smoke run, small shapes
    python benchmarks/backbones.py --threads 2 --no-backward
    python benchmarks/backbones.py --families swin --code . /tmp/older-checkout --rounds 5
    python benchmarks/backbones.py --families crossformer --official /path/to/CrossFormer
    python benchmarks/backbones.py --isa native avx2 --no-backward

Random weights; CPU only. Compare within one run.
"""
import argparse
import itertools
import json
import os
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from _harness import (ISA_ENV, MEMORY_ENV, code_label, cpu_description, peak_memory,
                      require_isa, run_case, time_fn)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWIN_T = dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
              drop_path_rate=0.0)
VIT_B = dict(img_size=224, patch_size=16, embed_dims=768, num_layers=12, num_heads=12,
             out_indices=(3, 5, 7, 11), with_cls_token=True, final_norm=True)
FAMILIES = ('crossformer', 'swin', 'vit')
UPSTREAM = ('swin-t-mmdet', 'vit-mmseg', 'crossformer-t-official', 'crossformer-s-official')
# comparisons: family -> list of (ours, reference) model names
PAIRS = {
    'crossformer': [('crossformer-t', 'crossformer-t-explicit'),
                    ('crossformer-s', 'crossformer-s-explicit'),
                    ('crossformer-s', 'swin-t-mmdet')],
    'swin': [('swin-ours', 'swin-t-mmdet')],
    'vit': [('vit-ours', 'vit-mmseg')],
}


def load_upstream_weights(model, sd, family: str):
    """Load the upstream state dict with the loader of the checkout being measured:
    ``model.load_pretrained`` (which takes a dict, ``strict`` and ``logger`` in current code),
    or in older checkouts their ``load_<family>_checkpoint``."""
    import importlib
    import inspect
    if 'strict' in inspect.signature(model.load_pretrained).parameters:
        model.load_pretrained(sd, strict=True, logger='silent')
    else:
        module = importlib.import_module(type(model).__module__)
        getattr(module, f'load_{family}_checkpoint')(model, sd, strict=True, logger='silent')
    return model


def build(name: str, weights: Optional[str]):
    """A backbone by benchmark name; Swin/ViT models load the shared upstream weights."""
    import torch
    sd = torch.load(weights, map_location='cpu', weights_only=True) if weights else None
    if name.endswith('-official'):
        return build_official(name.split('-')[1], sd)
    if name.startswith('crossformer'):
        from crossformer_mm.models.backbones.crossformer import CrossFormer
        size = name.split('-')[1]
        model = CrossFormer({'t': 'tiny', 's': 'small'}[size], drop_path_rate=0.0)
        model.set_fused_attn(not name.endswith('-explicit'))
        if sd is not None:  # the official weights (the same call in older checkouts)
            from crossformer_mm.models.backbones.crossformer import convert_crossformer_checkpoint
            missing, _ = model.load_state_dict(convert_crossformer_checkpoint(sd), strict=False)
            missing = [k for k in missing if not k.startswith('norm')]  # our output norms
            if missing:
                raise RuntimeError(f'the official weights lack {missing[:3]}...')
        return model
    if name == 'swin-t-mmdet':
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(**SWIN_T)
    elif name == 'vit-mmseg':
        from mmseg.models.backbones import VisionTransformer
        model = VisionTransformer(**VIT_B)
    elif name == 'swin-ours':
        from crossformer_mm.models.backbones.swin import CFSwinTransformer
        model = CFSwinTransformer('tiny', drop_path_rate=0.0)
        return load_upstream_weights(model, sd, 'swin')
    elif name == 'vit-ours':
        from crossformer_mm.models.backbones.vit import CFVisionTransformer
        model = CFVisionTransformer('base', img_size=224, out_indices=(3, 5, 7, 11))
        return load_upstream_weights(model, sd, 'vit')
    else:
        raise ValueError(f'unknown model {name!r}')
    if sd is not None:
        model.load_state_dict(sd)
    return model


#: The official CrossFormer configurations (configs/{tiny,small}_patch4_group7_224.yaml there).
OFFICIAL = {
    't': dict(embed_dim=64, depths=[1, 1, 8, 6], num_heads=[2, 4, 8, 16]),
    's': dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
}


def build_official(size: str, sd=None):
    """The official CrossFormer classifier (``OFFICIAL_DIR/models/crossformer.py``)."""
    sys.path.insert(0, os.environ['OFFICIAL_DIR'])
    from models.crossformer import CrossFormer as OfficialCrossFormer
    model = OfficialCrossFormer(img_size=224, patch_size=[4, 8, 16, 32], group_size=[7] * 4,
                                merge_size=[[2, 4]] * 3, drop_path_rate=0.0, **OFFICIAL[size])
    if sd is not None:
        model.load_state_dict(sd)
    return model


def save_upstream_weights(family: str, path: str) -> None:
    """Random upstream weights (seed 0) that both implementations of a family load
    (``family``: ``vit``, ``swin`` or ``crossformer-t`` / ``crossformer-s``, the official
    code's)."""
    import torch
    torch.manual_seed(0)
    if family.startswith('crossformer'):
        model = build_official(family.split('-')[1])
    elif family == 'vit':
        from mmseg.models.backbones import VisionTransformer
        model = VisionTransformer(**VIT_B)
    else:
        from mmdet.models.backbones import SwinTransformer
        model = SwinTransformer(**SWIN_T)
    if hasattr(model, 'init_weights'):
        model.init_weights()
    torch.save(model.state_dict(), path)


def _step(model, x, backward: bool) -> Callable[[], None]:
    """One forward (no grad) or forward+backward of ``model`` on ``x``."""
    import torch

    def step() -> None:
        if backward:
            outs = model(x)
            sum(o.float().mean() for o in outs).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    return step


def measure(names: Sequence[str], weights: Sequence[Optional[str]], hw: Tuple[int, int],
            batch: int, backward: bool, iters: int, warmup: int, rounds: int,
            memory: bool) -> Dict[str, Dict[str, float]]:
    """One case in this process, for each model of ``names``: timing or peak memory.

    Timing (``memory=False``): all models are built, each is warmed up, then they take turns
    ``rounds`` times (``iters`` timed calls each turn) and the best call of each is kept, so that
    the models of a comparison see the same process and the same machine load. Memory: the peak
    growth of one step after a warm-up step (one model per process gives the cleanest figure).
    """
    import torch
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(1))
    steps = {}
    for name, w in zip(names, weights):
        model = build(name, w)
        model.train(backward)  # mmdet's SwinTransformer.train returns None
        steps[name] = _step(model, x, backward)
    if memory:
        out = {}
        for name, step in steps.items():
            step()
            with peak_memory() as mem:
                step()
            out[name] = dict(peak_mib=mem.peak_mib)
        return out
    for step in steps.values():
        for _ in range(warmup):
            step()
    best: Dict[str, Dict[str, float]] = {}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time_fn(step, iters, warmup=0)
            if name not in best or t['best_s'] < best[name]['best_s']:
                best[name] = dict(img_s=batch / t['best_s'], **t)
    return best


def spawn(code: str, names: Sequence[str], weights: Sequence[Optional[str]],
          hw: Tuple[int, int], batch: int, backward: bool, iters: int, warmup: int,
          rounds: int, threads: int, memory: bool = False,
          isa: str = 'native') -> Optional[dict]:
    """:func:`measure` in a fresh process whose ``crossformer_mm`` is the one of ``code``, its
    kernels limited to the instruction set ``isa`` (:data:`_harness.ISA_ENV`)."""
    argv = [os.path.abspath(__file__), '--case', *names, '--code', code, '--hw', str(hw[0]),
            str(hw[1]), '--batch', str(batch), '--iters', str(iters), '--warmup', str(warmup),
            '--rounds', str(rounds), '--threads', str(threads), '--isa', isa,
            '--weights', *[w or 'none' for w in weights]]
    argv += ['--backward'] if backward else []
    argv += ['--memory'] if memory else []
    env = dict(ISA_ENV[isa], **(MEMORY_ENV if memory else {}))
    return run_case(argv, env=env, cwd=code)


def plans(family: str, quick: bool, large: bool):
    """(input, batch) cases of a family."""
    if quick:
        return [((97, 131), 2)]
    cases = [((224, 224), 8)]
    if large:
        cases.append(((1024, 1024), 1) if family == 'vit' else ((800, 1216), 1))
    return cases


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--families', nargs='+', default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument('--code', nargs='+', default=[REPO],
                        help='checkouts of this package whose models are measured')
    parser.add_argument('--official', help='checkout of the official CrossFormer code (branch '
                        '"crossformer"; needs timm): also compare CrossFormer-T/S with it')
    parser.add_argument('--quick', action='store_true', help='small shapes, 1 timed iteration')
    parser.add_argument('--large', action='store_true',
                        help='also 800×1216 b1 (ViT: 1024² b1)')
    parser.add_argument('--iters', type=int, default=3, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=3,
                        help='the two models of a comparison take turns this many times in '
                        'one process; the best call of each is kept')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--isa', nargs='+', default=['native'], choices=sorted(ISA_ENV),
                        help='run every comparison with the kernels of torch, oneDNN and MKL '
                        'limited to each of these instruction sets (avx2: what a CPU without '
                        'AVX-512 runs)')
    parser.add_argument('--no-backward', action='store_true', help='forward only')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory runs')
    parser.add_argument('--case', nargs='+', help=argparse.SUPPRESS)
    parser.add_argument('--weights', nargs='+', help=argparse.SUPPRESS)
    parser.add_argument('--hw', type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    parser.add_argument('--backward', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--memory', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    codes = [os.path.abspath(c) for c in args.code]
    sys.path.insert(0, codes[0])
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.official:
        # children inherit it: build_official imports the official code from there
        os.environ['OFFICIAL_DIR'] = os.path.abspath(args.official)
        if not os.path.isfile(os.path.join(args.official, 'models', 'crossformer.py')):
            parser.error(f'--official {args.official}: no models/crossformer.py there')
    pairs = {fam: list(p) for fam, p in PAIRS.items()}
    if args.official:
        pairs['crossformer'] += [('crossformer-t', 'crossformer-t-official'),
                                 ('crossformer-s', 'crossformer-s-official')]
    if args.case:  # child process: one case
        import crossformer_mm  # noqa: F401  (registration)
        require_isa(args.isa[0])
        weights = [None if w == 'none' else w for w in args.weights]
        print(json.dumps(measure(args.case, weights, tuple(args.hw), args.batch,
                                 args.backward, args.iters, args.warmup, args.rounds,
                                 args.memory)))
        return 0
    if args.quick:
        args.iters = 1
    labels = {c: code_label(c) for c in codes}
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, threads '
          f'{args.threads or torch.get_num_threads()}, warmup {args.warmup}, best of '
          f'{args.iters} timed iterations x {args.rounds} round(s), code '
          f'{", ".join(labels.values())}, load average {os.getloadavg()[0]:.1f}')
    print(f'CPU: {cpu_description()}')
    print('| code | ISA | ours | reference | input | pass | ours img/s | reference img/s | '
          'speed-up | peak MiB ours | peak MiB reference |')
    print('|' + '---|' * 11)
    with tempfile.TemporaryDirectory() as tmp:
        def weights_of(name: str) -> str:
            """The shared weights file of a model (written on first use)."""
            source = ('vit' if name.startswith('vit') else
                      '-'.join(name.split('-')[:2]) if name.startswith('crossformer') else 'swin')
            path = os.path.join(tmp, f'{source}.pth')
            if not os.path.exists(path):
                save_upstream_weights(source, path)
            return path

        for fam in args.families:
            names = sorted({n for pair in pairs[fam] for n in pair})
            # Swin/ViT: upstream weights; CrossFormer: the official model's, when it runs.
            weights = {n: weights_of(n) if not n.startswith('crossformer') or args.official
                       else None for n in names}
            for hw, batch in plans(fam, args.quick, args.large):
                for backward in (False, ) if args.no_backward else (False, True):
                    peak: Dict[Tuple[str, str], float] = {}
                    for isa, code, (ours, ref) in itertools.product(args.isa, codes,
                                                                     pairs[fam]):
                        if ref.endswith('-official') and hw != (224, 224):
                            continue  # the official classifier is built for 224² only
                        pair = (ours, ref)
                        r = spawn(code, pair, [weights[n] for n in pair], hw, batch, backward,
                                  args.iters, args.warmup, args.rounds, args.threads, isa=isa)
                        if r is None:
                            continue
                        for name in pair:  # peak memory: one model per process, once
                            run = (codes[0] if name in UPSTREAM else code, name)
                            if run not in peak:
                                m = None if args.no_memory else spawn(
                                    run[0], [name], [weights[name]], hw, batch, backward, 1, 0,
                                    1, args.threads, memory=True)
                                peak[run] = m[name]['peak_mib'] if m else float('nan')
                        o, f = r[ours], r[ref]
                        po = peak[(code, ours)]
                        pr = peak[(codes[0] if ref in UPSTREAM else code, ref)]
                        print(f'| {labels[code]} | {isa} | {ours} | {ref} | {hw[0]}×{hw[1]} '
                              f'b{batch} | {"fwd+bwd" if backward else "fwd"} | '
                              f'{o["img_s"]:.3f} | {f["img_s"]:.3f} | '
                              f'{o["img_s"] / f["img_s"]:.2f}× | {po:.0f} | {pr:.0f} |',
                              flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
