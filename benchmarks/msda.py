"""Benchmark of multi-scale deformable attention: this package's kernels against mmcv's.

CPU: ``crossformer_mm.ops.ms_deform_attn`` (C++ kernel) against mmcv's CPU path
``mmcv.ops.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch`` (grid_sample based).
GPU (when CUDA is available): the Triton kernel against mmcv's CUDA kernel
(``MultiScaleDeformableAttnFunction``).

Cases: the Deformable DETR encoder at 800x1333 (B=1, levels 100x167, 50x84,
25x42, 13x21, Q = S = 22,223, C=256, 8 heads, 4 levels, 4 points), the decoder (Q=300, same
value) and a small shape. Sampling locations follow a trained model's pattern: reference point
(the query's own pixel centre in the encoder, uniform in the decoder) plus offsets of about two
pixels (normal, per level); ``--uniform`` samples uniformly in [0, 1] instead (worst locality).

Each (case, implementation, mode) runs in a fresh subprocess (``_harness.run_case``) that reports
the peak memory of its first call above its state right before it (``_harness.peak_memory``:
growth of the peak RSS, VmHWM, reset through /proc/self/clear_refs, on the CPU;
``torch.cuda.max_memory_allocated`` growth on the GPU), then the median time of the next
``--repeat`` calls (``_harness.time_fn``, synchronised on the GPU). The floor comes from the
cost model:
FLOPs at the measured fp32 matmul rate and the minimum bytes at the measured copy bandwidth;
"x floor" is our time over the larger of the two.

``--aot`` compiles every Triton kernel ahead of time (no GPU needed, Triton's bundled ptxas) for
each GPU architecture and dtype with ``crossformer_mm.ops.msda_triton.compile_ahead`` and prints
a kernel x dtype x arch table of ok / error, with the time it took.

``--compile`` times instead the whole ``MSDeformAttn`` module (projections, softmax, sampling
locations, the op, output projection) eager against ``torch.compile(fullgraph=True)`` (Inductor)
on each case's shape, forward and forward+backward, in this process (torch only): the median of
``--repeat`` calls after one warm-up call each (``_harness.time_fn``), and the time of the first
compiled call (compilation included).

Usage::

    python benchmarks/msda.py                 # all cases, CPU (+ GPU when present)
    python benchmarks/msda.py --cases small --repeat 5
    python benchmarks/msda.py --compile --cases encoder small
    python benchmarks/msda.py --aot            # kernels x archs x dtypes, compiled ahead of time
"""
import argparse
import json
import os
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch
from _harness import peak_memory, run_case, time_fn

ENCODER_SHAPES = [(100, 167), (50, 84), (25, 42), (13, 21)]
CASES = {
    # name: (levels, num_queries or None for one query per key (encoder), batch)
    'encoder': (ENCODER_SHAPES, None, 1),
    'decoder': (ENCODER_SHAPES, 300, 1),
    'small': ([(32, 32), (16, 16), (8, 8), (4, 4)], None, 2),
}
EMBED_DIMS, NUM_HEADS, NUM_POINTS = 256, 8, 4
IMPLS = ('ours', 'mmcv')
MODES = ('fwd', 'fwd+bwd')


# ------------------------------------------------------------------------------------------
# Inputs and the cost model
# ------------------------------------------------------------------------------------------


def make_inputs(case: str, device: str, dtype: torch.dtype, uniform: bool, seed: int = 0):
    shapes, num_queries, bs = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_keys = int(areas.sum())
    num_levels = len(shapes)
    head_dims = EMBED_DIMS // NUM_HEADS
    value = torch.randn(bs, num_keys, NUM_HEADS, head_dims, generator=gen)
    if num_queries is None:  # encoder: every key is a query, referenced at its pixel centre
        refs = []
        for h, w in shapes:
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
            refs.append(torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1))
        ref = torch.cat(refs)
    else:
        ref = torch.rand(num_queries, 2, generator=gen)
    nq = ref.shape[0]
    size_xy = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    if uniform:
        loc = torch.rand(bs, nq, NUM_HEADS, num_levels, NUM_POINTS, 2, generator=gen)
    else:
        offsets = torch.randn(bs, nq, NUM_HEADS, num_levels, NUM_POINTS, 2, generator=gen) * 2.0
        loc = ref[None, :, None, None, None, :] + offsets / size_xy[None, None, None, :, None, :]
    attn = torch.randn(bs, nq, NUM_HEADS, num_levels * NUM_POINTS,
                       generator=gen).softmax(-1).view(bs, nq, NUM_HEADS, num_levels,
                                                       NUM_POINTS)
    return [value.to(device, dtype), spatial_shapes.to(device), level_start_index.to(device),
            loc.contiguous().to(device, dtype), attn.to(device, dtype)]


