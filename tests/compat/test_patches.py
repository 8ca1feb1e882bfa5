"""The compatibility layer patches only what the installed stack gets wrong: the probes detect each
problem by behaviour, the active patches route mmengine through the package, and on a stack
without the problems nothing is patched."""
import os
import subprocess
import sys
import textwrap
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


def test_import_writes_nothing_to_disk():
    """Importing the package (probes included) opens no file for writing and creates no folder
    from the package's code: an audit hook in a fresh interpreter records every write-mode
    ``open``, ``mkdir`` and ``rename`` whose call stack passes through ``crossformer_mm``
    (in-memory files under ``/proc/self/fd`` are not on disk). Other packages' own caches are not
    the package's writes."""
    code = textwrap.dedent('''
        import os, sys
        package = os.path.join(sys.argv[1], 'crossformer_mm') + os.sep
        writes = []

        stdlib = os.path.dirname(os.__file__) + os.sep

        def ours():
            # The innermost caller outside the standard library and torch.save (a third-party
            # package's own cache, e.g. matplotlib's config folder created when it is imported,
            # is not ours; a torch.save called by the package is).
            frame = sys._getframe(2)
            while frame is not None:
                name = frame.f_code.co_filename
                if not (name.startswith(stdlib) or name.startswith('<') or
                        name.endswith(os.path.join('torch', 'serialization.py'))):
                    return name.startswith(package)
                frame = frame.f_back
            return False

        def on_disk(path):
            # An open file descriptor, the null device and /proc (anonymous in-memory files) are
            # not files on disk.
            return isinstance(path, (str, bytes)) and not os.fsdecode(path).startswith(
                ('/proc/', '/dev/'))

        def hook(event, args):
            if event == 'open':
                path, mode, flags = args
                writing = (isinstance(mode, str) and any(c in mode for c in 'wax+')) or (
                    mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
                if writing and on_disk(path) and ours():
                    writes.append((event, str(path)))
            elif event in ('os.mkdir', 'os.rename', 'os.replace') and on_disk(args[0]) and ours():
                writes.append((event, str(args[0])))

        sys.addaudithook(hook)
        import crossformer_mm
        from crossformer_mm import compat
        print(sorted(compat.active_patches()))
        print('WRITES', writes)
        # The control: a write through the package's code is seen.
        import tempfile
        from crossformer_mm.compat.checkpoint import write_checkpoint
        write_checkpoint({'state_dict': {}}, os.path.join(tempfile.mkdtemp(), 'x.pth'))
        print('CONTROL', len(writes) > 0)
    ''')
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = subprocess.run([sys.executable, '-c', code, str(ROOT)], capture_output=True, text=True,
                         env=env, cwd=str(ROOT), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == 'CONTROL True', lines[-1]
    assert lines[-2] == 'WRITES []', lines[-2]
    assert lines[-3] == str(sorted(compat.active_patches()))
