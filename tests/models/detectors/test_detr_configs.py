"""Every shipped DETR / Deformable DETR config loads and builds the package's model, inherits
mmdet's base config, and keeps its LR schedule consistent with ``max_epochs``."""
import glob
import os

import mmdet
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import crossformer_mm  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, 'configs/detr/*.py')) +
    glob.glob(os.path.join(ROOT, 'configs/deformable_detr/*.py')) +
    glob.glob(os.path.join(ROOT, 'configs/demo/deformable-detr*_demo-coco.py')))


def test_configs_found():
    names = {os.path.basename(p) for p in CONFIGS}
    for name in ('detr_r50_8xb2-150e_coco.py', 'deformable-detr_r50_16xb2-50e_coco.py',
                 'deformable-detr-refine_r50_16xb2-50e_coco.py',
                 'deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'):
        assert name in names


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.model.type in ('CFDETR', 'CFDeformableDETR')
    assert cfg.model.bbox_head.type in ('CFDETRHead', 'CFDeformableDETRHead')
    assert cfg.default_scope == 'mmdet'
    max_epochs = cfg.train_cfg.max_epochs
    for sched in cfg.param_scheduler:
        if sched.get('by_epoch', True):
            assert sched.end == max_epochs, (sched, max_epochs)
            assert all(m < max_epochs for m in sched.get('milestones', []))
    # building reads no checkpoint: init_cfg (torchvision://resnet50) stays as shipped
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):  # as the Runner builds it
        model = MODELS.build(cfg.model)
    assert type(model).__name__ == cfg.model.type
    if cfg.model.type == 'CFDeformableDETR':
        assert model.with_box_refine == cfg.model.with_box_refine
        assert model.as_two_stage == cfg.model.as_two_stage


def _drop_scope(x):
    """Removes the ``_scope_`` keys mmengine adds to configs inherited with ``mmdet::``."""
    if isinstance(x, dict):
        return {k: _drop_scope(v) for k, v in x.items() if k != '_scope_'}
    if isinstance(x, (list, tuple)):
        return type(x)(_drop_scope(v) for v in x)
    return x


def test_r50_configs_match_mmdet_except_types():
    """Our R50 configs are mmdet's with the types changed (inherited, not copied)."""
    mmdet_configs = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs')
    for path in ('detr/detr_r50_8xb2-150e_coco.py',
                 'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
                 'deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
                 'deformable_detr/deformable-detr-refine-twostage_r50_16xb2-50e_coco.py'):
        a = Config.fromfile(os.path.join(ROOT, 'configs', path)).to_dict()
        b = Config.fromfile(os.path.join(mmdet_configs, path)).to_dict()
        a.pop('custom_imports')
        for cfg in (a, b):
            cfg['model'].pop('type')
            cfg['model']['bbox_head'].pop('type')
        a = _drop_scope({k: v for k, v in a.items() if k != 'filename'})
        b = _drop_scope({k: v for k, v in b.items() if k != 'filename'})
        assert a == b
