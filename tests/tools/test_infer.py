"""``tools/infer.py`` on the demo images, one config per task (detection, instance segmentation,
semantic segmentation, classification), each with a tiny checkpoint of a randomly initialised
model: a picture and a JSON per image; inputs as a file, a folder and a glob; clear errors."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope

import crossformer_mm  # noqa: F401  (registers the package's modules)
from crossformer_mm.datasets.demo_data import ADE_CLASSES, CLS_CLASSES, COCO_CLASSES, make_demo_data

ROOT = Path(__file__).resolve().parents[2]
DET_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_crossformer-demo_fpn_24e_demo-coco.py'
SEG_CONFIG = ROOT / 'configs' / 'upernet' / 'upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py'
CLS_CONFIG = ROOT / 'configs' / 'demo' / 'crossformer-demo_1xb32-30e_demo-cls-64x64.py'
#: A shipped Mask R-CNN config with a small backbone and a 128 px test pipeline.
INS_CONFIG = """_base_ = '{root}/configs/mask_rcnn/mask-rcnn_crossformer-t_fpn_1x_coco.py'
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dim=32, depths=(1, 1, 2, 1),
                            num_heads=(1, 2, 4, 8)),
                  init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256]),
    roi_head=dict(bbox_head=dict(num_classes=5), mask_head=dict(num_classes=5)),
    test_cfg=dict(rcnn=dict(score_thr=0.0)))