def cost_model(case: str, bytes_per_elem: int = 4) -> Tuple[float, float]:
    """(FLOPs, minimum bytes) of one forward: ``10·B·Q·C·L·P`` FLOPs (4 bilinear-corner and 1
    attention-weight multiply-add per channel and sample) and ``B·S·C + 3·B·Q·heads·L·P +
    B·Q·C`` elements (value, locations and weights, output)."""
    shapes, num_queries, bs = CASES[case]
    num_keys = sum(h * w for h, w in shapes)
    nq = num_keys if num_queries is None else num_queries
    num_levels = len(shapes)
    flops = 10 * bs * nq * EMBED_DIMS * num_levels * NUM_POINTS
    elems = (bs * num_keys * EMBED_DIMS + 3 * bs * nq * NUM_HEADS * num_levels * NUM_POINTS +
             bs * nq * EMBED_DIMS)
    return float(flops), float(elems * bytes_per_elem)


def floor_seconds(case: str, mode: str, rates: Dict[str, float]) -> float:
    """The cost-model floor. fwd+bwd counts 3x the forward FLOPs (backward: four dot products
    and four scatters per sample and channel) and 2x its bytes plus a written grad_value."""
    flops, nbytes = cost_model(case)
    if mode == 'fwd+bwd':
        shapes, _, bs = CASES[case]
        flops *= 3
        nbytes = 2 * nbytes + 4 * bs * sum(h * w for h, w in shapes) * EMBED_DIMS
    return max(flops / rates['flops'], nbytes / rates['bandwidth'])


def device_sync(device: str) -> Optional[Callable[[], None]]:
    """What ``time_fn`` calls after each call: ``torch.cuda.synchronize`` on the GPU."""
    return torch.cuda.synchronize if device == 'cuda' else None


def measure_rates(device: str) -> Dict[str, float]:
    """fp32 matmul FLOP/s and copy bandwidth (bytes read + written per second), best of 5."""

    def best(fn):
        return time_fn(fn, 5, warmup=1, sync=device_sync(device))['best_s']

    n = 2048 if device == 'cpu' else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    flops = 2 * n**3 / best(lambda: torch.mm(a, b))
    src = torch.randn(64 * 2**20, device=device)  # 256 MiB
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / best(lambda: dst.copy_(src))
    return dict(flops=flops, bandwidth=bandwidth)


# ------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# ------------------------------------------------------------------------------------------


def worker(case: str, impl: str, mode: str, device: str, repeat: int, uniform: bool) -> dict:
    if impl == 'ours':
        from crossformer_mm.ops import ms_deform_attn

        def op(value, shapes, starts, loc, attn):
            return ms_deform_attn(value, shapes, starts, loc, attn)
    elif device == 'cuda':
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction

        def op(value, shapes, starts, loc, attn):
            return MultiScaleDeformableAttnFunction.apply(value, shapes, starts, loc, attn, 64)
    else:
        from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

        def op(value, shapes, starts, loc, attn):
            return multi_scale_deformable_attn_pytorch(value, shapes, loc, attn)

    inputs = make_inputs(case, device, torch.float32, uniform)
    if mode == 'fwd+bwd':
        for i in (0, 3, 4):
            inputs[i].requires_grad_()
    value, loc = inputs[0], inputs[3]
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3],
                           device=device)

    def run():
        if mode == 'fwd':
            with torch.no_grad():
                out = op(*inputs)
        else:
            for i in (0, 3, 4):
                inputs[i].grad = None
            out = op(*inputs)
            out.backward(grad_out)
        return out

    # Peak memory of the first call, from a fresh process: later calls would also count what the
    # allocator kept from earlier ones (glibc does not return every freed block).
    with peak_memory(device) as mem:
        run()
    t = time_fn(run, repeat, warmup=0, sync=device_sync(device))
    return dict(time=t['median_s'], peak_mib=mem.peak_mib, threads=torch.get_num_threads())


