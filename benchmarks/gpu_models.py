"""Model-level GPU check: training steps with AMP and inference of the package's detectors.

On one GPU, at batch 2 at 800x1333 (random images and boxes, no weights to download):

* Deformable DETR R50 and Deformable DETR CrossFormer-S
  (``configs/deformable_detr/deformable-detr_{r50,crossformer-s}_16xb2-50e_coco.py``): a training
  step under AMP float16 (with a gradient scaler, as ``--amp`` trains), one under AMP bfloat16,
  and an inference (float32);
* Mask R-CNN CrossFormer-S (``configs/mask_rcnn/mask-rcnn_crossformer-s_fpn_1x_coco.py``): a
  training step under AMP float16 — it needs mmcv's CUDA ops (RoIAlign, NMS) for the GPU's
  architecture, and says so when mmcv has none;
* the MSDA op on the Deformable DETR encoder shape (forward + backward): the package's Triton
  kernel against mmcv's CUDA kernel (``benchmarks/gpu_suite.py``'s inputs and timer), when mmcv
  has CUDA ops for this GPU.

Each step: the median time of ``--repeat`` steps after a warm-up step, and the peak GPU memory
of one step (``torch.cuda.max_memory_allocated`` after a reset). A step whose loss is not finite
fails. One table; the exit status is 1 when a row failed (a skipped row says why).

    python benchmarks/gpu_models.py                       # on a CUDA machine with the MM stack
    python benchmarks/gpu_models.py --device cpu --tiny   # the same rows on tiny inputs (CPU)

``--tiny`` (64x96 images, one encoder / decoder layer, 30 queries, one timed step) checks the
script itself; its timings mean nothing. On the CPU the Mask R-CNN step runs in float32 (mmcv's
CPU RoIAlign has no float16 backward), and a step whose AMP dtype torch cannot autocast to there
is skipped with the reason (torch 2.1's CPU autocast takes bfloat16 only).
"""
import argparse
import contextlib
import copy
import math
import os
import sys
import time
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # the harness, the package (also when not run as a script)
    if path not in sys.path:
        sys.path.insert(0, path)

from _harness import markdown_table as table, time_fn  # noqa: E402

