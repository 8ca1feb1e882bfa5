"""The compatibility layer patches only what the installed stack gets wrong: the probes detect each
problem by behaviour, the active patches route mmengine through the package, and on a stack
without the problems nothing is patched."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner import runner as mm_runner

import crossformer_mm  # noqa: F401
from crossformer_mm import compat
from crossformer_mm.compat.checkpoint import (http_loader_problem, load_local_checkpoint,
                                              load_url_weights, local_loader_problem)

ROOT = Path(__file__).resolve().parents[2]


# What a HistoryBuffer pickles: itself and the numpy arrays it keeps.
RUNNER_GLOBALS = [HistoryBuffer, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                  type(np.dtype(np.float64)), type(np.dtype(np.int64)), bytes, getattr]


def weights_only_with_history_buffer(filename, map_location):
    with torch.serialization.safe_globals(RUNNER_GLOBALS):
        return torch.load(filename, map_location=map_location, weights_only=True)


@pytest.mark.parametrize('loader, problem', [
    # mmengine 0.10.7 under torch >= 2.6: torch.load's weights-only default.
    (lambda f, m: torch.load(f, map_location=m), "refuses the Runner's own"),
    # mmengine's main branch (weights_only=False everywhere).
    (lambda f, m: torch.load(f, map_location=m, weights_only=False), 'unpickles local files'),
    # A loader that reads its own checkpoints and nothing more.
    (weights_only_with_history_buffer, None),
])
def test_local_loader_probe(loader, problem):
    found = local_loader_problem(loader)
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize('weights_only, problem', [(False, 'unpickles downloaded'), (True, None)])
def test_http_loader_probe(weights_only, problem):
    def loader(url, map_location=None, model_dir=None, progress=False):
        return torch.hub.load_state_dict_from_url(url, model_dir=model_dir, progress=progress,
                                                  map_location=map_location,
                                                  weights_only=weights_only)

    found = http_loader_problem(loader)
    assert (found is None) if problem is None else (problem in found), found


def test_active_patches_route_mmengine_through_the_package():
    active = compat.active_patches()
    schemes = mm_checkpoint.CheckpointLoader._schemes
    if 'checkpoint_files' in active:
        assert schemes[''] is load_local_checkpoint
        assert mm_runner.save_checkpoint is mm_checkpoint.save_checkpoint
        assert mm_runner.save_checkpoint.__module__ == 'crossformer_mm.compat'
    else:
        assert schemes[''] is mm_checkpoint.load_from_local
    if 'checkpoint_urls' in active:
        assert schemes['http://'] is load_url_weights is mm_checkpoint.load_from_http
    else:
        assert schemes['http://'].__module__ == 'mmengine.runner.checkpoint'


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})


#: Run first in the fresh interpreters below: ``TABLE_MISSES``, the scopes whose distribution in
#: mmengine's config table is not installed while another distribution provides the module
#: (scope -> that distribution), found without the package.
TABLE_PROBE = '''
from importlib import metadata
from mmengine.config import utils as cfg_utils
def _installed(dist):
    try:
        metadata.distribution(dist)
        return True
    except metadata.PackageNotFoundError:
        return False
_providers = metadata.packages_distributions()
TABLE_MISSES = {s: _providers[s][0] for s in ('mmdet', 'mmseg', 'mmpretrain')
                if s in cfg_utils.MODULE2PACKAGE and _providers.get(s)
                and not _installed(cfg_utils.MODULE2PACKAGE[s])}
'''


def test_active_patches_are_what_the_probes_find():
    """In a fresh interpreter: the probes run on mmengine's own loaders agree with the layer."""
    code = TABLE_PROBE + '''
import mmengine
from mmengine.runner import checkpoint as c
local, http = c.load_from_local, c.load_from_http
import crossformer_mm
from crossformer_mm.compat.checkpoint import http_loader_problem, local_loader_problem
found = {name for name, problem in [('checkpoint_files', local_loader_problem(local)),
                                    ('checkpoint_urls', http_loader_problem(http))] if problem}
if TABLE_MISSES:
    found.add('config_packages')
active = crossformer_mm.compat.active_patches()
assert set(active) == found, (active, found)
if mmengine.__version__ == '0.10.7':  # the pinned stack has both problems
    assert found == {'checkpoint_files', 'checkpoint_urls'}, found
    assert 'refuses' in active['checkpoint_files'], active
print('agree', sorted(active))
'''
    proc = run_python(code)
    assert proc.returncode == 0 and 'agree' in proc.stdout, proc.stderr[-3000:]


