"""Checks run by the tools before a Runner is built, so mistakes fail early with a clear message.

* :func:`load_config` — a config path that does not exist;
* :func:`check_types` — an unknown ``type`` anywhere in the config (names the registry scope, the
  key path and the closest registered names);
* :func:`check_data_roots` — a dataset folder that does not exist (says how to generate the demo
  data);
* :func:`check_checkpoint_path` — a checkpoint path that does not exist.
"""
import difflib
import importlib
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Tuple

from mmengine.config import Config
from mmengine.registry import Registry

#: Scopes the tools support, and the module holding each scope's registries.
SCOPE_REGISTRY_MODULES = {
    'mmdet': 'mmdet.registry',
    'mmseg': 'mmseg.registry',
    'mmpretrain': 'mmpretrain.registry',
    'mmengine': 'mmengine.registry',
}

#: Config keys whose ``type`` names an mmcv op looked up by attribute, not a registered class:
#: ``nms=dict(type='nms' | 'soft_nms')``, ``roi_layer=dict(type='RoIAlign' | 'RoIPool')``.
NON_REGISTRY_KEYS = ('nms', 'roi_layer')

DEMO_HINT = ('generate the demo data with `python tools/make_demo_data.py` '
             '(writes data/demo_coco, data/demo_ade and data/demo_cls)')


class ConfigError(ValueError):
    """A problem in a config that the user can fix."""


def load_config(path: str) -> Config:
    """Load a config file, failing clearly when the path is wrong."""
    if not osp.isfile(path):
        folder = osp.dirname(path) or '.'
        near: List[str] = []
        if osp.isdir(folder):
            import os
            near = difflib.get_close_matches(osp.basename(path), os.listdir(folder), n=3)
        hint = f' Did you mean: {", ".join(osp.join(folder, n) for n in near)}?' if near else ''
        raise FileNotFoundError(f'config file {path!r} does not exist.{hint}')
    return Config.fromfile(path)


def _walk_types(node: Any, path: str) -> Iterator[Tuple[str, str]]:
    if isinstance(node, dict):
        t = node.get('type')
        if isinstance(t, str) and not path.endswith(NON_REGISTRY_KEYS):
            yield path, t
        for key, value in node.items():
            yield from _walk_types(value, f'{path}.{key}' if path else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _walk_types(value, f'{path}[{i}]')


def _registries(scope: str) -> Dict[str, Registry]:
    module = importlib.import_module(SCOPE_REGISTRY_MODULES.get(scope, 'mmengine.registry'))
    return {name: obj for name, obj in vars(module).items() if isinstance(obj, Registry)}


def check_types(cfg: Config, keys: Optional[List[str]] = None) -> None:
    """Raise :class:`ConfigError` for the first ``type`` no registry of the config's scope knows.

    Args:
        cfg: the loaded config; its ``default_scope`` picks the registries (default ``mmengine``).
        keys: top-level keys to check (default: all of them).
    """
    scope = cfg.get('default_scope') or 'mmengine'
    registries = _registries(scope)
    data = cfg.to_dict()
    for key in keys or list(data):
        for path, name in _walk_types(data.get(key), key):
            if any(reg.get(name) is not None for reg in registries.values()):
                continue
            known = sorted({n for reg in registries.values() for n in _all_names(reg)})
            close = difflib.get_close_matches(name.split('.')[-1], known, n=5, cutoff=0.6)
            hint = f' Close matches: {", ".join(close)}.' if close else ''
            raise ConfigError(
                f'unknown type {name!r} at `{path}`: it is not registered in any of the '
                f'{len(registries)} registries of scope {scope!r} (MODELS, TASK_UTILS, DATASETS, '
                f'TRANSFORMS, ... and their parents); is the module that registers it listed in '
                f'custom_imports?{hint}')


def _all_names(reg: Registry) -> Iterator[str]:
    while reg is not None:
        yield from reg.module_dict.keys()
        reg = reg.parent


def _data_roots(cfg: Config) -> Iterator[Tuple[str, str]]:
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        dataset = loader.get('dataset', {})
        # Wrappers (RepeatDataset, ConcatDataset, ...) nest the real dataset.
        while isinstance(dataset, dict) and 'dataset' in dataset and 'data_root' not in dataset:
            dataset = dataset['dataset']
        if isinstance(dataset, dict) and dataset.get('data_root'):
            yield key, dataset['data_root']


def check_data_roots(cfg: Config, keys: Tuple[str, ...] = ('train_dataloader', 'val_dataloader',
                                                            'test_dataloader')) -> None:
    """Raise ``FileNotFoundError`` naming the dataloader whose ``data_root`` is missing."""
    for key, root in _data_roots(cfg):
        if key in keys and not osp.isdir(root):
            hint = DEMO_HINT if 'demo' in root else (
                'download the dataset and place it there, or set `data_root` with '
                '--cfg-options')
            raise FileNotFoundError(f'dataset folder {root!r} (from {key}.dataset.data_root) does '
                                    f'not exist: {hint}.')


def check_checkpoint_path(path: Optional[str], what: str = 'checkpoint') -> None:
    """Raise ``FileNotFoundError`` when a local checkpoint path does not exist."""
    if path and '://' not in path and not osp.isfile(osp.expanduser(path)):
        raise FileNotFoundError(f'{what} {path!r} does not exist (or is not a file)')
