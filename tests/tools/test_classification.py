"""Classification through the command-line tools: ``tools/train.py`` trains the demo classifier
config (scope ``mmpretrain``) for one epoch on a tiny copy of the classification demo data, and
``tools/test.py`` evaluates the checkpoint (top-1, dumped predictions, pictures)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from crossformer_mm.datasets.demo_data import make_demo_data

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'crossformer-demo_1xb32-30e_demo-cls-64x64.py'


def run(args, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('cls')
    make_demo_data(str(root / 'data'), num_train=2, num_val=1, size=64, seed=0, which=('cls', ))
    data_root = f'{root}/data/demo_cls/'
    loader = "num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)"
    (root / 'tiny.py').write_text(
        f"_base_ = '{DEMO_CONFIG}'\n"
        f"data_root = '{data_root}'\n"
        f"train_dataloader = dict(batch_size=4, {loader})\n"
        f"val_dataloader = dict(batch_size=4, {loader})\n"
        "test_dataloader = val_dataloader\n"
        "train_cfg = dict(max_epochs=1)\n"
        "default_hooks = dict(logger=dict(interval=1))\n")
    return root


def test_train_tool_trains_a_classifier(trained):
    work, result = trained
    log = result.stdout + result.stderr
    assert (work / 'epoch_1.pth').is_file()
    assert 'Epoch(train)' in log and 'loss' in log
    assert 'accuracy/top1' in log  # validation after the epoch


def test_test_tool_evaluates_dumps_and_draws(tiny, trained):
    work, _ = trained
    out = tiny / 'preds.pkl'
    result = run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'), str(work / 'epoch_1.pth'),
                  '--work-dir', str(work), '--out', str(out), '--show-dir', 'vis'])
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith('metrics: '))
    top1 = float(line.split('accuracy/top1=')[1].split(',')[0])
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 5
    correct = sum(int(p['pred_label'].item() == p['gt_label'].item()) for p in preds)
    assert top1 == pytest.approx(100.0 * correct / 5)
    pictures = [p for p in work.rglob('vis/*') if p.suffix in ('.jpg', '.png')]
    assert len(pictures) == 5