def test_stack_without_the_problems_is_left_alone():
    """A fresh interpreter whose mmengine loads safely: importing the package patches nothing."""
    code = TABLE_PROBE + '''
import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import checkpoint as c
from mmengine.runner import runner as r

SAFE = [HistoryBuffer, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
        type(np.dtype(np.float64)), type(np.dtype(np.int64)), bytes, getattr]

def local(filename, map_location=None):
    with torch.serialization.safe_globals(SAFE):
        return torch.load(filename, map_location=map_location, weights_only=True)

def http(url, map_location=None, model_dir=None, progress=False):
    return torch.hub.load_state_dict_from_url(url, model_dir=model_dir, progress=progress,
                                              map_location=map_location, weights_only=True)

c.load_from_local, c.load_from_http = local, http
for scope, dist in TABLE_MISSES.items():  # a stack whose config table names what is installed
    cfg_utils.MODULE2PACKAGE[scope] = dist
c.CheckpointLoader.register_scheme('', local, force=True)
c.CheckpointLoader.register_scheme(('http://', 'https://'), http, force=True)
save = c.save_checkpoint
import crossformer_mm
assert crossformer_mm.compat.active_patches() == {}, crossformer_mm.compat.active_patches()
assert c.CheckpointLoader._schemes[''] is local and c.CheckpointLoader._schemes['http://'] is http
assert c.save_checkpoint is save and r.save_checkpoint is save
print('untouched')
'''
    proc = run_python(code)
    assert proc.returncode == 0 and 'untouched' in proc.stdout, proc.stderr[-3000:]


def test_config_packages_maps_a_scope_to_the_distribution_that_provides_it(monkeypatch):
    """A fork that installs ``mmseg`` as ``onedl-mmsegmentation``: mmengine's table names a
    distribution that is missing, so the fix names the installed one; an upstream install (the
    table's distribution present) gets no fix."""
    from importlib import metadata

    from crossformer_mm import compat
    real_distribution = metadata.distribution

    def distribution(name):
        if name == 'mmsegmentation':
            raise metadata.PackageNotFoundError(name)
        return real_distribution('torch')

    from mmengine.config import utils as cfg_utils
    # mmengine's own entries (the package may have fixed this table on a fork already)
    monkeypatch.setitem(cfg_utils.MODULE2PACKAGE, 'mmseg', 'mmsegmentation')
    monkeypatch.setitem(cfg_utils.MODULE2PACKAGE, 'mmdet', 'mmdet')
    monkeypatch.setattr(metadata, 'distribution', distribution)
    monkeypatch.setattr(metadata, 'packages_distributions',
                        lambda: {'mmseg': ['onedl-mmsegmentation'], 'mmdet': ['mmdet']})
    assert compat._config_package_fixes() == {'mmseg': 'onedl-mmsegmentation'}
    monkeypatch.setattr(metadata, 'distribution', lambda name: real_distribution('torch'))
    assert compat._config_package_fixes() == {}


def test_import_writes_no_file(tmp_path):
    """A fresh interpreter whose working directory, temporary folder and home are empty folders:
    importing the package (probes included) leaves all three empty, and the probes find what they
    find here."""
    folders = {name: tmp_path / name for name in ('cwd', 'tmp', 'home')}
    for folder in folders.values():
        folder.mkdir()
    code = ('import json, crossformer_mm; '
            'print(json.dumps(sorted(crossformer_mm.compat.active_patches())))')
    env = {'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin', 'PYTHONDONTWRITEBYTECODE': '1',
           'TMPDIR': str(folders['tmp']), 'HOME': str(folders['home'])}
    proc = subprocess.run([sys.executable, '-c', code], cwd=folders['cwd'], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == sorted(compat.active_patches())
    written = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*') if p not in
               folders.values()]
    assert written == [], written


def test_probes_write_no_file(tmp_path, monkeypatch):
    """The probes hand the loaders in-memory files: a loader with each problem is found out, and
    the temporary folder stays empty."""
    import tempfile
    monkeypatch.setenv('TMPDIR', str(tmp_path))
    monkeypatch.setattr(tempfile, 'tempdir', None)  # re-read TMPDIR

    def http(url, map_location=None, model_dir=None, progress=False):
        return torch.hub.load_state_dict_from_url(url, model_dir=model_dir, progress=progress,
                                                  map_location=map_location, weights_only=False)

    assert "refuses the Runner's own" in local_loader_problem(
        lambda f, m: torch.load(f, map_location=m))
    assert 'unpickles downloaded' in http_loader_problem(http)
    assert tempfile.gettempdir() == str(tmp_path)
    assert os.listdir(tmp_path) == []
