"""The installed OpenMMLab stack is one of the supported ones, whole, never a mix of two.

The supported stacks are the requirement files ``tools/setup_env.sh`` installs:
``requirements/mminstall.txt`` (upstream OpenMMLab) and ``requirements/mminstall-onedl.txt`` (the
OneDL forks). Both own the same import names (``mmcv``, ``mmengine``, ``mmdet``, ...), so an
environment holding, say, upstream mmengine under onedl-mmcv imports fine but is untested.
"""
import importlib
import re
from importlib import metadata
from pathlib import Path
from typing import Dict

import pytest

ROOT = Path(__file__).resolve().parents[1]
STACK_FILES = {'upstream': ROOT / 'requirements' / 'mminstall.txt',
               'onedl': ROOT / 'requirements' / 'mminstall-onedl.txt'}
#: Distribution name (without the ``onedl-`` prefix) -> import name.
IMPORT_NAMES = {'mmcv': 'mmcv', 'mmengine': 'mmengine', 'mmdet': 'mmdet', 'mmdetection': 'mmdet',
                'mmsegmentation': 'mmseg', 'mmpretrain': 'mmpretrain'}


def pins(path: Path) -> Dict[str, str]:
    """``{distribution: version}`` for every ``name==version`` line of a requirement file."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r'([A-Za-z0-9_.-]+)==([^\s;#]+)', line)
        if m:
            found[m.group(1).lower()] = m.group(2)
    return found


def installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ''


@pytest.mark.parametrize('stack', sorted(STACK_FILES))
def test_stack_file_pins_every_package_once(stack):
    imports = sorted(IMPORT_NAMES[re.sub('^onedl-', '', d)] for d in pins(STACK_FILES[stack]))
    assert imports == ['mmcv', 'mmdet', 'mmengine', 'mmpretrain', 'mmseg'], stack


def test_installed_stack_is_a_supported_one():
    matching = [name for name, path in STACK_FILES.items()
                if all(installed(d) == v for d, v in pins(path).items())]
    report = {name: {d: (v, installed(d) or 'not installed') for d, v in pins(path).items()}
              for name, path in STACK_FILES.items()}
    assert len(matching) == 1, f'installed stack is none of the supported ones: {report}'
    # No distribution of the other stack is installed over the same import names.
    for name, path in STACK_FILES.items():
        if name != matching[0]:
            leftovers = [d for d in pins(path) if installed(d)]
            assert not leftovers, f'{matching[0]} stack also has {name} packages: {leftovers}'
    # And the modules that get imported are those distributions' (versions agree).
    for dist, version in pins(STACK_FILES[matching[0]]).items():
        module = importlib.import_module(IMPORT_NAMES[re.sub('^onedl-', '', dist)])
        assert module.__version__ == version, (dist, module.__file__)
