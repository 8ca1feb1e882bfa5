"""Every shipped config parses, names only registered types, and builds a working model.

For each ``configs/**/*.py`` (``_base_`` folders excluded):

* it loads (catches a broken ``_base_`` / ``mmdet::`` / ``mmseg::`` path) and names only registered
  types (:func:`crossformer_mm.utils.config.check_types`); configs that use the package's modules
  import it through ``custom_imports``;
* its model builds (catches a typo in a module argument) and runs one forward at 128x128 —
  ``predict`` for detectors, ``loss`` for segmentors (so the auxiliary head runs too), the logits
  for classifiers (built through mmpretrain's registry) — which catches a wrong channel count
  anywhere between backbone, neck and heads;
* its optimizer wrapper (with ``paramwise_cfg``), LR schedulers and data pipelines build.

Then one training step and one test step with evaluation on a tiny copy of the demo data
(128x128, batch 1, 2 for training segmentors; the config's model and recipe kept, its dataset
swapped for the demo one and the class count set to the demo's): a representative subset by
default, every config with ``-m slow``.
"""
import copy
import functools
import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.dataset import Compose
from mmengine.evaluator import Evaluator
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import crossformer_mm  # noqa: F401  (registers the package's modules)
from crossformer_mm.datasets.demo_data import make_demo_data
from crossformer_mm.registry import MMDET_MODELS
from crossformer_mm.utils.config import check_types

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / 'configs'
CONFIGS = sorted(p for p in CONFIG_DIR.rglob('*.py')
                 if '_base_' not in p.relative_to(CONFIG_DIR).parts)
IDS = [str(p.relative_to(CONFIG_DIR)) for p in CONFIGS]
SIZE = 128

#: One config per algorithm / backbone family: train + test step in the default run.
REPRESENTATIVE = {
    'demo/retinanet_crossformer-demo_fpn_24e_demo-coco.py',
    'retinanet/retinanet_crossformer-s_fpn_1x_coco.py',
    'mask_rcnn/mask-rcnn_crossformer-s_fpn_1x_coco.py',
    'mask_rcnn/mask-rcnn_crossformerpp-s_fpn_ms-crop-3x_coco.py',
    'mask_rcnn/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    'mask_rcnn/mask-rcnn_vit-b-p16-sfp_fpn_1x_coco.py',
    'cascade_rcnn/cascade-mask-rcnn_crossformer-s_fpn_ms-crop-3x_coco.py',
    'upernet/upernet_crossformer-s_8xb2-160k_ade20k-512x512.py',
    'upernet/upernet_vit-b-p16-sfp_8xb2-160k_ade20k-512x512.py',
    'sem_fpn/fpn_crossformer-s_4xb4-80k_ade20k-512x512.py',
    'sem_fpn/fpn_swin-t-p4-w7_4xb4-80k_ade20k-512x512.py',
    'upernet/upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py',
    'crossformer/crossformer-t_8xb128_in1k.py',
    'demo/crossformer-demo_1xb32-30e_demo-cls-64x64.py',
}
DEMO_BASES = {
    'det': CONFIG_DIR / 'demo' / '_base_' / 'demo-coco_detection.py',
    'ins': CONFIG_DIR / 'demo' / '_base_' / 'demo-coco_instance.py',
    'seg': CONFIG_DIR / 'demo' / '_base_' / 'demo-ade_semantic.py',
    'cls': CONFIG_DIR / 'demo' / '_base_' / 'demo-cls_classification.py',
}
DEMO_CLASSES = {'det': 5, 'ins': 5, 'seg': 6, 'cls': 5}
DEMO_FOLDERS = {'det': 'demo_coco', 'ins': 'demo_coco', 'seg': 'demo_ade', 'cls': 'demo_cls'}
METRIC_KEYS = {'det': 'coco/bbox_mAP', 'ins': 'coco/segm_mAP', 'seg': 'mIoU',
               'cls': 'accuracy/top1'}


# ------------------------------------------------------------------------------------ helpers
@functools.lru_cache(maxsize=None)
def register(scope: str) -> None:
    """Import an upstream package's modules into its registries (once)."""
    if scope == 'mmdet':
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    elif scope == 'mmseg':
        from mmseg.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    elif scope == 'mmpretrain':
        from mmpretrain.utils import register_all_modules
        register_all_modules(init_default_scope=False)


@functools.lru_cache(maxsize=None)
def load(path: str) -> Config:
    return Config.fromfile(path)


