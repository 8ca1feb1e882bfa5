"""benchmarks/gpu_suite.sh: the shell scripts parse; the smoke mode (tiny shapes, Triton
interpreter on the CPU) runs every check and the timing loop on a "bare" interpreter (the MM
packages and the compiled extension made unimportable, as on the machine the suite is for), where
the model-level part says on each row why it was skipped; and the model-level check
(benchmarks/gpu_models.py) runs every row on tiny inputs on the CPU."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'benchmarks' / 'gpu_suite.sh'


def test_scripts_parse():
    for script in (SCRIPT, ROOT / 'benchmarks' / 'gpu_suite_wheels.sh'):
        assert subprocess.run(['bash', '-n', str(script)]).returncode == 0, script


def test_smoke_runs_without_mm_packages_or_extension(tmp_path):
    (tmp_path / 'sitecustomize.py').write_text(textwrap.dedent('''
        import sys
        for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain',
                     'crossformer_mm._ext'):
            sys.modules[name] = None
    '''))
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path),
               GPU_SUITE_WHEELS=str(tmp_path / 'no-wheels'))
    proc = subprocess.run(['bash', str(SCRIPT), '--smoke', '--dtypes', 'float32', '--repeat',
                           '1'], env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert 'all ok' in out and 'FAIL' not in out, out
    for what in ('float32 grad_value (deterministic bwd)', 'bfloat16 output',
                 'deterministic mode: two backward runs bit-identical',
                 'triton-deterministic', 'pytorch-grid_sample'):
        assert what in out, what
    model_rows = [line for line in out.splitlines() if line.startswith('| deformable-detr')
                  or line.startswith('| mask-rcnn')]
    assert len(model_rows) == 7, out
    assert all('skipped: the MM stack does not import' in row for row in model_rows), out


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


def table_rows(out: str) -> dict:
    """``(case, step, dtype): (ms, peak, result)`` from gpu_models.py's table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if line.startswith('| ') and len(cells) == 6 and cells[0] != 'case':
            rows[tuple(cells[:3])] = tuple(cells[3:])
    return rows


def _cpu_autocasts_to_float16() -> bool:
    """Whether this torch's CPU autocast runs a matmul in float16 (torch 2.1's takes bfloat16
    only: it turns itself off and refuses float16 on entry)."""
    import warnings

    import torch
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            with torch.autocast('cpu', dtype=torch.float16):
                return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
        except RuntimeError:
            return False


def test_models_tiny_on_cpu():
    """Every model row runs (AMP float16 / bfloat16 training steps, inference; Mask R-CNN in
    float32 with mmcv's CPU ops), except AMP float16 where torch's CPU autocast has no float16,
    which says so; the CUDA-only comparison says why it was skipped."""
    proc = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'gpu_models.py'),
                           '--device', 'cpu', '--tiny'], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    rows = table_rows(proc.stdout)
    expected = [(case, step, dtype) for case in ('deformable-detr_r50',
                                                 'deformable-detr_crossformer-s')
                for step, dtype in (('train', 'amp float16'), ('train', 'amp bfloat16'),
                                    ('infer', 'float32'))]
    expected.append(('mask-rcnn_crossformer-s', 'train', 'float32'))  # CPU: mmcv has no fp16
    if not _cpu_autocasts_to_float16():
        for key in [k for k in expected if k[2] == 'amp float16']:
            expected.remove(key)
            ms, peak, result = rows.pop(key)
            assert (ms, peak) == ('-', '-') and result.startswith('skipped: torch ') and \
                'cannot autocast to float16 on cpu' in result, (key, result)
    for key in expected:
        ms, peak, result = rows.pop(key)
        assert result == 'ok' and float(ms) > 0 and peak == '-', (key, ms, peak, result)
    assert len(rows) == 4, rows  # the MSDA comparison: triton / mmcv-cuda x float32 / float16
    assert all(r[2] == 'skipped: compares CUDA kernels (no CUDA device)' for r in rows.values())


def test_mask_rcnn_skipped_without_mmcv_cuda_ops(monkeypatch):
    """On a GPU whose arch mmcv's ops lack (this machine's mmcv has CPU ops only), the rows
    that need them say why instead of failing."""
    import runpy

    import torch
    module = runpy.run_path(str(ROOT / 'benchmarks' / 'gpu_models.py'), run_name='gpu_models')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    problem = module['mmcv_cuda_problem'](torch.device('cuda'))
    assert problem.startswith('mmcv has no CUDA ops for sm_90 (its CUDA kernels: none')
