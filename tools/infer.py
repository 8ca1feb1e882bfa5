"""Run a trained model on images: detection, instance segmentation, semantic segmentation or
classification, whichever task the config is for.

    python tools/infer.py CONFIG CHECKPOINT INPUTS... [--out-dir outputs] [--device cpu]
                          [--batch-size 1] [--score-thr 0.3] [--cfg-options k=v ...]

INPUTS are image files, folders (every image below them) or glob patterns (quote them). The
toolbox's own inferencer runs the model, shows its progress bar and draws with its visualizer
(MMDetection's ``DetInferencer``, MMSegmentation's ``MMSegInferencer``, MMPretrain's
``ImageClassificationInferencer``; the config's ``default_scope`` picks one). Written into
``--out-dir``:

* ``vis/``: each image with its predictions drawn (same file name; ``.png`` for classifiers);
* ``preds/<image stem>.json``: detectors — boxes (x1, y1, x2, y2), labels, scores and, for
  instance segmentation, RLE masks (MMDetection's format); segmentors — the classes present with
  their pixel counts, plus the label map as ``preds/<image stem>.png``; classifiers — label,
  class and scores.

Class names come from the checkpoint's ``meta.dataset_meta`` (the Runner saves it), else from the
config's test dataset.

An input that cannot be read as an image (damaged, empty, not an image) is named on stderr and
skipped; the others are still processed. Exit status: 0 when every image was processed, 1 when
some were skipped as unreadable, 2 for a usage error (bad config, checkpoint or inputs; nothing
is run).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.config import Config, DictAction

import crossformer_mm  # noqa: F401  (registers modules, applies the compatibility layer)
from crossformer_mm.utils.cli import user_errors_as_messages
from crossformer_mm.utils.config import (ConfigError, check_checkpoint_path, check_types,
                                         load_config)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
TASK_OF_SCOPE = {'mmdet': 'detection', 'mmseg': 'segmentation', 'mmpretrain': 'classification'}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Run a detector, segmentor or classifier on '
                                     'images and save pictures + JSON of its predictions')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('inputs', nargs='+', help='image files, folders or glob patterns')
    parser.add_argument('--out-dir', default='outputs', help='output folder (default: outputs)')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes scoring at least this (all are saved in JSON)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Image paths from files, folders (recursively) and glob patterns, in order, without
    repeats. Raises ``FileNotFoundError`` for an input that yields no image and ``ValueError``
    when two images share a file name (their outputs would overwrite each other)."""
    found: List[str] = []
    for item in inputs:
        if osp.isfile(item):
            paths = [item]
        elif osp.isdir(item):
            paths = sorted(p for p in glob.glob(osp.join(item, '**', '*'), recursive=True)
                           if p.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(p))
            if not paths:
                raise FileNotFoundError(f'input folder {item!r} holds no images '
                                        f'({", ".join(IMAGE_EXTENSIONS)})')
        elif glob.has_magic(item):
            paths = sorted(p for p in glob.glob(item, recursive=True)
                           if p.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(p))
            if not paths:
                raise FileNotFoundError(f'input pattern {item!r} matches no image files')
        else:
            raise FileNotFoundError(f'input {item!r} is not an image file, a folder or a glob '
                                    f'pattern')
        found.extend(paths)
    unique = list(dict.fromkeys(osp.normpath(p) for p in found))
    by_name: Dict[str, str] = {}
    for path in unique:
        name = osp.splitext(osp.basename(path))[0]
        if name in by_name:
            raise ValueError(f'inputs {by_name[name]!r} and {path!r} share the name {name!r}, so '
                             f'their outputs would overwrite each other; run them separately')
        by_name[name] = path
    return unique


def split_readable(images: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """``(images mmcv decodes, [(path, why) for the others])``, decoded as the toolboxes'
    ``LoadImageFromFile`` does (mmengine's file backend, ``mmcv.imfrombytes``)."""
    import mmcv
    from mmengine import fileio
    readable: List[str] = []
    unreadable: List[Tuple[str, str]] = []
    for path in images:
        try:
            img = mmcv.imfrombytes(fileio.get(path))
        except Exception as err:  # cv2 / PIL errors on empty or damaged files
            lines = str(err).strip().splitlines()
            unreadable.append((path, f'{type(err).__name__}: {lines[-1] if lines else err}'))
            continue
        if img is None:
            unreadable.append((path, 'not a decodable image'))
        else:
            readable.append(path)
    return readable, unreadable


def config_classes(cfg: Config, scope: str) -> Optional[Dict[str, Any]]:
    """``classes`` (and ``palette``) of the config's test dataset: its ``metainfo`` or the
    dataset class's own ``METAINFO``; None if neither names classes."""
    dataset = cfg.get('test_dataloader', {}).get('dataset', {})
    while isinstance(dataset, dict) and 'dataset' in dataset and 'metainfo' not in dataset:
        dataset = dataset['dataset']
    meta = dict(dataset.get('metainfo') or {})
    if not meta.get('classes') and isinstance(dataset.get('type'), str):
        from mmengine.registry import DefaultScope
        module = __import__(f'{scope}.registry', fromlist=['DATASETS'])
        with DefaultScope.overwrite_default_scope(scope):
            cls = module.DATASETS.get(dataset['type'])
        meta = dict(getattr(cls, 'METAINFO', {}) or {})
    if not meta.get('classes'):
        return None
    return {k: meta[k] for k in ('classes', 'palette') if meta.get(k) is not None}


def checkpoint_has_classes(path: str) -> bool:
    from mmengine.runner import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return bool(isinstance(meta, dict) and (meta.get('dataset_meta') or {}).get('classes'))


def write_json(path: str, data: Dict[str, Any]) -> None:
    with open(path, 'w') as f:
        json.dump(data, f, indent=1)


def run_detection(cfg: Config, args: argparse.Namespace, images: List[str],
                  classes: Optional[Dict[str, Any]]) -> None:
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg, weights=args.checkpoint, device=args.device,
                               scope='mmdet')
    if classes is not None:
        inferencer.model.dataset_meta = dict(inferencer.model.dataset_meta, **classes)
        inferencer.visualizer.dataset_meta = inferencer.model.dataset_meta
    inferencer(images, batch_size=args.batch_size, out_dir=args.out_dir, no_save_pred=False,
               pred_score_thr=args.score_thr)


