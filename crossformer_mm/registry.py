"""Registration of the package's modules into the OpenMMLab registries that are installed.

Modules are registered directly into the ``MODELS`` registry of each installed toolbox — mmdet,
mmseg, mmpretrain: any of them alone is a normal environment — (the way mmdet's ``projects/`` do),
under names that no upstream package uses, so a config written for any of them finds them by
``type`` without a scope prefix. ``mmpretrain.registry`` imports without torchvision;
``mmpretrain.models`` does not, so only the registry is touched here.

The modules that subclass one toolbox's classes (:data:`TOOLBOX_ONLY`: the DETR detectors and
heads need mmdet) load only where that toolbox is installed. Where it is not, their names are
registered in the present registries as builders that raise :class:`MissingToolboxError`, so a
config naming one fails with one line saying which package to install.
"""
import importlib
from typing import Callable, Dict, Optional, Sequence, TypeVar

from mmengine.registry import Registry

from .version import DISTRIBUTIONS, MIN_VERSIONS, import_checked

T = TypeVar('T', bound=type)

#: The package's modules that exist only with one toolbox: registered name -> toolbox.
TOOLBOX_ONLY: Dict[str, str] = {
    'CFDETR': 'mmdet',
    'CFDeformableDETR': 'mmdet',
    'CFDETRHead': 'mmdet',
    'CFDeformableDETRHead': 'mmdet',
}


class MissingToolboxError(ImportError):
    """A config names a module of the package whose toolbox is not installed."""


def _installed_models(scope: str) -> Optional[Registry]:
    """``<scope>.registry.MODELS`` when the toolbox ``scope`` is installed (its version checked),
    else None."""
    if import_checked(scope) is None:
        return None
    return importlib.import_module(f'{scope}.registry').MODELS


#: Each toolbox's model registry, None where the toolbox is not installed.
MMDET_MODELS: Optional[Registry] = _installed_models('mmdet')
MMSEG_MODELS: Optional[Registry] = _installed_models('mmseg')
MMPRETRAIN_MODELS: Optional[Registry] = _installed_models('mmpretrain')

#: The model registries a backbone or layer of the package goes into: those installed.
ALL_MODEL_REGISTRIES: tuple = tuple(
    r for r in (MMDET_MODELS, MMSEG_MODELS, MMPRETRAIN_MODELS) if r is not None)

#: Toolbox name -> whether it is installed.
INSTALLED: Dict[str, bool] = {'mmdet': MMDET_MODELS is not None,
                              'mmseg': MMSEG_MODELS is not None,
                              'mmpretrain': MMPRETRAIN_MODELS is not None}


def register_model(registries: Sequence[Registry] = ALL_MODEL_REGISTRIES) -> Callable[[T], T]:
    """Class decorator that registers ``cls`` under its own name in each of ``registries``.

    Raises:
        KeyError: if a registry already holds the name (upstream classes are never replaced).
    """

    def wrap(cls: T) -> T:
        for registry in registries:
            registry.register_module(module=cls)
        return cls

    return wrap


def _missing_toolbox_builder(name: str, scope: str) -> Callable[..., None]:
    """A builder registered as ``name`` that says which package to install."""
    dist = DISTRIBUTIONS.get(scope, scope)

    def build(*args, **kwargs) -> None:
        raise MissingToolboxError(f'{name} (crossformer_mm) needs {scope}, which is not '
                                  f'installed: pip install "{dist}>={MIN_VERSIONS[scope]}"')

    build.__name__ = build.__qualname__ = name
    return build


for _name, _scope in TOOLBOX_ONLY.items():
    if not INSTALLED[_scope]:
        for _registry in ALL_MODEL_REGISTRIES:
            _registry.register_module(name=_name, module=_missing_toolbox_builder(_name, _scope))

__all__ = ['ALL_MODEL_REGISTRIES', 'INSTALLED', 'MMDET_MODELS', 'MMSEG_MODELS',
           'MMPRETRAIN_MODELS', 'MissingToolboxError', 'TOOLBOX_ONLY', 'register_model']
