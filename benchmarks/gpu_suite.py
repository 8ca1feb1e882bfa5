"""GPU check and benchmark of the Triton MSDA kernels, for a bare CUDA machine.

Needs torch and triton only: no OpenMMLab package, no compiled ``crossformer_mm._ext``, nothing
installed (run with the repository root on ``PYTHONPATH``; ``benchmarks/gpu_suite.sh`` does).

1. **Checks** against the float64 PyTorch reference (:func:`crossformer_mm.ops.
   ms_deform_attn_pytorch`), float32 / float16 / bfloat16 values: the forward, the default
   (atomic) backward and the deterministic backward, through the registered op
   (``torch.ops.crossformer_mm.ms_deform_attn`` with autograd); the deterministic backward twice,
   bit for bit, under ``torch.use_deterministic_algorithms(True)``; the explicit
   ``deterministic=True`` flag.
2. **Timings** (``benchmarks/_harness.time_fn``: CUDA events around each call, median of
   ``--repeat`` calls after two warm-up calls) of the forward and forward+backward on the
   Deformable DETR encoder at 800x1333 (levels 100x167, 50x84, 25x42, 13x21; one query per key,
   22,223; 8 heads x 32 channels; 4 points) and on DCNv4's benchmark shape (15,200 queries;
   levels 100x152, 50x76, 25x38, 13x19; 8 heads x 32 channels; 8 points):
   the Triton kernels (default and deterministic backward) against the pure-PyTorch
   ``grid_sample`` formulation (:func:`crossformer_mm.ops.ms_deform_attn_grid_sample`) and, when
   ``mmcv`` with its CUDA ops imports, mmcv's ``MultiScaleDeformableAttnFunction``.

One table is printed at the end. ``--smoke`` runs everything on tiny shapes on the CPU through
Triton's interpreter (``TRITON_INTERPRET=1``, set by the shell script), which checks the script
itself without a GPU; its timings (wall clock, no warm-up) mean nothing.
"""
import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # the harness, the package (also when not run as a script)
    if path not in sys.path:
        sys.path.insert(0, path)

from _harness import markdown_table as table, time_fn  # noqa: E402

from crossformer_mm.ops.msda import (ms_deform_attn, ms_deform_attn_grid_sample,  # noqa: E402
                                     ms_deform_attn_pytorch)
from crossformer_mm.ops.msda_triton import (ms_deform_attn_backward_triton,  # noqa: E402
                                            ms_deform_attn_forward_triton)

Levels = Sequence[Tuple[int, int]]

#: name: (levels, num_queries (None: one per key), batch, heads, head_dims, points)
SHAPES: Dict[str, tuple] = {
    'encoder-800x1333': ([(100, 167), (50, 84), (25, 42), (13, 21)], None, 1, 8, 32, 4),
    'dcnv4-15200q': ([(100, 152), (50, 76), (25, 38), (13, 19)], 15200, 1, 8, 32, 8),
}
SMOKE_SHAPES: Dict[str, tuple] = {
    'tiny': ([(3, 2), (1, 2)], 5, 1, 2, 8, 2),
}
#: Check shape: Deformable-DETR-like, every value row read by many queries.
CHECK_SHAPE = ([(20, 28), (10, 14), (5, 7), (3, 4)], 300, 2, 8, 32, 4)
SMOKE_CHECK_SHAPE = ([(3, 3), (1, 2)], 9, 1, 2, 8, 2)
#: value dtype: (forward tolerance, gradient tolerance relative to max(1, |ref|))
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.float16: (5e-3, 2e-2),
              torch.bfloat16: (3e-2, 1e-1)}


