"""Deterministic generator of the embedded demo datasets.

Three small datasets that train on a laptop CPU and exercise the real MMDetection /
MMSegmentation / MMPretrain data pipelines:

* **demo_coco** — COCO-format instance segmentation: five shape categories (circle, square,
  triangle, star, cross) that differ by *shape* (every object gets a random colour from a shared
  palette), objects from ~12 to ~110 px, some overlapping (occlusion handled: boxes, polygons and
  areas describe the visible part), polygon masks, ``train`` and ``val`` splits.
* **demo_ade** — ADE20K-format semantic segmentation: ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png`` whose pixel values are ADE20K class indices (0 =
  "other", ignored with ``reduce_zero_label=True``), so mmseg's ``ADE20KDataset`` reads it with a
  ``metainfo`` that names a subset of ADE20K's classes (:data:`ADE_CLASSES`).
* **demo_cls** — ImageNet-style classification: one shape per image (the five demo shapes, random
  colour, size, rotation and position; ``num_train`` / ``num_val`` images *per class*), stored as
  ``{train,val}/<class>/*.jpg`` folders plus ``meta/{train,val}.txt`` annotation files
  (``<class>/<file> <label>`` lines) and ``classes.txt``, so mmpretrain's ``CustomDataset`` reads
  it either way. Classes are in alphabetical order
  (:data:`CLS_CLASSES`), the order folder mode infers; both splits are balanced.

Everything is drawn with OpenCV from a seeded numpy generator: the same arguments give the same
bytes. ``tools/make_demo_data.py`` is the command-line entry.
"""
import json
import math
import os
import os.path as osp
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

#: Detection categories, in COCO category-id order (ids start at 1).
COCO_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star', 'cross')

#: Classification classes, alphabetical (the order mmpretrain infers from the class folders).
CLS_CLASSES: Tuple[str, ...] = tuple(sorted(COCO_CLASSES))

#: Semantic classes of the ADE-format demo: (ADE20K class name, its 1-based ADE20K index).
#: Background regions are 'wall' and 'floor'; the shapes are mapped to ADE20K object classes.
ADE_CLASSES: Tuple[Tuple[str, int], ...] = (
    ('wall', 1), ('floor', 4), ('box', 42), ('ball', 120), ('tent', 115), ('flower', 67))
#: Which shape is painted with which ADE class (the shapes that the segmentation demo uses).
ADE_SHAPES: Tuple[Tuple[str, str], ...] = (
    ('square', 'box'), ('circle', 'ball'), ('triangle', 'tent'), ('star', 'flower'))

PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (250, 190, 212), (255, 255, 255))

#: (min, max) object size in pixels for the small / medium / large scale buckets, at 256 px.
SCALES: Tuple[Tuple[int, int], ...] = ((12, 28), (28, 60), (60, 110))


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of one generated dataset (written to ``meta.json`` for idempotence)."""
    num_train: int
    num_val: int
    size: int
    seed: int
    version: int = 1


def shape_mask(kind: str, size: int, cx: float, cy: float, radius: float, angle: float,
               canvas: int) -> np.ndarray:
    """Binary mask (uint8 0/1) of one shape of ``kind`` centred at (cx, cy)."""
    mask = np.zeros((canvas, canvas), np.uint8)
    if kind == 'circle':
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius)), 1, -1, cv2.LINE_8)
        return mask
    if kind == 'square':
        pts = _regular_polygon(4, radius, angle + math.pi / 4)
    elif kind == 'triangle':
        pts = _regular_polygon(3, radius, angle)
    elif kind == 'star':
        outer = _regular_polygon(5, radius, angle)
        inner = _regular_polygon(5, radius * 0.42, angle + math.pi / 5)
        pts = np.stack([outer, inner], 1).reshape(-1, 2)
    elif kind == 'cross':
        a, b = radius, radius * 0.36
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                        (-b, b), (-a, b), (-a, -b), (-b, -b)], np.float64)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = pts @ rot.T
    else:
        raise ValueError(f'unknown shape {kind!r}; expected one of {COCO_CLASSES}')
    pts = np.round(pts + np.array([cx, cy])).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1, cv2.LINE_8)
    return mask


def _regular_polygon(n: int, radius: float, angle: float) -> np.ndarray:
    t = angle - math.pi / 2 + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour gradient with noise, darker than most palette colours."""
    c0, c1 = rng.integers(0, 110, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(theta) * xx + np.sin(theta) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, 6, size=img.shape)
    return img


