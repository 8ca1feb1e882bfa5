"""The test session's own environment (tests/conftest.py): the user's home and caches are never
touched, subprocesses inherit the isolation, and the per-test timeout is active."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ('HOME', 'XDG_CACHE_HOME', 'XDG_CONFIG_HOME', 'TORCH_HOME', 'MPLCONFIGDIR',
             'TRITON_CACHE_DIR')


def inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_home_and_caches_point_into_the_session_folder(isolated_home: Path) -> None:
    assert isolated_home.name.startswith('cfm-tests-home-') and isolated_home.is_dir()
    for name in VARIABLES:
        assert inside(os.environ[name], isolated_home), (name, os.environ[name])
    assert inside(os.path.expanduser('~'), isolated_home)
    import torch.hub
    assert inside(torch.hub.get_dir(), isolated_home)


def test_subprocesses_inherit_the_isolation(isolated_home: Path) -> None:
    code = textwrap.dedent('''
        import os
        import torch.hub
        print(os.path.expanduser('~'))
        print(torch.hub.get_dir())
        print(os.environ['TORCH_HOME'])
    ''')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.split()
    assert len(lines) == 3 and all(inside(line, isolated_home) for line in lines), lines


def test_per_test_timeout_is_configured_and_enforced(request, tmp_path: Path) -> None:
    assert request.config.pluginmanager.hasplugin('timeout')
    assert float(request.config.getini('timeout')) == 600
    # The plugin really stops a hanging test: one that sleeps 60 s under a 1 s limit.
    (tmp_path / 'test_hang.py').write_text('import time\n\n\ndef test_hang():\n'
                                           '    time.sleep(60)\n')
    result = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q',
                             '-c', str(ROOT / 'pyproject.toml'), '--rootdir', str(tmp_path),
                             '-o', 'timeout=1', str(tmp_path / 'test_hang.py')],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout[-3000:]
    assert 'Timeout' in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.parametrize('profile', ['default', 'slow'])
def test_hypothesis_profiles_are_bounded_and_reproducible(profile: str) -> None:
    from hypothesis import settings
    chosen = settings.get_profile(profile)
    assert chosen.derandomize and chosen.deadline is None and chosen.database is None
    assert chosen.max_examples == {'default': 100, 'slow': 2000}[profile]
    # Without -m slow (this test is not slow) the run loads the default profile.
    expected = settings.get_profile(os.environ.get('CFM_HYPOTHESIS_PROFILE', 'default'))
    assert settings.default.max_examples == expected.max_examples
