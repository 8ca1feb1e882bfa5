"""Installing the package changes nothing else: its one requirement is a numpy floor that admits
numpy 1.x and 2.x (torch and the OpenMMLab packages are extras); and pip, asked to install it into
this environment (which holds the whole stack), would install the package alone."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from crossformer_mm.version import MIN_VERSIONS

ROOT = Path(__file__).resolve().parents[1]
OPENMMLAB = {'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'mmpretrain', 'mmcv-full'}


def pip_dry_run(source: Path) -> dict:
    """pip's ``--dry-run --report`` for installing ``source`` here, offline."""
    out = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--report', '-', '--quiet',
         '--no-index', '--no-build-isolation', '--disable-pip-version-check', str(source)],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PIP_NO_INPUT='1'))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(out.stdout)


def test_install_into_the_stack_changes_no_other_distribution(tmp_path):
    # A copy of the sources: pip writes its metadata next to setup.py.
    source = tmp_path / 'src'
    shutil.copytree(ROOT / 'crossformer_mm', source / 'crossformer_mm',
                    ignore=shutil.ignore_patterns('*.so', '__pycache__'))
    shutil.copytree(ROOT / 'requirements', source / 'requirements')
    shutil.copy(ROOT / 'setup.py', source / 'setup.py')
    report = pip_dry_run(source)

    installs = report['install']
    assert [item['metadata']['name'] for item in installs] == ['crossformer_mm']
    required = [Requirement(r) for r in installs[0]['metadata'].get('requires_dist', [])]
    plain = [r for r in required if r.marker is None]
    # numpy alone, at its floor, admitting both majors users have.
    assert [r.name for r in plain] == ['numpy']
    numpy = plain[0].specifier
    assert numpy.contains(MIN_VERSIONS['numpy'] + '.0') and numpy.contains('2.2.0')
    assert not numpy.contains('1.25.2')
    # torch and the OpenMMLab packages come only with an extra the user asks for, as floors.
    extras = [r for r in required if r.marker is not None]
    torch = [r for r in extras if r.name == 'torch']
    assert [str(r.marker) for r in torch] == ['extra == "torch"']
    assert torch[0].specifier.contains('2.1.0') and not torch[0].specifier.contains('2.0.1')
    for r in required:
        if r.name in OPENMMLAB:
            assert r.marker is not None and 'extra' in str(r.marker), r
            assert '==' not in str(r.specifier), r
