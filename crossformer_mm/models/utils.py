"""Helpers any module of :mod:`crossformer_mm.models` may import (they import nothing of the
package): the positive-int check that heads and detectors share, and the one way a moved public
name keeps working for a release (:func:`moved_names`)."""
import importlib
import warnings
from typing import Any, Callable, Mapping

__all__ = ['check_positive_int', 'moved_names']


def check_positive_int(value: Any, name: str) -> None:
    """Raises ``ValueError`` unless ``value`` is an int > 0 (bools are refused).

    Used by the DETR-family heads (``num_classes``, ``num_pred_layer``) and detectors
    (``num_queries``, ``num_feature_levels``, ``num_layers``).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'{name} must be a positive int, got {value!r}')


def moved_names(module: str, moves: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves names moved elsewhere, with a ``DeprecationWarning``.

    Args:
        module: The old module's ``__name__``.
        moves: Old name → ``'new.module:attribute'`` (the attribute may be dotted, e.g.
            ``'crossformer_mm.models.backbones.base:BackboneBase.load_pretrained'``).

    Returns:
        The function to assign to the old module's ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        target = moves.get(name)
        if target is None:
            raise AttributeError(f'module {module!r} has no attribute {name!r}')
        new_module, attribute = target.split(':')
        warnings.warn(f'{module}.{name} is deprecated and will be removed in the next release; '
                      f'use {new_module}.{attribute}', DeprecationWarning, stacklevel=2)
        value: Any = importlib.import_module(new_module)
        for part in attribute.split('.'):
            value = getattr(value, part)
        return value

    return __getattr__