def make_inputs(levels: Levels, num_queries: Optional[int], bs: int, heads: int, dims: int,
                points: int, device: str, dtype: torch.dtype, seed: int = 0) -> List[torch.Tensor]:
    """Value, level layout, sampling locations (reference point + ~2-pixel offsets, as in a
    trained model) and softmax-normalised weights; locations and weights in float32."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    num_keys = int(areas.sum())
    nq = num_keys if num_queries is None else num_queries
    value = torch.randn(bs, num_keys, heads, dims, generator=gen)
    ref = torch.rand(bs, nq, 1, 1, 1, 2, generator=gen)
    wh = shapes.flip(1).to(torch.float32)[None, None, None, :, None, :]  # (W, H)
    loc = ref + 2.0 * torch.randn(bs, nq, heads, len(levels), points, 2, generator=gen) / wh
    attn = torch.randn(bs, nq, heads, len(levels) * points, generator=gen).softmax(-1).view(
        bs, nq, heads, len(levels), points)
    return [value.to(device=device, dtype=dtype), shapes.to(device), starts.to(device),
            loc.to(device), attn.to(device)]


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / max(1.0, b.abs().max().item())).item()


# ------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------


def _kernel_grads(inputs: List[torch.Tensor], grad_out: torch.Tensor, deterministic: bool,
                  via_op: bool) -> Tuple[torch.Tensor, ...]:
    value, shapes, starts, loc, attn = inputs
    if via_op:  # the registered op with its registered backward (CUDA)
        leaves = [value.clone().requires_grad_(), loc.clone().requires_grad_(),
                  attn.clone().requires_grad_()]
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2],
                             deterministic=deterministic)
        return (out, ) + torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    out = ms_deform_attn_forward_triton(value, shapes, starts, loc, attn)
    grads = ms_deform_attn_backward_triton(value, shapes, starts, loc, attn,
                                           grad_out.to(value.dtype).contiguous(), deterministic)
    return (out, ) + tuple(grads)


def run_checks(device: str, smoke: bool) -> List[Tuple[str, str, str]]:
    """Rows ``(check, result, status)``."""
    rows = []
    via_op = device == 'cuda'
    shape = SMOKE_CHECK_SHAPE if smoke else CHECK_SHAPE
    names = ('output', 'grad_value', 'grad_loc', 'grad_attn')
    for dtype, (fwd_tol, grad_tol) in TOLERANCES.items():
        inputs = make_inputs(*shape, device=device, dtype=dtype)
        value, shapes, starts, loc, attn = inputs
        leaves = [value.double().requires_grad_(), loc.double().requires_grad_(),
                  attn.double().requires_grad_()]
        expected = ms_deform_attn_pytorch(leaves[0], shapes, starts, leaves[1], leaves[2])
        grad_out = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64).to(device)
        reference = (expected, ) + torch.autograd.grad(expected, leaves, grad_out)
        tag = str(dtype).replace('torch.', '')
        for det in (False, True):
            results = _kernel_grads(inputs, grad_out, det, via_op)
            for name, got, ref, tol in zip(names, results, reference,
                                           (fwd_tol, grad_tol, grad_tol, grad_tol)):
                if name == 'output' and det:
                    continue
                err = max_rel_err(got, ref)
                what = f'{tag} {name}' + (' (deterministic bwd)' if det and name != 'output'
                                          else '')
                rows.append((what, f'max rel err {err:.2e} (tol {tol:.0e})',
                             'ok' if err <= tol else 'FAIL'))
        # Deterministic mode: two runs bit for bit, through the global switch (op) or the flag.
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=False)
        try:
            runs = [_kernel_grads(inputs, grad_out, True if not via_op else None, via_op)
                    for _ in range(2)]
        finally:
            torch.use_deterministic_algorithms(previous)
        same = all(torch.equal(a, b) for a, b in zip(runs[0][1:], runs[1][1:]))
        rows.append((f'{tag} deterministic mode: two backward runs bit-identical', str(same),
                     'ok' if same else 'FAIL'))
        if not smoke:  # how far apart two runs of the atomic backward are (informative)
            atomic = [_kernel_grads(inputs, grad_out, False, via_op) for _ in range(2)]
            diff = (atomic[0][1].double() - atomic[1][1].double()).abs().max().item()
            rows.append((f'{tag} default (atomic) backward, two runs', f'max |diff| {diff:.2e}',
                         'info'))
    return rows


# ------------------------------------------------------------------------------------------
# Timings
# ------------------------------------------------------------------------------------------


def _timer(device: str) -> Callable[[Callable[[], None], int], float]:
    """``timer(fn, repeat)``: the median seconds of ``repeat`` calls of ``fn``."""

    def cuda_time(fn: Callable[[], None], repeat: int) -> float:
        return time_fn(fn, repeat, warmup=2, sync=torch.cuda.synchronize,
                       cuda_events=True)['median_s']

    def cpu_time(fn: Callable[[], None], repeat: int) -> float:
        # smoke mode (interpreter): no warm-up, the numbers mean nothing
        return time_fn(fn, repeat, warmup=0)['median_s']

    return cuda_time if device == 'cuda' else cpu_time


def _mmcv_function():
    try:
        from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
        return MultiScaleDeformableAttnFunction
    except Exception:  # mmcv (with its CUDA ops) not installed
        return None


def implementations(device: str) -> Dict[str, Tuple[Callable, Callable]]:
    """name: (forward(inputs), forward+backward(inputs, grad_out))."""

    def triton_fwd(inputs):
        return ms_deform_attn_forward_triton(*inputs)

    def triton_fwd_bwd(det):
        def run(inputs, grad_out):
            ms_deform_attn_forward_triton(*inputs)
            ms_deform_attn_backward_triton(*inputs, grad_out, det)
        return run

    def torch_fwd(inputs):
        return ms_deform_attn_grid_sample(*inputs)

    def torch_fwd_bwd(inputs, grad_out):
        value, shapes, starts, loc, attn = inputs
        leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
        out = ms_deform_attn_grid_sample(leaves[0], shapes, starts, leaves[1], leaves[2])
        torch.autograd.grad(out, leaves, grad_out)

    impls = {
        'triton': (triton_fwd, triton_fwd_bwd(False)),
        'triton-deterministic': (None, triton_fwd_bwd(True)),
        'pytorch-grid_sample': (torch_fwd, torch_fwd_bwd),
    }
    function = _mmcv_function() if device == 'cuda' else None
    if function is not None:
        def mmcv_fwd(inputs):
            value, shapes, starts, loc, attn = inputs
            return function.apply(value, shapes, starts, loc, attn, 64)

        def mmcv_fwd_bwd(inputs, grad_out):
            value, shapes, starts, loc, attn = inputs
            leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
            out = function.apply(leaves[0], shapes, starts, leaves[1], leaves[2], 64)
            torch.autograd.grad(out, leaves, grad_out)

        impls['mmcv-cuda'] = (mmcv_fwd, mmcv_fwd_bwd)
    return impls


def run_timings(device: str, smoke: bool, repeat: int,
                dtypes: Sequence[torch.dtype]) -> List[Tuple[str, str, str, str, str]]:
    """Rows ``(shape, dtype, implementation, fwd, fwd+bwd)``."""
    timer = _timer(device)
    rows = []
    shapes = SMOKE_SHAPES if smoke else SHAPES
    for name, shape in shapes.items():
        for dtype in dtypes:
            inputs = make_inputs(*shape, device=device, dtype=dtype)
            bs, nq = inputs[3].shape[:2]
            grad_out = torch.randn(bs, nq, shape[3] * shape[4], device=device, dtype=dtype)
            for impl, (fwd, fwd_bwd) in implementations(device).items():
                if impl == 'mmcv-cuda' and dtype == torch.bfloat16:
                    continue  # mmcv's kernel has no bfloat16
                cells = []
                for fn in (fwd, fwd_bwd):
                    if fn is None:
                        cells.append('-')
                        continue
                    args = (inputs, ) if fn is fwd else (inputs, grad_out)
                    try:
                        cells.append(f'{timer(lambda: fn(*args), repeat) * 1e3:.3f} ms')
                    except Exception as exc:  # e.g. out of memory: report, keep going
                        cells.append(f'error: {type(exc).__name__}')
                rows.append((name, str(dtype).replace('torch.', ''), impl, *cells))
    return rows



def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smoke', action='store_true',
                        help='tiny shapes on the CPU through the Triton interpreter')
    parser.add_argument('--repeat', type=int, default=None, help='timed calls (median)')
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'float16', 'bfloat16'],
                        choices=['float32', 'float16', 'bfloat16'], help='timed value dtypes')
    parser.add_argument('--skip-checks', action='store_true')
    args = parser.parse_args(argv)
    if args.smoke:
        if os.environ.get('TRITON_INTERPRET') != '1':
            parser.error('--smoke needs TRITON_INTERPRET=1 set before Python starts '
                         '(benchmarks/gpu_suite.sh --smoke sets it)')
        device = 'cpu'
    elif torch.cuda.is_available():
        device = 'cuda'
    else:
        parser.error('no CUDA device: run with --smoke (Triton interpreter, CPU) instead')
    repeat = args.repeat or (2 if args.smoke else 20)
    dtypes = [getattr(torch, d) for d in args.dtypes]
    started = time.time()
    import triton
    gpu = torch.cuda.get_device_name() if device == 'cuda' else 'CPU (Triton interpreter)'
    print(f'# MSDA GPU suite: torch {torch.__version__}, triton {triton.__version__}, {gpu}, '
          f'mmcv CUDA op: {"yes" if device == "cuda" and _mmcv_function() else "no"}')
    failed = False
    if not args.skip_checks:
        checks = run_checks(device, args.smoke)
        print('\n## Checks against the float64 reference\n')
        print(table(('check', 'result', 'status'), checks))
        failed = any(status == 'FAIL' for _, _, status in checks)
        print(f'\n(checks took {time.time() - started:.0f} s)')
    timings = run_timings(device, args.smoke, repeat, dtypes)
    print(f'\n## Timings (median of {repeat}; fwd+bwd = forward then backward)\n')
    print(table(('shape', 'dtype', 'implementation', 'fwd', 'fwd+bwd'), timings))
    print(f'\ntotal {time.time() - started:.0f} s; {"FAILED checks" if failed else "all ok"}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
