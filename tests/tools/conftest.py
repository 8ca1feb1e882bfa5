"""Fixtures shared by the command-line tool tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def trained(tiny):
    """``tools/train.py`` run once per module on the module's ``tiny`` config (a folder holding
    ``tiny.py``): ``(work dir, completed process)``."""
    work = tiny / 'work'
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)
    result = subprocess.run([sys.executable, 'tools/train.py', str(tiny / 'tiny.py'),
                             '--work-dir', str(work)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return work, result