def fresh(path: Path) -> Config:
    return copy.deepcopy(load(str(path)))


def registry(scope: str, name: str):
    module = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry',
              'mmpretrain': 'mmpretrain.registry'}[scope]
    return getattr(__import__(module, fromlist=[name]), name)


def walk(node: Any) -> Iterator[dict]:
    """Every dict inside a config node."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from walk(value)


def set_key(node: Any, key: str, value: Any) -> None:
    for d in walk(node):
        if key in d:
            d[key] = copy.deepcopy(value)


def task(cfg: Config) -> str:
    if cfg.default_scope == 'mmseg':
        return 'seg'
    if cfg.default_scope == 'mmpretrain':
        return 'cls'
    return 'ins' if any('mask_head' in d for d in walk(cfg.model)) else 'det'


def tiny_model_cfg(cfg: Config, size: int = SIZE, serve: bool = True) -> ConfigDict:
    """The model config for ``size`` x ``size`` inputs; with ``serve``, its pretrained
    checkpoints are served locally (:func:`serve_pretrained`), for ``init_weights``. Without,
    ``init_cfg`` stays as shipped (building reads no checkpoint)."""
    model = copy.deepcopy(cfg.model)
    if cfg.get('data_preprocessor') and 'data_preprocessor' not in model:
        # as the Runner does (mmpretrain configs set the preprocessor at the top level)
        model['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
    pre = model.get('data_preprocessor') or {}
    if pre.get('size') is not None:
        pre['size'] = (size, size)
    if serve:
        serve_pretrained(cfg.default_scope, model)
    return model


def pretrained_modules(model_cfg: Any) -> Iterator[dict]:
    """The module configs inside ``model_cfg`` whose ``init_cfg`` loads a checkpoint."""
    for d in walk(model_cfg):
        init = d.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            yield d


#: checkpoint as the config names it -> (local file, the state dict written there, the module
#: config it was made for).
PREPARED: Dict[str, tuple] = {}


def serve_pretrained(scope: str, model_cfg: Any) -> None:
    """Gives each ``Pretrained`` checkpoint of ``model_cfg`` a local source holding seeded random
    weights of the same module (built once per checkpoint and module config): an ``http(s)://`` URL
    or ``torchvision://NAME`` is left as the config names it and its file is put in the hub
    cache under the name the loader looks up there (the session's ``TORCH_HOME``, see
    ``tests/conftest.py``); a file path is pointed at the prepared file."""
    from mmengine.runner.checkpoint import get_torchvision_models
    from crossformer_mm.compat.checkpoint import hub_checkpoint_dir
    for module in pretrained_modules(model_cfg):
        name = module['init_cfg']['checkpoint']
        spec = repr(sorted(dict(module, init_cfg=None).items()))
        if name not in PREPARED or PREPARED[name][2] != spec:  # first use, or another variant
            if name.startswith('torchvision://'):
                url = get_torchvision_models()[name[len('torchvision://'):]]
            else:
                url = name
            folder = Path(hub_checkpoint_dir())
            folder.mkdir(parents=True, exist_ok=True)
            file = folder / url.rsplit('/', 1)[-1]
            with DefaultScope.overwrite_default_scope(scope):
                torch.manual_seed(len(PREPARED) + 100)
                source = registry(scope, 'MODELS').build(dict(module, init_cfg=None))
            state = source.state_dict()
            torch.save({'state_dict': state}, file)
            PREPARED[name] = (file, state, spec)
        if not name.startswith(('http://', 'https://', 'torchvision://')):
            module['init_cfg'] = dict(module['init_cfg'], checkpoint=str(PREPARED[name][0]))


def assert_pretrained_loaded(model: torch.nn.Module, model_cfg: ConfigDict) -> None:
    """The backbone of ``model`` (after ``init_weights``) holds the weights that
    :func:`serve_pretrained` prepared for its checkpoint, every parameter and buffer."""
    modules = list(pretrained_modules(model_cfg))
    assert all(m == model_cfg.get('backbone') for m in modules), 'only backbones load checkpoints'
    for module in modules:
        checkpoint = module['init_cfg']['checkpoint']
        state = next(state for name, (file, state, _) in PREPARED.items()
                     if checkpoint in (name, str(file)))
        own = model.backbone.state_dict()
        assert set(own) == set(state)
        for key, value in state.items():
            assert torch.equal(own[key], value), key


def build_model(cfg: Config, model_cfg: Optional[ConfigDict] = None) -> torch.nn.Module:
    if model_cfg is None:
        model_cfg = tiny_model_cfg(cfg, SIZE if cfg.default_scope == 'mmdet' else 64,
                                   serve=False)
    model = registry(cfg.default_scope, 'MODELS').build(model_cfg)
    return revert_sync_batchnorm(model)


def det_batch(batch: int = 1) -> Dict[str, list]:
    from mmdet.structures import DetDataSample
    samples = []
    for _ in range(batch):
        s = DetDataSample()
        s.set_metainfo(dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                            scale_factor=(1.0, 1.0), img_id=0))
        samples.append(s)
    return dict(inputs=[torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
                        for _ in range(batch)], data_samples=samples)


def seg_batch(num_classes: int, size: int = 64) -> Dict[str, list]:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    s = SegDataSample()
    s.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size)))
    s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, size, size)))
    return dict(inputs=[torch.randint(0, 256, (3, size, size), dtype=torch.uint8)],
                data_samples=[s])


def our_model_names() -> set:
    return {name for name, cls in MMDET_MODELS.module_dict.items()
            if cls.__module__.startswith('crossformer_mm')}


def pipelines(cfg: Config) -> Iterator[tuple]:
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(key) or {}).get('dataset', {})
        while isinstance(dataset, dict) and 'pipeline' not in dataset and 'dataset' in dataset:
            dataset = dataset['dataset']
        if isinstance(dataset, dict) and dataset.get('pipeline'):
            yield key, dataset['pipeline']
    if cfg.get('tta_pipeline'):
        yield 'tta_pipeline', cfg.tta_pipeline


@pytest.fixture(scope='module', autouse=True)
def quiet_single_thread():
    """One torch thread (the inputs are tiny; on a shared, oversubscribed machine several
    threads are many times slower) and warnings only from the optimizer constructor, which logs
    one line per parameter option."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level, threads = logger.level, torch.get_num_threads()
    logger.setLevel(logging.WARNING)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    logger.setLevel(level)


