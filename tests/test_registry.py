"""Any one toolbox is enough: in fresh interpreters where the other toolboxes cannot be imported,
a config's ``custom_imports`` registers the package and a shipped config of the remaining toolbox
trains one step; a config naming a module whose toolbox is missing fails with one line naming the
package to install; with no toolbox at all only the ops load."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crossformer_mm.datasets.demo_data import make_demo_data

ROOT = Path(__file__).resolve().parents[1]
TOOLBOXES = ('mmdet', 'mmseg', 'mmpretrain')

#: Imported at interpreter start (through PYTHONPATH): every import of a toolbox named in
#: CFM_TEST_BLOCK fails as if it were not installed.
BLOCKER = textwrap.dedent('''
    import os
    import sys

    class ToolboxBlocker:
        names = set(filter(None, os.environ.get('CFM_TEST_BLOCK', '').split(',')))

        def find_spec(self, fullname, path=None, target=None):
            if fullname.split('.')[0] in self.names:
                raise ModuleNotFoundError(f'No module named {fullname!r}', name=fullname)
            return None

    sys.meta_path.insert(0, ToolboxBlocker())
''')

#: The toolbox kept -> (shipped config, the type its model is built from, the loop override).
CASES = {
    'mmdet': ('configs/demo/deformable-detr-refine-twostage_r18-c32_demo-coco.py',
              'demo_coco', "train_cfg = dict(max_epochs=1)\n"),
    'mmseg': ('configs/upernet/upernet_crossformer-demo_1xb8-2k_demo-ade-128x128.py',
              'demo_ade', "train_cfg = dict(max_iters=1)\n"),
    'mmpretrain': ('configs/demo/crossformer-demo_1xb32-30e_demo-cls-64x64.py',
                   'demo_cls', "train_cfg = dict(max_epochs=1)\n"),
}


@pytest.fixture(scope='module')
def blocker_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('blocker')
    (folder / 'sitecustomize.py').write_text(BLOCKER)
    return folder


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    """Demo data small enough for one batch: 2 detection / segmentation images, 5 classification
    images (one per class)."""
    root = tmp_path_factory.mktemp('toolbox-data')
    make_demo_data(str(root), num_train=2, num_val=1, size=64, seed=0, which=('coco', 'ade'))
    make_demo_data(str(root), num_train=1, num_val=1, size=64, seed=0, which=('cls', ))
    return root


def run(args, blocker_dir: Path, blocked, cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f'{blocker_dir}{os.pathsep}{ROOT}',
               CFM_TEST_BLOCK=','.join(blocked), OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_blocker_hides_the_toolboxes(blocker_dir):
    """The check below can fail: the blocked toolboxes really cannot be imported."""
    out = run(['-c', 'import mmengine\n'
                     'for name in ("mmdet", "mmseg.registry", "mmpretrain"):\n'
                     '    try:\n'
                     '        __import__(name)\n'
                     '    except ModuleNotFoundError as err:\n'
                     '        print(err.name)\n'], blocker_dir, TOOLBOXES)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ['mmdet', 'mmseg', 'mmpretrain']


@pytest.mark.parametrize('toolbox', TOOLBOXES)
def test_one_toolbox_alone_trains_a_shipped_config(toolbox, blocker_dir, data, tmp_path):
    config, dataset, loop = CASES[toolbox]
    data_root = f'{data}/{dataset}/'
    loader = ("num_workers=0, persistent_workers=False, "
              "dataset=dict(data_root=data_root)")
    batch = 5 if toolbox == 'mmpretrain' else 2
    (tmp_path / 'one_step.py').write_text(
        f"_base_ = '{ROOT / config}'\n"
        f"data_root = '{data_root}'\n"
        f"train_dataloader = dict(batch_size={batch}, {loader})\n"
        + loop +
        "val_dataloader = None\nval_cfg = None\nval_evaluator = None\n"
        "test_dataloader = None\ntest_cfg = None\ntest_evaluator = None\n"
        "default_hooks = dict(checkpoint=None, logger=dict(interval=1))\n"
        f"work_dir = '{tmp_path / 'work'}'\n")
    blocked = [name for name in TOOLBOXES if name != toolbox]
    script = textwrap.dedent(f'''
        import sys
        from mmengine.config import Config
        from mmengine.runner import Runner

        assert 'crossformer_mm' not in sys.modules
        cfg = Config.fromfile({str(tmp_path / 'one_step.py')!r})  # custom_imports
        assert 'crossformer_mm' in sys.modules
        runner = Runner.from_cfg(cfg)
        runner.train()
        model = runner.model
        ours = [type(m).__module__ for m in model.modules()
                if type(m).__module__.startswith('crossformer_mm.')]
        assert ours, 'no module of the package in the model'
        assert runner.iter == 1, runner.iter
        assert runner.optim_wrapper.optimizer.state, 'the optimizer took no step'
        leaked = [name for name in {blocked!r} if name in sys.modules]
        assert not leaked, leaked
        print('ok', type(model).__name__, sorted(set(ours))[0])
    ''')
    out = run(['-c', script], blocker_dir, blocked)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert out.stdout.strip().splitlines()[-1].startswith('ok '), out.stdout[-2000:]
    if toolbox == 'mmdet':
        assert out.stdout.strip().splitlines()[-1].split()[1] == 'CFDeformableDETR'


def test_module_of_a_missing_toolbox_is_a_one_line_error(blocker_dir, tmp_path):
    """mmseg alone: a config naming CFDeformableDETR (mmdet's) says to install mmdet, from the
    registry and from tools/train.py."""
    out = run(['-c', 'import crossformer_mm\n'
                     'from mmseg.registry import MODELS\n'
                     'try:\n'
                     '    MODELS.build(dict(type="CFDeformableDETR", num_queries=10))\n'
                     'except ImportError as err:\n'
                     '    print(type(err).__name__, err)\n'], blocker_dir, ('mmdet', 'mmpretrain'))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == ('MissingToolboxError CFDeformableDETR (crossformer_mm) needs '
                                  'mmdet, which is not installed: pip install "mmdet>=3.3.0"')

    (tmp_path / 'detr.py').write_text(
        "_base_ = 'mmseg::_base_/default_runtime.py'\n"
        "custom_imports = dict(imports=['crossformer_mm'], allow_failed_imports=False)\n"
        "model = dict(type='CFDeformableDETR', num_queries=10)\n"
        f"work_dir = '{tmp_path / 'work'}'\n")
    out = run(['tools/train.py', str(tmp_path / 'detr.py')], blocker_dir, ('mmdet', 'mmpretrain'))
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert 'Traceback' not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        'error: CFDeformableDETR (crossformer_mm) needs mmdet, which is not installed: '
        'pip install "mmdet>=3.3.0"')


def test_no_toolbox_loads_the_ops_only(blocker_dir):
    out = run(['-c', 'import sys\n'
                     'import crossformer_mm\n'
                     'from crossformer_mm import ops, registry\n'
                     'assert registry.ALL_MODEL_REGISTRIES == ()\n'
                     'assert "crossformer_mm.models" not in sys.modules\n'
                     'print("ok", callable(ops.ms_deform_attn))\n'], blocker_dir, TOOLBOXES)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == 'ok True'


def test_toolbox_only_table_matches_the_registrations():
    """Every name of TOOLBOX_ONLY is one of the package's mmdet modules, and every module the
    package registers in mmdet alone is listed there."""
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as PRE
    from mmseg.registry import MODELS as SEG

    from crossformer_mm.registry import TOOLBOX_ONLY
    ours = {name for name, cls in DET.module_dict.items()
            if cls.__module__.startswith('crossformer_mm.')}
    everywhere = {name for name in ours if name in SEG.module_dict and name in PRE.module_dict}
    assert set(TOOLBOX_ONLY) == ours - everywhere
    assert set(TOOLBOX_ONLY.values()) == {'mmdet'}
