"""The package version and the oldest versions of its dependencies it is tested with.

``setup.py`` declares these floors (torch and numpy as requirements, the OpenMMLab packages as
extras); importing the package checks the installed torch, and mmengine / mmcv / mmdet / mmseg /
mmpretrain where they are installed, with :func:`check_min_version`.
"""
import importlib
import re
from types import ModuleType
from typing import Dict, Optional, Tuple

__version__ = '0.1.0'

#: Import name -> the oldest version tested (docs/get_started.md, "Requirements").
MIN_VERSIONS: Dict[str, str] = {
    'torch': '2.1',
    'numpy': '1.26',
    'mmengine': '0.10.7',
    'mmcv': '2.1.0',
    'mmdet': '3.3.0',
    'mmseg': '1.2.2',
    'mmpretrain': '1.2.0',
}

#: Import name -> pip distribution, where they differ.
DISTRIBUTIONS: Dict[str, str] = {'mmseg': 'mmsegmentation'}


def version_tuple(version: str) -> Tuple[int, ...]:
    """The leading release numbers of a version string: ``'2.1.2+cu121'`` -> ``(2, 1, 2)``."""
    match = re.match(r'\d+(\.\d+)*', str(version))
    if match is None:
        raise ValueError(f'cannot read a release number from version {version!r}')
    return tuple(int(part) for part in match.group(0).split('.'))


def check_min_version(name: str, installed: str) -> None:
    """Raise a one-line ``ImportError`` when ``installed`` (the version of the package imported as
    ``name``) is older than :data:`MIN_VERSIONS`\\ ``[name]``."""
    floor = MIN_VERSIONS[name]
    if version_tuple(installed) < version_tuple(floor):
        dist = DISTRIBUTIONS.get(name, name)
        raise ImportError(f'crossformer_mm needs {name} >= {floor}, found {installed}: upgrade it '
                          f'(pip install -U "{dist}>={floor}")')


def import_checked(name: str) -> Optional[ModuleType]:
    """Import ``name`` and check its version against the floor (:func:`check_min_version`).

    Returns None where ``name`` itself is not installed; an import error from inside an installed
    package is raised as it is.
    """
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            return None
        raise
    check_min_version(name, module.__version__)
    return module
