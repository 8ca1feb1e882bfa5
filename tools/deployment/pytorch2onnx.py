"""Export a DETR-family detector to ONNX and check it with onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT [--out FILE.onnx]
        [--image IMG | --shape H W] [--opset 17] [--verify] [--cfg-options k=v ...]

Supported: the package's ``CFDETR`` and ``CFDeformableDETR`` (plain, ``with_box_refine``,
``as_two_stage``) and mmdet's ``DETR`` / ``DeformableDETR`` (their mmcv deformable attention is
switched to the package's op first). The graph is traced for one input size (batch 1): the
image is run through the config's test pipeline (resize, then the data preprocessor's
normalisation and padding) and the ONNX model takes that preprocessed ``(1, 3, H, W)`` tensor.
Outputs: ``boxes`` ``(N, 4)`` (x1, y1, x2, y2 in the pixels of the resized image, i.e. the
``img_shape`` the pipeline produced; divide by the pipeline's ``scale_factor`` for the original
image), ``scores`` ``(N,)`` and ``labels`` ``(N,)``, the head's ``max_per_img`` detections.

Multi-scale deformable attention is recorded as its ``grid_sample`` formulation
(:func:`crossformer_mm.ops.ms_deform_attn_grid_sample`, ONNX ``GridSample``, opset >= 16),
chosen automatically during export. The exporter is torch's TorchScript-based one
(``dynamo=False``): it records the Python-level loops over the feature levels with the level
sizes of the traced input, which is what a fixed-size export needs.

``--verify`` runs the file with onnxruntime (CPU) on the same input and compares with PyTorch:
boxes within ``--box-tol`` pixels (default 1e-2), scores within ``--score-tol`` (1e-4), the same
labels; detections are paired in order, and where two nearly equal scores swap places, with the
detection of the same label and closest box. Exits with status 1 when they do not match.
"""
import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, ROOT)

#: Detector types the exporter knows; anything else fails with a clear message.
SUPPORTED = ('CFDETR', 'CFDeformableDETR', 'DETR', 'DeformableDETR')
#: Lowest opset with GridSample.
MIN_OPSET = 16


class ExportError(ValueError):
    """A configuration the exporter does not support."""


class DetectorForONNX(nn.Module):
    """``model.predict`` on one fixed-size preprocessed image, returning plain tensors."""

    def __init__(self, model: nn.Module, data_samples: list) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self.model.predict(inputs, self.data_samples, rescale=False)[0].pred_instances
        return pred.bboxes, pred.scores, pred.labels


def build_detector(config: str, checkpoint: Optional[str],
                   cfg_options: Optional[dict] = None) -> Tuple[nn.Module, object]:
    """The config's detector with the checkpoint's weights (``None``: as initialised), eval."""
    import crossformer_mm  # noqa: F401  (registers modules, applies the compatibility layer)
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    from mmengine.runner import load_checkpoint

    from crossformer_mm.models import replace_mmcv_msda
    from crossformer_mm.utils.config import load_config
    cfg = load_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('default_scope', 'mmdet') != 'mmdet':
        raise ExportError(f'pytorch2onnx: {config} is a {cfg.get("default_scope")} config; only '
                          f'mmdet detectors of types {", ".join(SUPPORTED)} are supported')
    model_type = cfg.model.get('type')
    if model_type not in SUPPORTED:
        raise ExportError(f'pytorch2onnx: model type {model_type!r} is not supported (supported: '
                          f'{", ".join(SUPPORTED)})')
    register_all_modules(init_default_scope=False)
    model_cfg = cfg.model.copy()
    backbone = model_cfg.get('backbone', {})
    if isinstance(backbone.get('init_cfg'), dict) and backbone.init_cfg.get('type') == 'Pretrained':
        backbone['init_cfg'] = None  # the checkpoint holds the backbone too
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(model_cfg)
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    replace_mmcv_msda(model)
    model.cfg = cfg
    return model.eval(), cfg


