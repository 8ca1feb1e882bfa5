"""Importing the package registers its modules without needing torchvision."""
import subprocess
import sys

from mmengine.config import Config


def test_import_does_not_need_torchvision():
    code = ('import sys; sys.modules["torchvision"] = None\n'  # any import of it now fails
            'import crossformer_mm\n'
            'from mmdet.registry import MODELS\n'
            'assert MODELS.get("CrossFormer") is not None\n'
            'print("ok")')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-2000:]


def test_custom_imports_registers_everywhere(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text("custom_imports = dict(imports=['crossformer_mm'], "
                        "allow_failed_imports=False)\n")
    Config.fromfile(str(cfg_file))
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as PRE
    from mmseg.registry import MODELS as SEG
    # module_dict, not get(): mmpretrain's get() imports mmpretrain.models, which needs
    # torchvision (absent on CPU machines).
    for registry in (DET, SEG, PRE):
        assert 'CrossFormer' in registry.module_dict, registry


def test_no_upstream_name_is_replaced():
    import crossformer_mm  # noqa: F401
    from mmdet.registry import MODELS
    swin = MODELS.get('SwinTransformer')
    assert swin.__module__.startswith('mmdet.')
    assert MODELS.get('DeformableDETR').__module__.startswith('mmdet.')