def _place_objects(rng: np.random.Generator, size: int, kinds: Sequence[str],
                   num: int) -> List[Tuple[str, np.ndarray, Tuple[int, int, int]]]:
    """Sample up to ``num`` shapes; each stays ≥ 60% visible after later ones are drawn."""
    scale = size / 256
    placed: List[Tuple[str, np.ndarray, Tuple[int, int, int]]] = []
    for _ in range(num):
        for _attempt in range(40):
            kind = kinds[rng.integers(len(kinds))]
            lo, hi = SCALES[rng.integers(len(SCALES))]
            diameter = rng.uniform(lo, hi) * scale
            radius = diameter / 2
            cx = rng.uniform(radius, size - radius)
            cy = rng.uniform(radius, size - radius)
            mask = shape_mask(kind, size, cx, cy, radius, rng.uniform(0, 2 * math.pi), size)
            area = int(mask.sum())
            if area < 40:
                continue
            # The new shape may cover at most 40% of any earlier shape's visible part.
            ok = True
            for _, prev, _ in placed:
                prev_area = int(prev.sum())
                if prev_area and (prev & mask).sum() > 0.4 * prev_area:
                    ok = False
                    break
            if not ok:
                continue
            for _, prev, _ in placed:
                prev &= (1 - mask).astype(np.uint8)
            color = PALETTE[rng.integers(len(PALETTE))]
            placed.append((kind, mask, color))
            break
    return [p for p in placed if p[1].sum() >= 30]