#: name: (config, needs mmcv's CUDA ops on a GPU, steps)
CASES = {
    'deformable-detr_r50': ('configs/deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                            False, ('train', 'train', 'infer')),
    'deformable-detr_crossformer-s': (
        'configs/deformable_detr/deformable-detr_crossformer-s_16xb2-50e_coco.py', False,
        ('train', 'train', 'infer')),
    'mask-rcnn_crossformer-s': ('configs/mask_rcnn/mask-rcnn_crossformer-s_fpn_1x_coco.py',
                                True, ('train', )),
}
#: The dtype of each of a case's steps, in order (None: float32).
STEP_DTYPES = {('train', 0): torch.float16, ('train', 1): torch.bfloat16, ('infer', 0): None}

Row = Tuple[str, str, str, str, str, str]


def model_cfg(config: str, tiny: bool):
    """The config's model without pretrained weights (and, ``tiny``, with a small transformer)."""
    from mmengine.config import Config
    # a ConfigDict: two-stage detectors read their train_cfg by attribute (train_cfg.rpn)
    model = copy.deepcopy(Config.fromfile(os.path.join(ROOT, config)).model)
    model['backbone']['init_cfg'] = None
    if tiny and 'encoder' in model:  # the DETR family
        model['encoder']['num_layers'] = model['decoder']['num_layers'] = 1
        model['num_queries'] = 30
    return model


def mmcv_cuda_problem(device: torch.device) -> Optional[str]:
    """Why mmcv's CUDA ops cannot serve ``device`` (None when they can)."""
    from crossformer_mm.utils.gpu_check import arch_served, mmcv_cuda_archs, sm_list
    cubins, ptx, where = mmcv_cuda_archs()
    if cubins is None:
        return where
    cap = torch.cuda.get_device_capability(device)
    if not arch_served(cap, cubins, ptx):
        have = sm_list(cubins) if cubins or ptx else 'none (a CPU-only build)'
        return (f'mmcv has no CUDA ops for sm_{cap[0]}{cap[1]} (its CUDA kernels: {have}); '
                'build them: benchmarks/gpu_suite.sh does, or tools/setup_env.sh')
    return None


def autocast_problem(device_type: str, dtype: Optional[torch.dtype]) -> Optional[str]:
    """Why this torch cannot autocast on ``device_type`` to ``dtype``, or None: torch 2.1's CPU
    autocast takes bfloat16 only (it warns and turns itself off, then fails on entry)."""
    if dtype is None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.autocast(device_type, dtype=dtype)
    refusals = [str(w.message) for w in caught if 'not supported' in str(w.message)]
    if not refusals:
        return None
    return (f'torch {torch.__version__} cannot autocast to {str(dtype).replace("torch.", "")} '
            f'on {device_type} ({refusals[0].splitlines()[-1]})')


def make_train_step(model, inputs, samples, dtype: torch.dtype) -> Callable[[], float]:
    """One AMP training iteration (autocast, loss scaling for float16, AdamW step), as mmengine's
    ``AmpOptimWrapper`` does it; returns the loss."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=1e-6)
    device = inputs.device.type
    if hasattr(torch.amp, 'GradScaler'):
        scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)
    else:  # torch < 2.3: a CUDA scaler only (its CPU autocast has no float16 to scale)
        scaler = torch.cuda.amp.GradScaler(enabled=dtype == torch.float16)

    def step() -> float:
        # float32: no autocast at all (torch 2.1's CPU autocast refuses float32 even when off).
        with (torch.autocast(device, dtype=dtype) if dtype is not None else
              contextlib.nullcontext()):
            losses = model.loss(inputs, copy.deepcopy(samples))
        loss, _ = model.parse_losses(losses)
        optim.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
        return loss.item()

    return step


def make_infer_step(model, inputs, samples) -> Callable[[], float]:
    model.eval()

    def step() -> float:
        with torch.no_grad():
            results = model.predict(inputs, copy.deepcopy(samples))
        return float(sum(r.pred_instances.scores.sum() for r in results))

    return step


def measure(step: Callable[[], float], device: torch.device, repeat: int,
            warmup: int) -> Tuple[str, str, str]:
    """(median time, peak memory, result) of ``step``."""
    cuda = device.type == 'cuda'
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    values = []

    def run() -> None:
        values.append(step())

    timing = time_fn(run, repeat, warmup=0, sync=torch.cuda.synchronize if cuda else None)
    peak = f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f}' if cuda else '-'
    bad = [v for v in values if not math.isfinite(v)]
    result = f'FAIL: loss {bad[0]}' if bad else 'ok'
    return f'{timing["median_s"] * 1e3:.1f}', peak, result


def model_rows(device: torch.device, size: Tuple[int, int], batch: int, repeat: int,
               warmup: int, tiny: bool, cases: Sequence[str]) -> List[Row]:
    try:
        import crossformer_mm  # noqa: F401  (registers the package's models)
        from detectors import make_batch
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.logging import MMLogger
    except Exception as exc:  # the MM stack is missing or broken: say so on every row
        why = f'skipped: the MM stack does not import ({type(exc).__name__}: {exc})'
        if 'mmcv._ext' in str(exc):
            why = ("skipped: mmcv's compiled ops are missing (mmdet imports them); "
                   'gpu_suite.sh builds them from the carried sdist')
        return [(case, step, dtype_name(STEP_DTYPES[(step, i)]), '-', '-', why)
                for case in cases for step, i in steps_of(case)]
    register_all_modules(init_default_scope=True)
    MMLogger.get_current_instance().setLevel('WARNING')  # init_weights logs every parameter
    rows = []
    for case in cases:
        config, needs_mmcv_cuda, _ = CASES[case]
        skip = mmcv_cuda_problem(device) if needs_mmcv_cuda and device.type == 'cuda' else None
        model = None
        for step_name, i in steps_of(case):
            dtype = STEP_DTYPES[(step_name, i)]
            if needs_mmcv_cuda and device.type == 'cpu':
                dtype = None  # mmcv's CPU ops (RoIAlign's backward) have no float16 kernels
            row = (case, step_name, dtype_name(dtype))
            why = skip or autocast_problem(device.type, dtype)
            if why:
                rows.append(row + ('-', '-', f'skipped: {why}'))
                continue
            try:
                if model is None:
                    torch.manual_seed(0)
                    model = MODELS.build(model_cfg(config, tiny)).to(device)
                    model.init_weights()
                inputs, samples = make_batch(*size, batch=batch, masks='mask' in case,
                                             device=str(device))
                step = (make_train_step(model, inputs, samples, dtype) if step_name == 'train'
                        else make_infer_step(model, inputs, samples))
                rows.append(row + measure(step, device, repeat, warmup))
            except Exception as exc:  # e.g. out of memory, a kernel error: report, go on
                rows.append(row + ('-', '-', f'FAIL: {type(exc).__name__}: '
                                             f'{str(exc).splitlines()[0][:160]}'))
            print(' | '.join(rows[-1]), flush=True)
        del model
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return rows


def msda_rows(device: torch.device, repeat: int) -> List[Row]:
    """The Triton MSDA kernel against mmcv's CUDA kernel, forward + backward, on the encoder
    shape at 800x1333 (float32, float16)."""
    case = 'msda encoder-800x1333'
    impls = ('triton', 'mmcv-cuda')
    dtypes = (torch.float32, torch.float16)
    if device.type != 'cuda':
        return [(f'{case} {impl}', 'fwd+bwd', str(d).replace('torch.', ''), '-', '-',
                 'skipped: compares CUDA kernels (no CUDA device)')
                for impl in impls for d in dtypes]
    import gpu_suite
    problem = mmcv_cuda_problem(device)
    available = gpu_suite.implementations('cuda')
    timer = gpu_suite._timer('cuda')
    rows = []
    for dtype in dtypes:
        shape = gpu_suite.SHAPES['encoder-800x1333']
        inputs = gpu_suite.make_inputs(*shape, device='cuda', dtype=dtype)
        bs, nq = inputs[3].shape[:2]
        grad_out = torch.randn(bs, nq, shape[3] * shape[4], device='cuda', dtype=dtype)
        for impl in impls:
            row = (f'{case} {impl}', 'fwd+bwd', str(dtype).replace('torch.', ''))
            if impl == 'mmcv-cuda' and (problem or impl not in available):
                rows.append(row + ('-', '-', f'skipped: {problem or "mmcv does not import"}'))
                continue
            fwd_bwd = available[impl][1]
            try:
                ms = timer(lambda: fwd_bwd(inputs, grad_out), repeat) * 1e3
                rows.append(row + (f'{ms:.2f}', '-', 'ok'))
            except Exception as exc:
                rows.append(row + ('-', '-', f'FAIL: {type(exc).__name__}: {exc}'[:160]))
    return rows


def steps_of(case: str) -> List[Tuple[str, int]]:
    steps = CASES[case][2]
    return [(s, steps[:n].count(s)) for n, s in enumerate(steps)]


def dtype_name(dtype: Optional[torch.dtype]) -> str:
    return 'float32' if dtype is None else f'amp {str(dtype).replace("torch.", "")}'



def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda', help='cuda (default), cuda:N or cpu')
    parser.add_argument('--tiny', action='store_true',
                        help='64x96 images, a one-layer transformer, one timed step (checks '
                        'the script; the numbers mean nothing)')
    parser.add_argument('--size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                        help='image size (default 800 1333; --tiny: 64 96)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=None, help='timed steps (median)')
    parser.add_argument('--cases', nargs='+', choices=list(CASES), default=list(CASES))
    parser.add_argument('--no-msda', action='store_true', help='skip the MSDA op comparison')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('no CUDA device: run with --device cpu --tiny to check the script')
    if device.type not in ('cuda', 'cpu'):
        parser.error(f'--device must be cuda, cuda:N or cpu, got {args.device!r}')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    size = tuple(args.size or ((64, 96) if args.tiny else (800, 1333)))
    repeat = args.repeat or (1 if args.tiny else 3)
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU')
    print(f'# Model-level check: torch {torch.__version__}, {name}, batch {args.batch} at '
          f'{size[0]}x{size[1]}', flush=True)
    started = time.time()
    rows = model_rows(device, size, args.batch, repeat, 0 if args.tiny else 1, args.tiny,
                      args.cases)
    if not args.no_msda:
        rows += msda_rows(device, 1 if args.tiny else 20)
    print(f'\n## Models (batch {args.batch}, {size[0]}x{size[1]}; median of {repeat} steps'
          f'{"" if args.tiny else " after a warm-up step"}) and the MSDA op\n')
    print(table(('case', 'step', 'dtype', 'ms', 'peak GPU MiB', 'result'), rows))
    failed = any(r[5].startswith('FAIL') for r in rows)
    print(f'\ntotal {time.time() - started:.0f} s; {"FAILED" if failed else "no failure"}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
