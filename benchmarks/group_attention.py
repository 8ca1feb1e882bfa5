"""Attention within token groups: the native kernel against SDPA and the explicit path.

For each case (the attention of one Swin-T / CrossFormer / ViT-B layer at 224² batch 8, or of a
whole 800×1216 map) it times three implementations of the same function on the same
``(G, N, 3, heads, d)`` projection output, bias and mask:

* ``native``: :func:`crossformer_mm.ops.group_attention` (reads q/k/v in place, writes
  ``(G, N, heads·d)``);
* ``sdpa``: ``F.scaled_dot_product_attention`` with the bias + mask folded into one float mask
  (built outside the timed region), output transposed back to ``(G, N, heads·d)``;
* ``explicit``: ``softmax(q·kᵀ·scale + bias + mask)·v`` with matmuls, as MMDetection's
  ``WindowMSA`` computes it (output transposed back).

and prints milliseconds (best of ``--repeat``, ``_harness.time_fn``), the speed-ups of the
kernel and that of SDPA (the models' default) over the explicit path (their plain path). The
models do not call the kernel; this measures whether it would pay on the machine it runs on.
``--isa native avx2`` runs the cases once per instruction set, each in a fresh process with the
kernels of torch, oneDNN and MKL limited to it (``_harness.ISA_ENV``; ``avx2``: the code paths
of a CPU without AVX-512).

    python benchmarks/group_attention.py [--threads 2] [--repeat 20] [--isa native avx2]
"""
import argparse
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from _harness import ISA_ENV, cpu_description, require_isa, time_fn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crossformer_mm.ops import group_attention  # noqa: E402

# (label, groups, tokens per group, heads, head dim, shifted: per-window mask)
CASES = [
    ('Swin-T stage 1, 224² b8', 512, 49, 3, 32, True),
    ('Swin-T stage 3, 224² b8', 32, 49, 12, 32, True),
    ('Swin-T stage 1, 800x1216 whole map', 1276, 49, 3, 32, True),
    ('CrossFormer-S LDA stage 1, 800x1216 (25x38 groups)', 64, 950, 3, 32, False),
    ('ViT-B/16 global, 224² b8', 8, 197, 12, 64, False),
]


def best_ms(fn, repeat: int) -> float:
    return time_fn(fn, repeat, warmup=1)['best_s'] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--isa', nargs='+', default=['native'], choices=sorted(ISA_ENV),
                        help='instruction sets to run the cases with, each in its own process')
    parser.add_argument('--rows', help=argparse.SUPPRESS)  # child: the rows of one ISA
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rows:
        rows(args.rows, args.repeat)
        return
    print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, best of '
          f'{args.repeat}, float32, load average {os.getloadavg()[0]:.1f}')
    print(f'CPU: {cpu_description()}\n')
    print('| ISA | case | native ms | SDPA ms | explicit ms | native vs SDPA | native vs explicit '
          '| SDPA vs explicit |')
    print('|---|---|---|---|---|---|---|---|')
    for isa in args.isa:
        argv = [sys.executable, os.path.abspath(__file__), '--rows', isa,
                '--threads', str(args.threads), '--repeat', str(args.repeat)]
        subprocess.run(argv, env=dict(os.environ, **ISA_ENV[isa]), check=True)


def rows(isa: str, repeat: int) -> None:
    """Times every case in this process and prints its rows."""
    require_isa(isa)
    for label, g, n, heads, d, shifted in CASES:
        torch.manual_seed(0)
        qkv = torch.randn(g, n, 3, heads, d)
        bias = torch.randn(1, heads, n, n)
        mask = None
        if shifted:
            mask = torch.zeros(g, 1, n, n).masked_fill_(torch.rand(g, 1, n, n) > 0.8, -1e9)
        folded = bias if mask is None else bias + mask
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale = d ** -0.5

        def native():
            return group_attention(qkv, bias, mask, scale)

        def sdpa():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=folded, scale=scale)
            return out.transpose(1, 2).reshape(g, n, heads * d)

        def explicit():
            attn = (q * scale) @ k.transpose(-2, -1) + folded
            return (attn.softmax(-1) @ v).transpose(1, 2).reshape(g, n, heads * d)

        t_nat, t_sdpa, t_exp = (best_ms(f, repeat) for f in (native, sdpa, explicit))
        print(f'| {isa} | {label} (G={g}, N={n}, heads={heads}, d={d}) | {t_nat:.2f} | '
              f'{t_sdpa:.2f} | {t_exp:.2f} | {t_sdpa / t_nat:.2f}× | {t_exp / t_nat:.2f}× | '
              f'{t_exp / t_sdpa:.2f}× |', flush=True)


if __name__ == '__main__':
    main()
