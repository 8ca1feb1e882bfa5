"""benchmarks/gpu_suite.sh: the shell script parses, and its smoke mode (tiny shapes, Triton
interpreter on the CPU) runs every check and the timing loop on a "bare" interpreter: the MM
packages and the compiled extension made unimportable, as on the machine the suite is for."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'benchmarks' / 'gpu_suite.sh'


def test_script_parses():
    assert subprocess.run(['bash', '-n', str(SCRIPT)]).returncode == 0


def test_smoke_runs_without_mm_packages_or_extension(tmp_path):
    (tmp_path / 'sitecustomize.py').write_text(textwrap.dedent('''
        import sys
        for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain',
                     'crossformer_mm._ext'):
            sys.modules[name] = None
    '''))
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(['bash', str(SCRIPT), '--smoke', '--dtypes', 'float32', '--repeat',
                           '1'], env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert 'all ok' in out and 'FAIL' not in out, out
    for what in ('float32 grad_value (deterministic bwd)', 'bfloat16 output',
                 'deterministic mode: two backward runs bit-identical',
                 'triton-deterministic', 'pytorch-grid_sample'):
        assert what in out, what


def test_without_gpu_or_smoke_says_what_to_do(monkeypatch, capsys):
    import runpy

    import pytest
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(sys, 'argv', ['gpu_suite.py'])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / 'benchmarks' / 'gpu_suite.py'), run_name='__main__')
    assert exc.value.code != 0
    assert '--smoke' in capsys.readouterr().err