# ------------------------------------------------------------------------------------ parse + build
def test_configs_found():
    assert len(CONFIGS) >= 40, IDS
    for folder in ('retinanet', 'mask_rcnn', 'cascade_rcnn', 'upernet', 'sem_fpn', 'demo'):
        assert any(i.startswith(folder + '/') for i in IDS), folder


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_builds(path: Path):
    check_config(path)


#: Broken configs: (text, the exception, what its message must say about the mistake).
BROKEN = {
    'missing-base': ("_base_ = '{dir}/retinanet_crossformer-s_fpn_1x_cocoo.py'\n",
                     FileNotFoundError, r'retinanet_crossformer-s_fpn_1x_cocoo\.py'),
    'wrong-channels': ("_base_ = '{dir}/retinanet_crossformer-s_fpn_1x_coco.py'\n"
                       "model = dict(neck=dict(in_channels=[64, 128, 256, 512]))\n",
                       RuntimeError, r'to have 128 channels, but got 192 channels'),
    'key-typo': ("_base_ = '{dir}/retinanet_crossformer-s_fpn_1x_coco.py'\n"
                 "model = dict(backbone=dict(drop_path_rat=0.3))\n",
                 TypeError, 'drop_path_rat'),
    'type-typo': ("_base_ = '{dir}/retinanet_crossformer-s_fpn_1x_coco.py'\n"
                  "model = dict(backbone=dict(type='CrossFomer'))\n",
                  ValueError, "CrossFomer.*CrossFormer"),
}


@pytest.mark.parametrize('name', sorted(BROKEN))
def test_broken_config_is_caught(name: str, tmp_path: Path):
    text, error, match = BROKEN[name]
    path = tmp_path / f'{name}.py'
    path.write_text(text.format(dir=CONFIG_DIR / 'retinanet'))
    with pytest.raises(error, match=match):
        check_config(path)


