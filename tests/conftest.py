"""Test-session setup shared by every test folder.

The tests never touch the user's home: at import time (before any test module imports
``crossformer_mm``, torch hub, matplotlib or triton) ``HOME`` and every cache derived from it —
``XDG_CACHE_HOME`` / ``XDG_CONFIG_HOME``, ``TORCH_HOME`` (the hub cache that URL weights are
downloaded into), ``MPLCONFIGDIR``, triton's cache — point into one temporary folder for the
session. They are set in ``os.environ``, so the tools the tests launch as subprocesses
(``tools/train.py``, ``torchrun``) inherit them. The folder is removed when the session ends.

Property-based tests (hypothesis) run a bounded, derandomised profile by default and a much
larger one in their slow-marked variants, ``-m slow`` (see docs/testing.md).
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

#: The session's stand-in for the user's home; everything below is created eagerly.
SESSION_HOME = Path(tempfile.mkdtemp(prefix='cfm-tests-home-'))

#: Variables pointed into SESSION_HOME (variable -> folder relative to it).
ISOLATED_ENV: Dict[str, str] = {
    'HOME': '.',
    'XDG_CACHE_HOME': '.cache',
    'XDG_CONFIG_HOME': '.config',
    'XDG_DATA_HOME': '.local/share',
    'TORCH_HOME': '.cache/torch',
    'TORCH_EXTENSIONS_DIR': '.cache/torch_extensions',
    'MPLCONFIGDIR': '.config/matplotlib',
    'TRITON_HOME': '.',
    'TRITON_CACHE_DIR': '.triton/cache',
}
for _name, _rel in ISOLATED_ENV.items():
    _path = (SESSION_HOME / _rel).resolve()
    _path.mkdir(parents=True, exist_ok=True)
    os.environ[_name] = str(_path)


@pytest.fixture(scope='session', autouse=True)
def isolated_home() -> Iterator[Path]:
    """The temporary home of this test session (removed afterwards)."""
    yield SESSION_HOME
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


#: Figures that tests report (fuzz case counts, soak memory), printed in the run's summary.
_REPORTED: List[str] = []


@pytest.fixture(scope='session')
def report_line() -> Callable[[str], None]:
    """``report_line(text)`` adds ``text`` to the summary at the end of the run."""
    return _REPORTED.append


def pytest_terminal_summary(terminalreporter) -> None:
    if _REPORTED:
        terminalreporter.section('reported figures')
        for line in _REPORTED:
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    """Registers the hypothesis profiles; the property tests pick one per run (``default``, and
    ``slow`` for their slow-marked variants); ``CFM_HYPOTHESIS_PROFILE`` sets the global one."""
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is only needed by the property-based tests
        return
    common = dict(deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile('default', max_examples=100, derandomize=True, **common)
    settings.register_profile('slow', max_examples=2000, derandomize=True, **common)
    settings.load_profile(os.environ.get('CFM_HYPOTHESIS_PROFILE', 'default'))


#: ``nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total`` rows of GPUs the
#: tests simulate.
FAKE_GPUS = {
    'V100': 'Tesla V100-SXM2-32GB, 7.0, {driver}, 32768',
    'A100': 'NVIDIA A100-SXM4-80GB, 8.0, {driver}, 81920',
    'H100': 'NVIDIA H100 80GB HBM3, 9.0, {driver}, 81559',
}


@pytest.fixture
def fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``fake_nvidia_smi('V100', count=2, driver='580.65.06')`` puts an ``nvidia-smi`` that lists
    those GPUs first on ``PATH`` (of this process and the subprocesses it starts); returns its
    folder. Only the query the package makes (``--query-gpu=...``) is answered."""

    def install(model: str, count: int = 1, driver: str = '580.65.06') -> Path:
        folder = tmp_path / 'fake-bin'
        folder.mkdir(exist_ok=True)
        rows = '\n'.join(f'{i}, ' + FAKE_GPUS[model].format(driver=driver) for i in range(count))
        script = folder / 'nvidia-smi'
        script.write_text('#!/bin/sh\ncase "$*" in\n  *--query-gpu=*) cat <<"ROWS"\n'
                          f'{rows}\nROWS\n    ;;\n  *) echo "fake nvidia-smi" ;;\nesac\n')
        script.chmod(0o755)
        monkeypatch.setenv('PATH', f'{folder}{os.pathsep}{os.environ["PATH"]}')
        return folder

    return install
