"""The embedded demo datasets: deterministic, valid COCO / ADE20K / ImageNet-style formats, the
promised variety."""
import hashlib
import json
import os
import os.path as osp
from collections import defaultdict

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from crossformer_mm.datasets.demo_data import (ADE_CLASSES, CLS_CLASSES, COCO_CLASSES,
                                               make_demo_data, mask_to_polygons, shape_mask)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=24, num_val=8, size=128, seed=3)
    return root


def tree_digest(root) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            h.update(name.encode())
            with open(osp.join(dirpath, name), 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def test_deterministic(demo, tmp_path):
    make_demo_data(str(tmp_path), num_train=24, num_val=8, size=128, seed=3)
    assert tree_digest(tmp_path) == tree_digest(demo)


def test_second_run_skips(demo):
    assert make_demo_data(str(demo), num_train=24, num_val=8, size=128, seed=3) == {
        'coco': {}, 'ade': {}, 'cls': {}}


def test_coco_annotations(demo):
    coco = COCO(str(demo / 'demo_coco' / 'annotations' / 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(COCO_CLASSES)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(coco.getImgIds()) == 24 and len(anns) >= 24 * 2
    sizes = []
    for ann in anns:
        x, y, w, h = ann['bbox']
        assert w > 0 and h > 0 and 0 <= x and x + w <= 128 and 0 <= y and y + h <= 128
        mask = coco.annToMask(ann)
        ys, xs = np.nonzero(mask)
        # The polygon lies inside the box and rasterises back to the recorded visible area.
        assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
        assert abs(int(mask.sum()) - ann['area']) <= 0.05 * ann['area'] + 2
        sizes.append(max(w, h))
    # Objects of several scales: small, medium and large relative to the 128 px images.
    assert min(sizes) < 16 and max(sizes) > 40


def test_categories_differ_by_shape_not_colour(demo):
    data = json.load(open(demo / 'demo_coco' / 'annotations' / 'instances_train.json'))
    import cv2
    colours = defaultdict(set)
    for ann in data['annotations']:
        img = cv2.imread(str(demo / 'demo_coco' / 'train' / f"{ann['image_id']:06d}.jpg"))
        x, y, w, h = ann['bbox']
        cx, cy = x + w // 2, y + h // 2
        colours[ann['category_id']].add(tuple(int(v) // 64 for v in img[cy, cx]))
    assert all(len(c) >= 2 for c in colours.values()), colours


def test_some_objects_overlap(demo):
    coco = COCO(str(demo / 'demo_coco' / 'annotations' / 'instances_train.json'))
    overlaps = 0
    for img_id in coco.getImgIds():
        boxes = [a['bbox'] for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id))]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                ax, ay, aw, ah = boxes[i]
                bx, by, bw, bh = boxes[j]
                if min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by):
                    overlaps += 1
    assert overlaps > 0


def test_ade_labels(demo):
    import cv2
    folder = demo / 'demo_ade' / 'annotations' / 'training'
    values = set()
    for name in sorted(os.listdir(folder)):
        values |= set(np.unique(cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)).tolist())
    assert values <= {idx for _, idx in ADE_CLASSES} and {1, 4} <= values and len(values) >= 4
    assert len(os.listdir(demo / 'demo_ade' / 'images' / 'validation')) == 8


def test_ade_class_indices_match_mmseg():
    from mmseg.datasets import ADE20KDataset
    names = ADE20KDataset.METAINFO['classes']
    for name, index in ADE_CLASSES:
        assert names[index - 1] == name


def test_mmseg_reads_ade_demo(demo):
    from mmseg.datasets import ADE20KDataset
    ds = ADE20KDataset(
        data_root=str(demo / 'demo_ade'),
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        metainfo=dict(classes=tuple(n for n, _ in ADE_CLASSES)),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='mmseg.LoadAnnotations', reduce_zero_label=True)])
    assert len(ds) == 8
    seg = ds[0]['gt_seg_map']
    # reduce_zero_label shifts ADE indices by one; the label map then renumbers the subset 0..5.
    assert set(np.unique(seg).tolist()) <= set(range(len(ADE_CLASSES))) | {255}
    assert {0, 1} <= set(np.unique(seg).tolist())


