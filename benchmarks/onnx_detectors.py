"""ONNX export of the DETR family: onnxruntime (CPU) against PyTorch on the same input.

For each variant (Deformable DETR plain / +refine / +refine+two-stage on the demo config, and
DETR R-50 with the demo image size), the detector is built with the config's initialisation
(random weights; ``--checkpoint`` for a trained file), exported with
``tools/deployment/pytorch2onnx.py``'s functions for one demo image (the embedded demo dataset,
generated in a temporary folder, through the config's test pipeline), and both are timed on that
same preprocessed input: PyTorch ``model.predict`` (eager, the package's kernels, ``no_grad``)
and an onnxruntime CPU session, each the median of ``--repeat`` calls after one warm-up call
(``_harness.time_fn``). Prints the median times, their ratio, the parity figures (max box
difference in pixels, max score difference) and the time the export took.

    python benchmarks/onnx_detectors.py [--variants NAME ...] [--repeat 10] [--threads 2]
"""
import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch
from _harness import time_fn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools', 'deployment'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytorch2onnx  # noqa: E402

DEMO = os.path.join(ROOT, 'configs', 'demo', 'deformable-detr-refine-twostage_r18-c32_demo-coco.py')
DETR = os.path.join(ROOT, 'configs', 'detr', 'detr_r50_8xb2-150e_coco.py')
#: name: (config, cfg options)
VARIANTS: Dict[str, tuple] = {
    'deformable-detr': (DEMO, {'model.with_box_refine': False, 'model.as_two_stage': False}),
    'deformable-detr-refine': (DEMO, {'model.with_box_refine': True,
                                      'model.as_two_stage': False}),
    'deformable-detr-refine-twostage': (DEMO, {}),
    # DETR R-50 at the demo image size (its test pipeline resizes to 1333x800 otherwise).
    'detr-r50': (DETR, {'test_dataloader.dataset.pipeline.1.scale': (256, 256)}),
}


def demo_image(folder: str) -> str:
    from crossformer_mm.datasets.demo_data import make_demo_data
    make_demo_data(folder, num_train=1, num_val=1, size=256, seed=0, which=('coco', ))
    val = os.path.join(folder, 'demo_coco', 'val')
    return os.path.join(val, sorted(os.listdir(val))[0])


def bench_variant(name: str, image: str, folder: str, repeat: int, threads: int,
                  checkpoint: Optional[str] = None) -> dict:
    import onnxruntime as ort
    config, options = VARIANTS[name]
    torch.manual_seed(0)
    model, cfg = pytorch2onnx.build_detector(config, checkpoint, dict(options))
    if checkpoint is None:
        model.init_weights()
    inputs, samples = pytorch2onnx.prepare_input(model, cfg, image, (256, 256))
    path = os.path.join(folder, f'{name}.onnx')
    t0 = time.perf_counter()
    wrapper = pytorch2onnx.export(model, inputs, samples, path)
    export_s = time.perf_counter() - t0
    options_ = ort.SessionOptions()
    options_.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options_, providers=['CPUExecutionProvider'])
    feed = {'inputs': inputs.numpy()}
    with torch.no_grad():
        expected = wrapper(inputs)
        torch_s = time_fn(lambda: wrapper(inputs), repeat, warmup=1)['median_s']
    ort_s = time_fn(lambda: session.run(None, feed), repeat, warmup=1)['median_s']
    diff = pytorch2onnx.compare(expected, session.run(None, feed))
    return dict(name=name, input=tuple(inputs.shape[-2:]), export=export_s, torch=torch_s,
                ort=ort_s, **diff)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--repeat', type=int, default=10)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='intra-op threads for both runtimes')
    parser.add_argument('--checkpoint', default=None,
                        help='weights for the variants (default: as initialised)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        image = demo_image(folder)
        for name in args.variants:
            rows.append(bench_variant(name, image, folder, args.repeat, args.threads,
                                      args.checkpoint))
            r = rows[-1]
            print(f'{name}: PyTorch {r["torch"] * 1e3:.1f} ms, ORT {r["ort"] * 1e3:.1f} ms',
                  flush=True)
    print(f'\nonnxruntime {__import__("onnxruntime").__version__}, torch {torch.__version__}, '
          f'{args.threads} threads, median of {args.repeat}; load average '
          + ' '.join(f'{x:.1f}' for x in os.getloadavg()) + '\n')
    print('| variant | input | PyTorch | ONNX Runtime | ORT / PyTorch | max box diff (px) | '
          'max score diff | label mismatches | order swaps | export |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["name"]} | {r["input"][0]}x{r["input"][1]} | {r["torch"] * 1e3:.1f} ms | '
              f'{r["ort"] * 1e3:.1f} ms | {r["ort"] / r["torch"]:.2f} | {r["box"]:.1e} | '
              f'{r["score"]:.1e} | {r["label_mismatch"]} | {r["swapped"]} | {r["export"]:.0f} s |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
