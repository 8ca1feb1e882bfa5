"""Importing the package registers its modules without needing torchvision, and a config's
``custom_imports`` alone registers them (checked in fresh interpreters, where nothing imported the
package before)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def test_import_does_not_need_torchvision():
    out = python('import sys; sys.modules["torchvision"] = None\n'  # any import of it now fails
                 'import crossformer_mm\n'
                 'from mmdet.registry import MODELS\n'
                 'assert MODELS.get("CrossFormer") is not None\n'
                 'print("ok")')
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-2000:]


def test_custom_imports_registers_everywhere(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['crossformer_mm'], "
                        "allow_failed_imports=False)\n")
    out = python(
        'import sys\n'
        'from mmdet.registry import MODELS as DET\n'
        'from mmpretrain.registry import MODELS as PRE\n'
        'from mmseg.registry import MODELS as SEG\n'
        'from mmengine.config import Config\n'
        'names = ("CrossFormer", "CFSwinTransformer", "CFDeformableDETR")\n'
        'assert "crossformer_mm" not in sys.modules\n'
        'assert not any(n in r.module_dict for r in (DET, SEG, PRE) for n in names)\n'
        f'Config.fromfile({str(cfg_file)!r})\n'
        'assert "crossformer_mm" in sys.modules\n'
        'for registry in (DET, SEG, PRE):\n'
        '    cls = registry.get("CrossFormer")\n'
        '    assert cls.__module__.startswith("crossformer_mm."), registry\n'
        'for name in names[1:]:\n'
        '    assert DET.get(name).__module__.startswith("crossformer_mm."), name\n'
        'print("ok")')
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]


def test_without_custom_imports_nothing_is_registered(tmp_path):
    """The check above can fail: a config without ``custom_imports`` registers nothing."""
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("model = dict(type='CrossFormer')\n")
    out = python('import sys\n'
                 'from mmdet.registry import MODELS\n'
                 'from mmengine.config import Config\n'
                 f'Config.fromfile({str(cfg_file)!r})\n'
                 'print("crossformer_mm" in sys.modules, "CrossFormer" in MODELS.module_dict)')
    assert out.returncode == 0 and out.stdout.strip() == 'False False', out.stderr[-3000:]


def test_no_upstream_name_is_replaced():
    import crossformer_mm  # noqa: F401
    from mmdet.registry import MODELS
    swin = MODELS.get('SwinTransformer')
    assert swin.__module__.startswith('mmdet.')
    assert MODELS.get('DeformableDETR').__module__.startswith('mmdet.')