def run_worker(args, case: str, impl: str, mode: str, device: str) -> dict:
    """One measurement in a fresh process (:func:`worker`)."""
    argv = [os.path.abspath(__file__), '--worker', case, impl, mode, device, '--repeat',
            str(args.repeat)] + (['--uniform'] if args.uniform else [])
    res = run_case(argv)
    if res is None:
        raise RuntimeError(f'worker {case}/{impl}/{mode} failed')
    return res


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


def fmt_time(t: float) -> str:
    return f'{t * 1e3:9.2f} ms'


def fmt_mem(mib: float) -> str:
    return f'{mib:8.1f} MiB'


def bench_device(args, device: str) -> List[str]:
    rates = measure_rates(device)
    lines = [
        f'device {device} ({torch.get_num_threads()} threads)' if device == 'cpu' else
        f'device {device} ({torch.cuda.get_device_name()})',
        f'measured: fp32 matmul {rates["flops"] / 1e9:.1f} GFLOP/s, copy '
        f'{rates["bandwidth"] / 1e9:.1f} GB/s',
        'locations: ' + ('uniform in [0, 1]' if args.uniform else
                         'reference point + N(0, 2 px) offsets'),
        'load average before: ' + ' '.join(f'{x:.1f}' for x in os.getloadavg()),
    ]
    for case in args.cases:
        flops, nbytes = cost_model(case)
        lines.append(f'{case}: {flops / 1e9:.3f} GFLOP, {nbytes / 1e6:.1f} MB minimum traffic '
                     f'(forward)')
    head = (f'| {"case":8s} | {"mode":7s} | {"ours":>12s} | {"mmcv":>12s} | {"speed-up":>8s} '
            f'| {"floor":>12s} | {"x floor":>7s} | {"ours peak":>12s} | {"mmcv peak":>12s} '
            f'| {"mem ratio":>9s} |')
    lines += ['', head, '|' + '|'.join('-' * (len(c)) for c in head.split('|')[1:-1]) + '|']
    for case in args.cases:
        for mode in MODES:
            res = {impl: run_worker(args, case, impl, mode, device) for impl in IMPLS}
            floor = floor_seconds(case, mode, rates)
            ours, theirs = res['ours'], res['mmcv']
            mem_ratio = (theirs['peak_mib'] / ours['peak_mib'] if ours['peak_mib'] > 0 else
                         float('inf'))
            lines.append(
                f'| {case:8s} | {mode:7s} | {fmt_time(ours["time"])} | '
                f'{fmt_time(theirs["time"])} | {theirs["time"] / ours["time"]:7.1f}x | '
                f'{fmt_time(floor)} | {ours["time"] / floor:6.1f}x | '
                f'{fmt_mem(ours["peak_mib"])} | {fmt_mem(theirs["peak_mib"])} | '
                f'{mem_ratio:8.1f}x |')
            print(lines[-1], flush=True)
    lines.append('load average after: ' + ' '.join(f'{x:.1f}' for x in os.getloadavg()))
    return lines