def prepare_input(model: nn.Module, cfg, image: Optional[str],
                  shape: Tuple[int, int]) -> Tuple[torch.Tensor, list]:
    """The preprocessed ``(1, 3, H, W)`` tensor and data samples of one image (a file, or a
    random image of ``shape``) through the config's test pipeline."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DefaultScope
    steps = [s for s in get_test_pipeline_cfg(cfg) if 'LoadAnnotations' not in s['type']]
    if image is None:
        steps[0] = dict(type='mmdet.LoadImageFromNDArray')
        rng = np.random.default_rng(0)
        data = dict(img=rng.integers(0, 256, (*shape, 3), dtype=np.uint8), img_id=0)
    else:
        if not os.path.isfile(image):
            raise FileNotFoundError(f'pytorch2onnx: --image {image!r} does not exist')
        data = dict(img_path=image, img_id=0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        data = Compose(steps)(data)
    batch = model.data_preprocessor(pseudo_collate([data]), False)
    return batch['inputs'], batch['data_samples']


def export(model: nn.Module, inputs: torch.Tensor, data_samples: list, out: str,
           opset: int = 17) -> DetectorForONNX:
    if opset < MIN_OPSET:
        raise ExportError(f'pytorch2onnx: --opset {opset} has no GridSample (needed by '
                          f'deformable attention); use --opset {MIN_OPSET} or higher')
    wrapper = DetectorForONNX(model, data_samples).eval()
    with torch.no_grad():
        torch.onnx.export(wrapper, (inputs, ), out, dynamo=False, opset_version=opset,
                          input_names=['inputs'], output_names=['boxes', 'scores', 'labels'],
                          do_constant_folding=True)
    return wrapper


def run_onnxruntime(path: str, inputs: torch.Tensor) -> List[np.ndarray]:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {'inputs': inputs.numpy()})


def compare(torch_out: Sequence[torch.Tensor], ort_out: Sequence[np.ndarray]) -> Dict[str, float]:
    """Max box difference (pixels), max score difference and label mismatches, pairing the
    detections in order, and where the order differs (near-equal scores), each PyTorch detection
    with the unused ONNX detection of the same label and closest box."""
    boxes, scores, labels = (t.detach().cpu().numpy() for t in torch_out)
    o_boxes, o_scores, o_labels = ort_out
    if boxes.shape != o_boxes.shape:
        return dict(box=float('inf'), score=float('inf'), label_mismatch=len(boxes), swapped=0,
                    count=len(boxes))
    order = np.arange(len(boxes))
    swapped = 0
    if not (np.array_equal(labels, o_labels)
            and np.abs(boxes - o_boxes).max(initial=0) <= 1e-2
            and np.abs(scores - o_scores).max(initial=0) <= 1e-4):
        unused = set(range(len(boxes)))
        for i in range(len(boxes)):
            same = [j for j in unused if o_labels[j] == labels[i]] or list(unused)
            j = min(same, key=lambda j: (np.abs(o_boxes[j] - boxes[i]).max()
                                         + np.abs(o_scores[j] - scores[i])))
            unused.discard(j)
            order[i] = j
            swapped += int(j != i)
    return dict(box=float(np.abs(boxes - o_boxes[order]).max(initial=0)),
                score=float(np.abs(scores - o_scores[order]).max(initial=0)),
                label_mismatch=int((labels != o_labels[order]).sum()), swapped=swapped,
                count=len(boxes))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Export a DETR-family detector to ONNX')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="weights file, or 'none' to export the initialised "
                        'model (for checks)')
    parser.add_argument('--out', default=None, help='output file (default: CONFIG name .onnx)')
    parser.add_argument('--image', default=None, help='image to trace and verify with')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1333),
                        help='H W of the random image used without --image (default 800 1333)')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--verify', action='store_true',
                        help='run the file with onnxruntime and compare with PyTorch')
    parser.add_argument('--box-tol', type=float, default=1e-2)
    parser.add_argument('--score-tol', type=float, default=1e-4)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    if checkpoint is not None and not os.path.isfile(checkpoint):
        print(f'error: checkpoint {checkpoint!r} does not exist', file=sys.stderr)
        return 2
    try:
        model, cfg = build_detector(args.config, checkpoint, args.cfg_options)
        inputs, samples = prepare_input(model, cfg, args.image, tuple(args.shape))
        out = args.out or os.path.splitext(os.path.basename(args.config))[0] + '.onnx'
        t0 = time.perf_counter()
        wrapper = export(model, inputs, samples, out, args.opset)
    except ExportError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f'exported {out} ({os.path.getsize(out) / 1e6:.1f} MB) in '
          f'{time.perf_counter() - t0:.1f} s; input {tuple(inputs.shape)}')
    if not args.verify:
        return 0
    with torch.no_grad():
        expected = wrapper(inputs)
    diff = compare(expected, run_onnxruntime(out, inputs))
    ok = (diff['box'] <= args.box_tol and diff['score'] <= args.score_tol
          and diff['label_mismatch'] == 0)
    print(f'onnxruntime vs PyTorch, {diff["count"]} detections: max |box diff| '
          f'{diff["box"]:.2e} px (tol {args.box_tol:g}), max |score diff| {diff["score"]:.2e} '
          f'(tol {args.score_tol:g}), label mismatches {diff["label_mismatch"]}, '
          f'order swaps {diff["swapped"]}: {"ok" if ok else "MISMATCH"}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