test_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'), dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_path', 'ori_shape', 'img_shape', 'scale_factor'))]))
"""


def load_tool():
    spec = importlib.util.spec_from_file_location('infer_tool', ROOT / 'tools' / 'infer.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infer = load_tool()


@pytest.fixture(scope='module')
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('infer')
    make_demo_data(str(root), num_train=2, num_val=2, size=128, seed=0)
    return root


def tiny_checkpoint(cfg_path: Path, path: Path, dataset_meta: Optional[dict] = None):
    """Save a randomly initialised model of ``cfg_path`` (as the Runner would: ``state_dict`` +
    ``meta``); return the model and its config."""
    cfg = Config.fromfile(str(cfg_path))
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model_cfg = cfg.model
    model_cfg.setdefault('data_preprocessor', cfg.get('data_preprocessor'))
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = registry.build(model_cfg)
        model.init_weights()
    meta = {} if dataset_meta is None else {'dataset_meta': dataset_meta}
    torch.save({'state_dict': model.state_dict(), 'meta': meta}, path)
    return model.eval(), cfg


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def test_detection_on_a_folder(demo, tmp_path):
    ckpt = tmp_path / 'det.pth'
    tiny_checkpoint(DET_CONFIG, ckpt, dict(classes=COCO_CLASSES))
    out = tmp_path / 'out'
    infer.main([str(DET_CONFIG), str(ckpt), str(demo / 'demo_coco' / 'val'), '--out-dir', str(out),
                '--cfg-options', 'model.test_cfg.score_thr=0.0'])
    images = sorted((demo / 'demo_coco' / 'val').glob('*.jpg'))
    assert len(images) == 2
    for image in images:
        h, w = cv2.imread(str(image)).shape[:2]
        assert cv2.imread(str(out / 'vis' / image.name)).shape[:2] == (h, w)
        pred = read_json(out / 'preds' / (image.stem + '.json'))
        n = len(pred['scores'])
        assert n > 0 and len(pred['labels']) == len(pred['bboxes']) == n
        assert set(pred['labels']) <= set(range(len(COCO_CLASSES)))
        boxes = np.array(pred['bboxes'])
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w + 1e-3).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] <= h + 1e-3).all()


def test_instance_segmentation_on_a_file(demo, tmp_path):
    cfg = tmp_path / 'mask-rcnn_tiny.py'
    cfg.write_text(INS_CONFIG.format(root=ROOT))
    ckpt = tmp_path / 'ins.pth'
    tiny_checkpoint(cfg, ckpt, dict(classes=COCO_CLASSES))
    image = sorted((demo / 'demo_coco' / 'val').glob('*.jpg'))[0]
    out = tmp_path / 'out'
    infer.main([str(cfg), str(ckpt), str(image), '--out-dir', str(out)])
    assert (out / 'vis' / image.name).is_file()
    pred = read_json(out / 'preds' / (image.stem + '.json'))
    assert len(pred['masks']) == len(pred['bboxes']) == len(pred['scores']) > 0
    from pycocotools import mask as mask_utils
    rle = pred['masks'][0]
    assert rle['size'] == [128, 128]
    assert mask_utils.decode(dict(rle, counts=rle['counts'].encode())).shape == (128, 128)


def test_semantic_segmentation_on_a_glob(demo, tmp_path):
    ckpt = tmp_path / 'seg.pth'
    tiny_checkpoint(SEG_CONFIG, ckpt)  # no dataset_meta: classes come from the config
    out = tmp_path / 'out'
    pattern = str(demo / 'demo_ade' / 'images' / 'validation' / '*.jpg')
    infer.main([str(SEG_CONFIG), str(ckpt), pattern, '--out-dir', str(out)])
    images = sorted((demo / 'demo_ade' / 'images' / 'validation').glob('*.jpg'))
    names = [n for n, _ in ADE_CLASSES]
    for image in images:
        h, w = cv2.imread(str(image)).shape[:2]
        assert cv2.imread(str(out / 'vis' / image.name)).shape[:2] == (h, w)
        pred = read_json(out / 'preds' / (image.stem + '.json'))
        label_map = cv2.imread(str(out / 'preds' / pred['label_map']), cv2.IMREAD_UNCHANGED)
        assert label_map.shape == (h, w) and sum(pred['pixel_counts']) == h * w
        labels, counts = np.unique(label_map, return_counts=True)
        assert pred['labels'] == labels.tolist() and pred['pixel_counts'] == counts.tolist()
        assert pred['classes'] == [names[i] for i in pred['labels']]


def test_classification_cli_matches_the_model(demo, tmp_path):
    ckpt = tmp_path / 'cls.pth'
    model, cfg = tiny_checkpoint(CLS_CONFIG, ckpt)  # classes from the config's metainfo
    out = tmp_path / 'out'
    pattern = str(demo / 'demo_cls' / 'val' / '*' / '*.jpg')
    result = subprocess.run(
        [sys.executable, 'tools/infer.py', str(CLS_CONFIG), str(ckpt), pattern, '--out-dir',
         str(out)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    count = len(list((demo / 'demo_cls' / 'val').rglob('*.jpg')))
    assert count == 2 * len(CLS_CLASSES) and f'classification: {count} image(s)' in result.stdout
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    for image in sorted((demo / 'demo_cls' / 'val').rglob('*.jpg')):
        pred = read_json(out / 'preds' / (image.stem + '.json'))
        data = pipeline(dict(img_path=str(image)))
        with torch.no_grad():
            batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                                 data_samples=[data['data_samples']]), False)
            expected = model(**batch, mode='predict')[0].pred_score
        np.testing.assert_allclose(pred['pred_scores'], expected.numpy(), rtol=1e-4, atol=1e-6)
        assert pred['pred_label'] == int(expected.argmax())
        assert pred['pred_class'] == CLS_CLASSES[pred['pred_label']]
        assert (out / 'vis' / (image.stem + '.png')).is_file()


def expect_user_error(capsys, argv, *needles):
    with pytest.raises(SystemExit) as exc:
        infer.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs(demo, tmp_path, capsys):
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {}}, ckpt)
    cfg = str(CLS_CONFIG)
    expect_user_error(capsys, [cfg, str(ckpt), str(tmp_path / 'nope.jpg')], 'nope.jpg',
                      'not an image file')
    (tmp_path / 'empty').mkdir()
    expect_user_error(capsys, [cfg, str(ckpt), str(tmp_path / 'empty')], 'holds no images')
    expect_user_error(capsys, [cfg, str(ckpt), str(tmp_path / '*.png')], 'matches no image')
    expect_user_error(capsys, [cfg, str(tmp_path / 'missing.pth'), str(tmp_path)],
                      'missing.pth', 'does not exist')
    a, b = tmp_path / 'a', tmp_path / 'b'
    for folder in (a, b):
        folder.mkdir()
        cv2.imwrite(str(folder / 'x.jpg'), np.zeros((8, 8, 3), np.uint8))
    expect_user_error(capsys, [cfg, str(ckpt), str(a), str(b)], "share the name 'x'")
    other = tmp_path / 'other_scope.py'
    other.write_text("default_scope = 'mmengine'\n")
    expect_user_error(capsys, [str(other), str(ckpt), str(a)], "default_scope='mmengine'")


def test_unreadable_images_are_named_and_skipped(demo, tmp_path, capsys):
    ckpt = tmp_path / 'cls.pth'
    tiny_checkpoint(CLS_CONFIG, ckpt)
    folder = tmp_path / 'mixed'
    folder.mkdir()
    good = sorted((demo / 'demo_cls' / 'val').rglob('*.jpg'))[:2]
    for image in good:
        shutil.copy(image, folder / image.name)
    (folder / 'broken.jpg').write_bytes(b'this is not an image')
    (folder / 'empty.png').write_bytes(b'')
    (folder / 'cut.jpg').write_bytes(good[0].read_bytes()[:20])  # a torn copy
    out = tmp_path / 'out'
    status = infer.main([str(CLS_CONFIG), str(ckpt), str(folder), '--out-dir', str(out)])
    assert status == 1
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    for name in ('broken.jpg', 'empty.png', 'cut.jpg'):
        assert f'skipped {folder / name}: cannot be read as an image' in err, err
    assert sorted(p.stem for p in (out / 'preds').glob('*.json')) == sorted(p.stem for p in good)
    assert sorted(p.stem for p in (out / 'vis').iterdir()) == sorted(p.stem for p in good)
    # Every image good: status 0. None readable: a usage error, nothing is run.
    assert infer.main([str(CLS_CONFIG), str(ckpt), str(folder / good[0].name), '--out-dir',
                       str(tmp_path / 'out2')]) == 0
    expect_user_error(capsys, [str(CLS_CONFIG), str(ckpt), str(folder / 'broken.jpg'),
                               '--out-dir', str(tmp_path / 'out3')],
                      'none of the 1 input file(s) can be read as an image')
    assert not (tmp_path / 'out3').exists()