def compile_vs_eager(args, device: str) -> List[str]:
    """Median times of the ``MSDeformAttn`` module, eager and compiled (Inductor, fullgraph)."""
    from crossformer_mm.ops import MSDeformAttn
    lines = [f'MSDeformAttn module, eager vs torch.compile(fullgraph=True), {device}, '
             f'{torch.get_num_threads()} threads, float32, median of {args.repeat}',
             '', '| case | mode | eager | compiled | eager / compiled | compile time |',
             '|---|---|---|---|---|---|']
    for case in args.cases:
        value, shapes, starts, loc, _ = make_inputs(case, device, torch.float32, args.uniform)
        bs, nq = loc.shape[:2]
        torch.manual_seed(0)
        module = MSDeformAttn(EMBED_DIMS, NUM_HEADS, len(CASES[case][0]), NUM_POINTS,
                              dropout=0.0, batch_first=True).to(device)
        query = torch.randn(bs, nq, EMBED_DIMS, device=device)
        feats = torch.randn(bs, value.shape[1], EMBED_DIMS, device=device)
        ref = loc[:, :, 0, :, 0, :].detach().clamp(0, 1)  # (bs, nq, levels, 2)
        kwargs = dict(value=feats, reference_points=ref, spatial_shapes=shapes,
                      level_start_index=starts)
        compiled = torch.compile(module, fullgraph=True)
        sync = device_sync(device)
        for mode in MODES:
            def call(fn):
                if mode == 'fwd':
                    with torch.no_grad():
                        fn(query, **kwargs)
                else:
                    module.zero_grad(set_to_none=True)
                    fn(query, **kwargs).sum().backward()
            # the first compiled call compiles
            compile_time = time_fn(partial(call, compiled), 1, warmup=0, sync=sync)['best_s']
            times = {}
            for name, fn in (('eager', module), ('compiled', compiled)):
                times[name] = time_fn(partial(call, fn), args.repeat, warmup=1,
                                      sync=sync)['median_s']
            lines.append(f'| {case} | {mode} | {fmt_time(times["eager"]).strip()} | '
                         f'{fmt_time(times["compiled"]).strip()} | '
                         f'{times["eager"] / times["compiled"]:.2f}x | {compile_time:.1f} s |')
            print(lines[-1], flush=True)
    lines.append('load average after: ' + ' '.join(f'{x:.1f}' for x in os.getloadavg()))
    return lines


AOT_ARCHS = (70, 75, 80, 86, 90)
AOT_DTYPES = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16,
              'float64': torch.float64}


def aot_table(archs: List[int]) -> List[str]:
    """Every Triton kernel compiled ahead of time for each arch and dtype: ok / error."""
    import triton

    from crossformer_mm.ops.msda_triton import KERNELS, compile_ahead
    start = time.perf_counter()
    results, errors = {}, []
    for cc in archs:
        for name, dtype in AOT_DTYPES.items():
            try:
                cubins = compile_ahead(cc, dtype)
            except Exception as err:  # report every failing cell, not only the first
                errors.append(f'sm_{cc} {name}: {type(err).__name__}: {str(err)[:300]}')
                cubins = {}
            for kernel in KERNELS:
                results[kernel, name, cc] = 'ok' if cubins.get(kernel) else 'error'
    elapsed = time.perf_counter() - start
    lines = [f'Triton {triton.__version__}, torch {torch.__version__}: '
             f'{sum(v == "ok" for v in results.values())} of {len(results)} compiled in '
             f'{elapsed:.0f} s', '',
             '| kernel | dtype | ' + ' | '.join(f'sm_{cc}' for cc in archs) + ' |',
             '|---|---|' + '---|' * len(archs)]
    for kernel in KERNELS:
        for name in AOT_DTYPES:
            lines.append(f'| {kernel} | {name} | ' +
                         ' | '.join(results[kernel, name, cc] for cc in archs) + ' |')
    return lines + [''] + errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    parser.add_argument('--repeat', type=int, default=3,
                        help='timed calls after the first (warm-up, memory) call')
    parser.add_argument('--uniform', action='store_true',
                        help='uniform sampling locations instead of reference + offsets')
    parser.add_argument('--compile', action='store_true',
                        help='the MSDeformAttn module eager vs torch.compile instead')
    parser.add_argument('--aot', action='store_true',
                        help='compile the Triton kernels ahead of time for --archs, all dtypes')
    parser.add_argument('--archs', nargs='+', type=int, default=list(AOT_ARCHS),
                        help='compute capabilities for --aot (default: %(default)s)')
    parser.add_argument('--worker', nargs=4, metavar=('CASE', 'IMPL', 'MODE', 'DEVICE'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, repeat=args.repeat, uniform=args.uniform)))
        return
    if args.aot:
        print('\n'.join(aot_table(args.archs)))
        return
    if args.compile:
        devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
        print('\n'.join(sum((compile_vs_eager(args, d) + [''] for d in devices), [])))
        return
    report = []
    for device in ('cpu', 'cuda'):
        if device == 'cuda' and not torch.cuda.is_available():
            report.append('\nGPU comparison (Triton vs mmcv CUDA kernel) skipped: no CUDA GPU')
            continue
        report += [''] + bench_device(args, device)
    print('\n'.join(report))


if __name__ == '__main__':
    main()