def _render(rng: np.random.Generator, size: int,
            objects: Sequence[Tuple[str, np.ndarray, Tuple[int, int, int]]],
            background: Optional[np.ndarray] = None) -> np.ndarray:
    img = _background(rng, size) if background is None else background.astype(np.float64)
    for _, mask, color in objects:
        shade = np.array(color, np.float64) * rng.uniform(0.8, 1.0)
        img[mask.astype(bool)] = shade + rng.normal(0, 4, size=(int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def mask_to_polygons(mask: np.ndarray, upsample: int = 4) -> List[List[float]]:
    """Outer contours of a binary mask as COCO polygons (flat x, y lists, ≥ 3 points).

    Contours are traced on a ``upsample``-times finer grid so they run just inside the pixel edges
    (pixel ``i`` spans ``[i, i + 1)``); rasterising the polygons gives back the mask's pixels, even
    for objects only a few pixels wide.
    """
    mask = mask.astype(np.uint8)
    x, y, w, h = cv2.boundingRect(mask)
    if not w:
        return []
    # Traced on the mask's box with a 1-pixel margin (clipped at the image edge): the same
    # contours in the same order as on the whole image, at a small part of the cost.
    y0, x0 = max(y - 1, 0), max(x - 1, 0)
    crop = mask[y0:y + h + 1, x0:x + w + 1]
    fine = crop.repeat(upsample, 0).repeat(upsample, 1)
    contours, _ = cv2.findContours(fine, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = (c.reshape(-1, 2).astype(np.float64) + 0.5) / upsample + (x0, y0)
        if len(c) >= 3:
            polys.append([round(float(v), 3) for v in c.reshape(-1)])
    return polys


def _coco_split(rng: np.random.Generator, root: str, split: str, count: int, size: int,
                start_id: int) -> Dict:
    os.makedirs(osp.join(root, split), exist_ok=True)
    images, annotations = [], []
    ann_id = start_id * 100
    for i in range(count):
        image_id = start_id + i
        objects = _place_objects(rng, size, COCO_CLASSES, int(rng.integers(2, 7)))
        img = _render(rng, size, objects)
        name = f'{image_id:06d}.jpg'
        cv2.imwrite(osp.join(root, split, name), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=name, width=size, height=size))
        for kind, mask, _ in objects:
            ys, xs = np.nonzero(mask)
            polys = mask_to_polygons(mask)
            if not polys:
                continue
            x0, y0 = int(xs.min()), int(ys.min())
            w, h = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
            annotations.append(dict(
                id=ann_id, image_id=image_id, category_id=COCO_CLASSES.index(kind) + 1,
                bbox=[x0, y0, w, h], area=int(mask.sum()), segmentation=polys, iscrowd=0))
            ann_id += 1
    categories = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(COCO_CLASSES)]
    return dict(images=images, annotations=annotations, categories=categories,
                info=dict(description=f'crossformer_mm demo shapes, {split} split'))


def make_demo_coco(root: str, spec: DemoSpec) -> Dict[str, int]:
    """Write the COCO-format demo dataset under ``root``; returns image/annotation counts."""
    rng = np.random.default_rng(spec.seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    counts = {}
    for split, count, start in (('train', spec.num_train, 1), ('val', spec.num_val, 100001)):
        data = _coco_split(rng, root, split, count, spec.size, start)
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(data, f)
        counts[f'{split}_images'] = len(data['images'])
        counts[f'{split}_objects'] = len(data['annotations'])
    return counts


def make_demo_ade(root: str, spec: DemoSpec) -> Dict[str, int]:
    """Write the ADE20K-format demo dataset under ``root``; returns image counts."""
    rng = np.random.default_rng(spec.seed + 1)
    index = dict(ADE_CLASSES)
    shape_to_class = dict(ADE_SHAPES)
    counts = {}
    for split, count in (('training', spec.num_train), ('validation', spec.num_val)):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for i in range(count):
            size = spec.size
            horizon = int(rng.uniform(0.35, 0.65) * size)
            label = np.full((size, size), index['wall'], np.uint8)
            label[horizon:] = index['floor']
            wall, floor = rng.integers(40, 140, size=(2, 3))
            bg = np.empty((size, size, 3), np.float64)
            bg[:horizon] = wall
            bg[horizon:] = floor
            bg += rng.normal(0, 6, size=bg.shape)
            objects = _place_objects(rng, size, tuple(shape_to_class), int(rng.integers(1, 5)))
            img = _render(rng, size, objects, background=bg)
            for kind, mask, _ in objects:
                label[mask.astype(bool)] = index[shape_to_class[kind]]
            name = f'ADE_demo_{split}_{i:05d}'
            cv2.imwrite(osp.join(root, 'images', split, name + '.jpg'), img[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(osp.join(root, 'annotations', split, name + '.png'), label)
        counts[f'{split}_images'] = count
    return counts


def make_demo_cls(root: str, spec: DemoSpec) -> Dict[str, int]:
    """Write the ImageNet-style classification demo dataset under ``root``; returns image counts.

    ``spec.num_train`` / ``spec.num_val`` are counts *per class* (a classifier needs more images
    than a detector, which sees several objects per image). Image ``i`` of a split shows one shape
    of class ``CLS_CLASSES[i % 5]`` whose diameter is 35-85% of the image side, on the gradient
    background of the detection images.
    """
    rng = np.random.default_rng(spec.seed + 2)
    size = spec.size
    counts = {}
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(CLS_CLASSES) + '\n')
    for split, per_class in (('train', spec.num_train), ('val', spec.num_val)):
        count = per_class * len(CLS_CLASSES)
        for kind in CLS_CLASSES:
            os.makedirs(osp.join(root, split, kind), exist_ok=True)
        lines = []
        for i in range(count):
            label = i % len(CLS_CLASSES)
            kind = CLS_CLASSES[label]
            radius = rng.uniform(0.35, 0.85) * size / 2
            cx, cy = rng.uniform(radius, size - radius, size=2)
            mask = shape_mask(kind, size, cx, cy, radius, rng.uniform(0, 2 * math.pi), size)
            color = PALETTE[rng.integers(len(PALETTE))]
            img = _render(rng, size, [(kind, mask, color)])
            name = f'{kind}/{split}_{i:05d}.jpg'
            cv2.imwrite(osp.join(root, split, name), img[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            lines.append(f'{name} {label}\n')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
        counts[f'{split}_images'] = count
    return counts


def _up_to_date(root: str, spec: DemoSpec) -> bool:
    try:
        with open(osp.join(root, 'meta.json')) as f:
            return json.load(f) == asdict(spec)
    except (OSError, ValueError):
        return False


#: The datasets :func:`make_demo_data` can write, as ``out/demo_<name>``.
DEMO_DATASETS: Tuple[str, ...] = ('coco', 'ade', 'cls')


def make_demo_data(out: str = 'data', num_train: int = 400, num_val: int = 100,
                   size: int = 256, seed: int = 0, force: bool = False,
                   which: Sequence[str] = DEMO_DATASETS) -> Dict[str, Dict[str, int]]:
    """Generate ``out/demo_<name>`` for each name in ``which`` (``coco``, ``ade``, ``cls``); skips a
    dataset already generated with the same parameters unless ``force``. Returns per-dataset
    counts (empty for skipped ones)."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train} and {num_val}')
    if size < 64:
        raise ValueError(f'size must be >= 64 pixels, got {size}')
    unknown = set(which) - set(DEMO_DATASETS)
    if unknown:
        raise ValueError(f'unknown dataset(s) {sorted(unknown)} in `which`; expected a subset of '
                         f'{DEMO_DATASETS}')
    spec = DemoSpec(num_train, num_val, size, seed)
    result: Dict[str, Dict[str, int]] = {}
    makers = {'coco': make_demo_coco, 'ade': make_demo_ade, 'cls': make_demo_cls}
    for name in which:
        root = osp.join(out, f'demo_{name}')
        if not force and _up_to_date(root, spec):
            result[name] = {}
            continue
        result[name] = makers[name](root, spec)
        with open(osp.join(root, 'meta.json'), 'w') as f:
            json.dump(asdict(spec), f)
    return result