def run_segmentation(cfg: Config, args: argparse.Namespace, images: List[str],
                     classes: Optional[Dict[str, Any]]) -> None:
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=args.device,
                                 scope='mmseg')
    if classes is not None:
        inferencer.model.dataset_meta = dict(inferencer.model.dataset_meta, **classes)
    names = inferencer.model.dataset_meta['classes']
    pred_dir = osp.join(args.out_dir, 'preds')
    os.makedirs(pred_dir, exist_ok=True)
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        result = inferencer(chunk, batch_size=args.batch_size, out_dir=args.out_dir,
                            img_out_dir='vis', pred_out_dir='')
        maps = result['predictions']
        maps = maps if isinstance(maps, list) else [maps]
        for path, label_map in zip(chunk, maps):
            import cv2
            stem = osp.splitext(osp.basename(path))[0]
            cv2.imwrite(osp.join(pred_dir, stem + '.png'), label_map.astype(np.uint8))
            labels, counts = np.unique(label_map, return_counts=True)
            write_json(osp.join(pred_dir, stem + '.json'), dict(
                img_path=path, height=int(label_map.shape[0]), width=int(label_map.shape[1]),
                label_map=stem + '.png',
                labels=[int(v) for v in labels],
                classes=[names[int(v)] if int(v) < len(names) else str(int(v)) for v in labels],
                pixel_counts=[int(c) for c in counts]))


def run_classification(cfg: Config, args: argparse.Namespace, images: List[str],
                       classes: Optional[Dict[str, Any]]) -> None:
    from mmengine.registry import DefaultScope
    from mmpretrain.apis import ImageClassificationInferencer
    # Unlike mmdet's and mmseg's inferencers it takes no scope: it builds its pipeline in the
    # current default scope, which an earlier run in the same process may have set.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer(
            model=cfg, pretrained=args.checkpoint, device=args.device,
            classes=None if classes is None else classes['classes'])
        pred_dir = osp.join(args.out_dir, 'preds')
        os.makedirs(pred_dir, exist_ok=True)
        results = inferencer(images, batch_size=args.batch_size,
                             show_dir=osp.join(args.out_dir, 'vis'))
    for path, result in zip(images, results):
        stem = osp.splitext(osp.basename(path))[0]
        write_json(osp.join(pred_dir, stem + '.json'), dict(
            img_path=path, pred_label=int(result['pred_label']),
            pred_class=result.get('pred_class'), pred_score=float(result['pred_score']),
            pred_scores=[float(v) for v in result['pred_scores']]))


RUNNERS = {'mmdet': run_detection, 'mmseg': run_segmentation, 'mmpretrain': run_classification}


@user_errors_as_messages
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns the exit status (see the module docstring)."""
    args = parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f'--batch-size must be >= 1, got {args.batch_size}')
    check_checkpoint_path(args.checkpoint)
    try:
        images = collect_images(args.inputs)
    except ValueError as err:  # shown as one line like the other user errors
        raise ConfigError(str(err)) from err
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in RUNNERS:
        raise ConfigError(f'tools/infer.py runs detection (mmdet), segmentation (mmseg) and '
                          f'classification (mmpretrain) configs; this config has '
                          f'default_scope={scope!r}')
    check_types(cfg, ['model'])
    images, unreadable = split_readable(images)
    for path, why in unreadable:
        print(f'skipped {path}: cannot be read as an image ({why})', file=sys.stderr)
    if not images:
        raise ConfigError(f'none of the {len(unreadable)} input file(s) can be read as an image')
    classes = None if checkpoint_has_classes(args.checkpoint) else config_classes(cfg, scope)
    os.makedirs(args.out_dir, exist_ok=True)
    RUNNERS[scope](cfg, args, images, classes)
    print(f'{TASK_OF_SCOPE[scope]}: {len(images)} image(s); pictures in '
          f'{osp.join(args.out_dir, "vis")}, JSON in {osp.join(args.out_dir, "preds")}')
    if unreadable:
        print(f'{len(unreadable)} unreadable input(s) skipped: '
              f'{", ".join(path for path, _ in unreadable)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
