"""Registration of the package's modules into the OpenMMLab registries.

Modules are registered directly into ``mmdet.registry.MODELS``, ``mmseg.registry.MODELS`` and
``mmpretrain.registry.MODELS`` (the way mmdet's ``projects/`` do), under names that no upstream
package uses, so a config written for any of the three finds them by ``type`` without a scope
prefix. ``mmpretrain.registry`` imports without torchvision; ``mmpretrain.models`` does not, so only
the registry is touched here.
"""
from typing import Callable, Sequence, TypeVar

from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.registry import Registry
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from mmseg.registry import MODELS as MMSEG_MODELS

T = TypeVar('T', bound=type)

#: Every model registry a backbone or layer of the package goes into.
ALL_MODEL_REGISTRIES: tuple = (MMDET_MODELS, MMSEG_MODELS, MMPRETRAIN_MODELS)


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


__all__ = ['ALL_MODEL_REGISTRIES', 'MMDET_MODELS', 'MMSEG_MODELS', 'MMPRETRAIN_MODELS',
           'register_model']