def check_config(path: Path) -> None:
    """The checks of :func:`test_config_builds` on one config file."""
    cfg = Config.fromfile(str(path))
    scope = cfg.get('default_scope')
    assert scope in ('mmdet', 'mmseg', 'mmpretrain'), f'default_scope {scope!r}'
    used = {d['type'] for d in walk(cfg.to_dict()) if isinstance(d.get('type'), str)}
    if used & our_model_names():
        imports = (cfg.get('custom_imports') or {}).get('imports', [])
        assert 'crossformer_mm' in imports, 'uses the package but has no custom_imports'

    register(scope)
    check_types(cfg)  # the tools' own early check must accept every shipped config
    if cfg.model.get('num_queries', 0) > 100 and cfg.model.get('as_two_stage', False):
        # Two-stage detectors pick their queries among the encoder tokens: the small test image
        # has fewer than DINO's 900 of them.
        cfg.model.num_queries = 100
    with DefaultScope.overwrite_default_scope(scope):
        model = build_model(cfg)
        model.eval()
        with torch.no_grad():
            if scope == 'mmdet':
                data = model.data_preprocessor(det_batch(), False)
                results = model(**data, mode='predict')
                assert len(results) == 1 and 'pred_instances' in results[0]
            elif scope == 'mmpretrain':
                logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
                assert logits.shape == (1, cfg.model.head.num_classes)
            else:  # eval-mode BN, so the 1x1 pyramid pooling works on one 64x64 image
                num_classes = cfg.model.decode_head.num_classes
                data = model.data_preprocessor(seg_batch(num_classes), True)
                losses = model(**data, mode='loss')
                assert all(torch.isfinite(v).all() for k, v in losses.items() if 'loss' in k)
                if cfg.model.get('auxiliary_head'):
                    assert any(k.startswith('aux.') for k in losses), sorted(losses)
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        schedulers = cfg.get('param_scheduler') or []
        for sched in (schedulers if isinstance(schedulers, list) else [schedulers]):
            sched = copy.deepcopy(sched)
            sched.pop('convert_to_iter_based', None)
            registry(scope, 'PARAM_SCHEDULERS').build(
                sched, default_args=dict(optimizer=optim_wrapper))
        for key, pipeline in pipelines(cfg):
            assert len(Compose(copy.deepcopy(pipeline)).transforms) == len(pipeline), key


# ------------------------------------------------------------------------------------ train + test
@pytest.fixture(scope='module')
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=4, num_val=2, size=SIZE, seed=0)
    return root


def demo_data_cfg(kind: str, root: Path) -> Config:
    """The demo dataset config at 128x128, batch 1, rooted at ``root``."""
    demo = copy.deepcopy(load(str(DEMO_BASES[kind])))
    data_root = str(root / DEMO_FOLDERS[kind]) + '/'
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = demo[key]
        # batch 2 for segmentors: UPerNet's 1x1 pyramid pooling cannot train BN on one image
        batch = 2 if kind == 'seg' and key == 'train_dataloader' else 1
        loader.update(batch_size=batch, num_workers=0, persistent_workers=False)
        loader.dataset.data_root = data_root
        for d in walk(loader.dataset.pipeline):
            if d.get('type') in ('Resize', 'RandomResize') and 'scale' in d:
                d['scale'] = (SIZE, SIZE)
    for key in ('val_evaluator', 'test_evaluator'):
        if 'ann_file' in demo[key]:
            demo[key].ann_file = data_root + 'annotations/instances_val.json'
    return demo


def step_params() -> List[Any]:
    params = []
    for path, cid in zip(CONFIGS, IDS):
        marks = [] if cid in REPRESENTATIVE else [pytest.mark.slow]
        params.append(pytest.param(path, id=cid, marks=marks))
    return params


def finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@pytest.mark.parametrize('path', step_params())
def test_train_and_test_step_on_demo_data(path: Path, demo_root: Path):
    cfg = fresh(path)
    scope, kind = cfg.default_scope, task(cfg)
    register(scope)
    demo = demo_data_cfg(kind, demo_root)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'test_evaluator'):
        cfg[key] = demo[key]
    model_cfg = tiny_model_cfg(cfg)
    set_key(model_cfg, 'num_classes', DEMO_CLASSES[kind])
    set_key(model_cfg, 'score_thr', 0.0)  # untrained detectors score below the default 0.05
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = build_model(cfg, model_cfg)
        model.init_weights()
        assert_pretrained_loaded(model, model_cfg)
        optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        model.train()
        train_loader = Runner.build_dataloader(cfg.train_dataloader)
        log_vars = model.train_step(next(iter(train_loader)), optim_wrapper)
        assert log_vars['loss'].ndim == 0 and torch.isfinite(log_vars['loss'])

        model.eval()
        test_loader = Runner.build_dataloader(cfg.test_dataloader)
        evaluator = Evaluator(cfg.test_evaluator)
        evaluator.dataset_meta = test_loader.dataset.metainfo
        with torch.no_grad():
            for data in test_loader:
                evaluator.process(model.test_step(data), data)
        metrics = evaluator.evaluate(len(test_loader.dataset))
    assert finite(metrics[METRIC_KEYS[kind]]), metrics