def test_cls_layout_and_labels(demo):
    import cv2
    root = demo / 'demo_cls'
    assert (root / 'classes.txt').read_text().split() == list(CLS_CLASSES) == sorted(CLS_CLASSES)
    for split, per_class in (('train', 24), ('val', 8)):
        lines = (root / 'meta' / f'{split}.txt').read_text().splitlines()
        assert len(lines) == per_class * len(CLS_CLASSES)
        labels = []
        for line in lines:
            name, label = line.split()
            # the annotation file and the class folder agree on the label
            assert name.split('/')[0] == CLS_CLASSES[int(label)]
            img = cv2.imread(str(root / split / name))
            assert img.shape == (128, 128, 3)
            labels.append(int(label))
        # balanced: num_train / num_val images of every class
        assert np.bincount(labels, minlength=len(CLS_CLASSES)).tolist() == [per_class] * 5
        files = sorted(p.relative_to(root / split).as_posix()
                       for p in (root / split).rglob('*.jpg'))
        assert files == sorted(line.split()[0] for line in lines)


def test_cls_shape_is_the_labelled_one(demo):
    """The only bright region of each image is its one shape: its outline matches the class
    better than any other shape (checked through the hole a star or cross has in its hull)."""
    import cv2
    root = demo / 'demo_cls'
    solidity = defaultdict(list)
    for line in (root / 'meta' / 'train.txt').read_text().splitlines():
        name, label = line.split()
        img = cv2.imread(str(root / 'train' / name)).astype(np.int32)
        # background channels stay below ~130; every palette colour has a channel >= 180 (x0.8)
        mask = cv2.morphologyEx((img.max(axis=2) > 136).astype(np.uint8), cv2.MORPH_OPEN,
                                np.ones((3, 3), np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        c = max(contours, key=cv2.contourArea)
        solidity[CLS_CLASSES[int(label)]].append(cv2.contourArea(c) /
                                                 max(cv2.contourArea(cv2.convexHull(c)), 1))
    mean = {k: float(np.mean(v)) for k, v in solidity.items()}
    # convex shapes fill their hull; the star and the cross do not
    assert min(mean['circle'], mean['square'], mean['triangle']) > 0.85
    assert max(mean['star'], mean['cross']) < 0.8


def test_mmpretrain_reads_cls_demo_both_ways(demo):
    from mmpretrain.datasets import CustomDataset
    root = str(demo / 'demo_cls')
    by_file = CustomDataset(data_root=root, ann_file='meta/val.txt', data_prefix='val',
                            metainfo=dict(classes=CLS_CLASSES))
    by_folder = CustomDataset(data_root=root, data_prefix='val')
    assert by_folder.CLASSES == CLS_CLASSES and len(by_file) == len(by_folder) == 40
    labels_file = {osp.basename(d['img_path']): d['gt_label'] for d in
                   (by_file.get_data_info(i) for i in range(len(by_file)))}
    labels_folder = {osp.basename(d['img_path']): d['gt_label'] for d in
                     (by_folder.get_data_info(i) for i in range(len(by_folder)))}
    assert labels_file == labels_folder


def test_shapes_and_polygons():
    for kind in COCO_CLASSES:
        mask = shape_mask(kind, 64, 32, 32, 20, 0.3, 64)
        assert 200 < mask.sum() < 64 * 64
        assert mask_to_polygons(mask)
    with pytest.raises(ValueError, match='unknown shape'):
        shape_mask('hexagon', 64, 32, 32, 20, 0.0, 64)


def _polygons_whole_image(mask, upsample=4):
    """The contours traced on the whole upsampled image: what ``mask_to_polygons`` returns."""
    fine = np.kron(mask.astype(np.uint8), np.ones((upsample, upsample), np.uint8))
    contours, _ = cv2.findContours(fine, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[round(float(v), 3) for v in ((c.reshape(-1, 2) + 0.5) / upsample).reshape(-1)]
            for c in contours if len(c) >= 3]


@pytest.mark.parametrize('kind, cx, cy, radius', [
    ('star', 32, 32, 20), ('cross', 5, 40, 9), ('square', 60, 3, 8), ('triangle', 0, 63, 12),
    ('circle', 63, 63, 30)])
def test_polygons_match_tracing_the_whole_image(kind, cx, cy, radius):
    """Tracing the shape's box (shapes in the middle and cut by every edge and corner) gives the
    same polygons, point for point, as tracing the whole image; two shapes give two polygons."""
    mask = shape_mask(kind, 64, cx, cy, radius, 0.7, 64)
    assert mask_to_polygons(mask) == _polygons_whole_image(mask)
    two = mask | shape_mask('circle', 64, 10, 10, 4, 0.0, 64)
    assert len(mask_to_polygons(two)) == 2
    assert mask_to_polygons(two) == _polygons_whole_image(two)
    assert mask_to_polygons(np.zeros((8, 8), np.uint8)) == []


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_train=0), 'num_train'), (dict(size=16), 'size'), (dict(which=('voc', )), 'voc')])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_demo_data(str(tmp_path), **kwargs)
