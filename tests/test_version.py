"""The tested floors: declared once (crossformer_mm/version.py, requirements/runtime.txt agrees),
checked at import with one line saying what to upgrade."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crossformer_mm.version import MIN_VERSIONS, check_min_version, version_tuple

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


@pytest.mark.parametrize('version, expected', [
    ('2.1.2+cu121', (2, 1, 2)), ('2.14.1', (2, 14, 1)), ('2.4.0a0+git1234', (2, 4, 0)),
    ('1.26', (1, 26)), ('0.10.7', (0, 10, 7))])
def test_version_tuple(version, expected):
    assert version_tuple(version) == expected


def test_version_tuple_rejects_a_string_without_numbers():
    with pytest.raises(ValueError, match="'unknown'"):
        version_tuple('unknown')


def test_check_min_version_accepts_the_floor_and_newer():
    check_min_version('torch', '2.1.0')
    check_min_version('torch', '2.1.2+cu121')
    check_min_version('torch', '2.14.1')
    check_min_version('mmdet', '3.3.0')
    check_min_version('mmseg', '1.10.0')


def test_check_min_version_names_what_to_upgrade():
    with pytest.raises(ImportError) as err:
        check_min_version('torch', '2.0.1+cu118')
    assert str(err.value) == ('crossformer_mm needs torch >= 2.1, found 2.0.1+cu118: upgrade it '
                              '(pip install -U "torch>=2.1")')
    with pytest.raises(ImportError, match=r'pip install -U "mmsegmentation>=1\.2\.2"'):
        check_min_version('mmseg', '1.2.1')


def test_runtime_requirements_are_the_floors():
    lines = [line.strip() for line in (ROOT / 'requirements' / 'runtime.txt').read_text()
             .splitlines() if line.strip() and not line.startswith('#')]
    found = dict(re.match(r'([a-z]+)>=([0-9.]+)', line).groups() for line in lines)
    assert found == {'numpy': MIN_VERSIONS['numpy']}


def test_installed_versions_meet_the_floors():
    import mmcv
    import mmengine
    import numpy
    import torch
    for module in (torch, numpy, mmengine, mmcv):
        name = module.__name__
        assert version_tuple(module.__version__) >= version_tuple(MIN_VERSIONS[name]), name


def test_import_refuses_an_old_torch_in_one_line():
    out = python('import torch\n'
                 'torch.__version__ = "2.0.1"\n'
                 'import crossformer_mm\n')
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        'ImportError: crossformer_mm needs torch >= 2.1, found 2.0.1: upgrade it '
        '(pip install -U "torch>=2.1")')


@pytest.mark.parametrize('name, old', [('mmengine', '0.10.6'), ('mmcv', '2.0.1'),
                                       ('mmdet', '3.2.0')])
def test_import_refuses_an_old_openmmlab_package(name, old):
    out = python(f'import {name}\n'
                 f'{name}.__version__ = "{old}"\n'
                 'import crossformer_mm\n')
    assert out.returncode == 1
    floor = MIN_VERSIONS[name]
    assert out.stderr.strip().splitlines()[-1] == (
        f'ImportError: crossformer_mm needs {name} >= {floor}, found {old}: upgrade it '
        f'(pip install -U "{name}>={floor}")')
