"""The ops need torch alone: in a fresh interpreter where the OpenMMLab packages cannot be
imported, ``crossformer_mm.ops`` imports, runs (forward, backward, the module, the registered
ops) and pulls in none of them, nor the package's models."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCKED = ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain')

SCRIPT = textwrap.dedent('''
    import sys
    BLOCKED = {blocked!r}
    for name in BLOCKED:  # `import name` now raises ImportError
        sys.modules[name] = None

    import torch
    import crossformer_mm.ops as ops
    from crossformer_mm.ops import MSDeformAttn, ms_deform_attn

    shapes = torch.tensor([[4, 3], [2, 2]])
    starts = torch.tensor([0, 12])
    value = torch.rand(1, 16, 2, 4, dtype=torch.float64, requires_grad=True)
    loc = torch.rand(1, 5, 2, 2, 3, 2, dtype=torch.float64)
    attn = torch.rand(1, 5, 2, 2, 3, dtype=torch.float64)
    out = ms_deform_attn(value, shapes, starts, loc, attn)
    ref = ops.ms_deform_attn_pytorch(value, shapes, starts, loc, attn)
    assert (out - ref).abs().max() < 1e-12
    out.sum().backward()
    assert value.grad.abs().sum() > 0
    module = MSDeformAttn(embed_dims=8, num_heads=2, num_levels=2, num_points=3,
                          batch_first=True)
    y = module(torch.randn(1, 5, 8), value=torch.randn(1, 16, 8),
               reference_points=torch.rand(1, 5, 2, 2), spatial_shapes=shapes,
               level_start_index=starts)
    assert y.shape == (1, 5, 8)
    # The registered op exists where torch can register it (torch >= 2.4).
    assert hasattr(torch.ops.crossformer_mm, 'ms_deform_attn') == hasattr(torch.library,
                                                                          'custom_op')
    try:  # moved to the models; the ops answer with where it lives now, importing nothing
        ops.replace_mmcv_msda
    except AttributeError as err:
        assert 'crossformer_mm.models.replace_mmcv_msda' in str(err), err
    else:
        raise AssertionError('crossformer_mm.ops.replace_mmcv_msda still resolves')
    assert not [m for m in sys.modules if m.startswith('crossformer_mm.models')]
    import crossformer_mm  # the top-level package imports too (ops only)
    loaded = sorted(m for m in sys.modules
                    if m.split('.')[0] in BLOCKED and sys.modules[m] is not None)
    assert not loaded, loaded
    print('standalone ok')
''')


def test_ops_import_and_run_without_openmmlab_packages():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, '-c', SCRIPT.format(blocked=BLOCKED)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'standalone ok' in proc.stdout


def test_blocker_really_blocks():
    """The same blocker makes ``import mmengine`` fail (the test above would prove nothing
    otherwise)."""
    code = ("import sys; sys.modules['mmengine'] = None\n"
            "try:\n    import mmengine\nexcept ImportError:\n    print('blocked')\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=60)
    assert 'blocked' in proc.stdout, proc.stdout + proc.stderr
