"""End to end through the command-line tools on a tiny copy of the demo data: train, test with
pictures, clear errors for bad input, SIGKILL anywhere + --resume giving bit-identical results
(one process and two on gloo), and two-process training."""
import importlib.util
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_data import tiny_demo_coco

from crossformer_mm.compat.checkpoint import TMP_PREFIX, find_resume_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'retinanet_crossformer-demo_fpn_24e_demo-coco.py'


def run(args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)
    env.update(kwargs.pop('env', {}))
    return subprocess.run(args, cwd=kwargs.pop('cwd', ROOT), env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('e2e')
    loader = "num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root)"
    (root / 'tiny.py').write_text(
        f"_base_ = '{DEMO_CONFIG}'\n" + tiny_demo_coco(root) +
        f"train_dataloader = dict(batch_size=2, {loader})\n"
        f"val_dataloader = dict(batch_size=2, {loader})\n"
        "test_dataloader = val_dataloader\n"
        "train_cfg = dict(max_epochs=2, val_interval=2)\n"
        # Two epochs leave every score below the default 0.05: keep the top boxes regardless.
        "model = dict(test_cfg=dict(score_thr=0.0))\n"
        "default_hooks = dict(logger=dict(interval=1))\n")
    return root


def assert_user_error(result, *needles):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in result.stderr, result.stderr[-3000:]


def test_train_writes_checkpoints_and_coco_metrics(trained):
    work, result = trained
    assert (work / 'epoch_2.pth').is_file()
    assert open(work / 'last_checkpoint').read().strip().endswith('epoch_2.pth')
    assert 'coco/bbox_mAP' in result.stdout + result.stderr
    # Training shows progress as MM tools do: iterations, ETA and losses.
    log = result.stdout + result.stderr
    assert 'Epoch(train)' in log and 'eta:' in log and 'loss_cls' in log


def test_test_tool_evaluates_and_saves_pictures(tiny, trained):
    work, _ = trained
    result = run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'), str(work / 'epoch_2.pth'),
                  '--work-dir', str(work), '--show-dir', 'vis'])
    assert result.returncode == 0, result.stderr[-4000:]
    assert 'metrics: coco/bbox_mAP=' in result.stdout
    pictures = [p for p in work.rglob('vis/*') if p.suffix in ('.jpg', '.png')]
    assert len(pictures) == 4


def _test_run(tiny: Path, work: Path, draw: bool):
    """tools/test.py's Runner for the trained tiny model, in this process: its metrics, the
    predictions of every image and, with ``draw``, what the visualization hook drew."""
    from crossformer_mm.utils.cli import build_runner, prepare_config
    cfg = prepare_config(str(tiny / 'tiny.py'), str(work), None, 'none', ('test_dataloader', ))
    cfg.load_from = str(tiny / 'work' / 'epoch_2.pth')
    if draw:  # as `--show-dir vis`; the 2-epoch model scores everything far below 0.3
        cfg.default_hooks.visualization.update(draw=True, test_out_dir='vis', score_thr=0.0)
    runner = build_runner(cfg)
    predicted, drawn = [], []
    test_step = runner.model.test_step

    def recording_test_step(data):
        outputs = test_step(data)
        predicted.extend(o.pred_instances.clone() for o in outputs)
        return outputs

    runner.model.test_step = recording_test_step
    add_datasample = runner.visualizer.add_datasample

    def recording_add_datasample(name, image, data_sample=None, **kwargs):
        pred = data_sample.pred_instances
        drawn.append(pred[pred.scores > kwargs['pred_score_thr']].clone())
        return add_datasample(name, image, data_sample=data_sample, **kwargs)

    runner.visualizer.add_datasample = recording_add_datasample
    return runner.test(), predicted, drawn


def test_pictures_show_one_box_per_object_region(tiny, trained, tmp_path):
    """The demo config draws with CFDetVisualizationHook: of the predictions above the drawing
    threshold, exactly those that greedy NMS across classes keeps (no two drawn boxes overlap by
    more than 0.5 IoU; every box left out overlaps a better-scoring drawn one by more), while the
    evaluator still scores every prediction: the metrics equal those of a run without pictures."""
    from mmdet.structures.bbox import bbox_overlaps
    plain, predicted, _ = _test_run(tiny, tmp_path / 'plain', draw=False)
    metrics, predicted_again, drawn = _test_run(tiny, tmp_path / 'drawn', draw=True)
    assert metrics == plain
    assert len(drawn) == len(predicted) == 4
    assert len(list((tmp_path / 'drawn').rglob('vis/*.jpg'))) == 4
    piles = removed = 0
    for pred, again, shown in zip(predicted, predicted_again, drawn):
        assert torch.equal(pred.bboxes, again.bboxes)  # drawing changed no prediction
        above = pred[pred.scores > 0.0]
        iou = bbox_overlaps(above.bboxes, above.bboxes)
        other_class = above.labels[:, None] != above.labels[None, :]
        piles += int(((iou > 0.5) & other_class).sum()) // 2
        assert 0 < len(shown) <= len(above)
        removed += len(above) - len(shown)
        # drawn boxes are predictions (same box, class and score), best first
        same = (bbox_overlaps(shown.bboxes, above.bboxes) > 1 - 1e-6) & \
            (shown.labels[:, None] == above.labels[None, :]) & \
            (shown.scores[:, None] == above.scores[None, :])
        assert same.any(1).all()
        assert torch.all(shown.scores[:-1] >= shown.scores[1:])
        # at most one drawn box per region ...
        pair = bbox_overlaps(shown.bboxes, shown.bboxes)
        pair.fill_diagonal_(0)
        assert float(pair.max()) <= 0.5
        # ... and every prediction left out overlaps a better drawn box by more than 0.5
        left_out = ~same.any(0)
        cover = bbox_overlaps(above.bboxes[left_out], shown.bboxes) > 0.5
        better = shown.scores[None, :] >= above.scores[left_out][:, None]
        assert (cover & better).any(1).all()
    # every overlapping pair of other classes lost at least one box (the 2-epoch model may have
    # none; tests/engine/test_visualization_hook.py draws a pile that the hook must reduce)
    assert removed >= min(piles, 1)


def test_missing_config_is_a_clear_error():
    assert_user_error(run([sys.executable, 'tools/train.py', 'configs/demo/nope.py']),
                      'error:', 'does not exist')


def test_unknown_type_names_close_matches(tiny):
    result = run([sys.executable, 'tools/train.py', str(tiny / 'tiny.py'), '--work-dir',
                  str(tiny / 'bad'), '--cfg-options', 'model.backbone.type=CrossFomer'])
    assert_user_error(result, "unknown type 'CrossFomer'", 'model.backbone', 'CrossFormer')


def test_missing_dataset_says_how_to_generate(tiny):
    result = run([sys.executable, 'tools/train.py', str(tiny / 'tiny.py'), '--work-dir',
                  str(tiny / 'bad'), '--cfg-options',
                  f'train_dataloader.dataset.data_root={tiny}/nodata/demo_coco/'])
    assert_user_error(result, 'make_demo_data.py', 'train_dataloader')


def test_bad_checkpoints(tiny):
    assert_user_error(run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'),
                           str(tiny / 'missing.pth')]), 'does not exist')
    junk = tiny / 'junk.pth'
    junk.write_text('this is not a checkpoint')
    assert_user_error(run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'), str(junk),
                           '--work-dir', str(tiny / 'bad')]), 'not a PyTorch checkpoint')


# ------------------------------------------------------------ whole-model weights-only copies
WEIGHTS_ONLY_TOOL = 'tools/model_converters/to_weights_only.py'


def load_weights_only_tool():
    spec = importlib.util.spec_from_file_location('to_weights_only', ROOT / WEIGHTS_ONLY_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weights_only_copy_is_tested_like_the_checkpoint(tiny, trained, tmp_path):
    work, train_result = trained
    signed = work / 'epoch_2.pth'
    # Copied out of its work dir, the training checkpoint is refused by load_from, and the
    # message offers only what works for a whole model.
    copy = tmp_path / 'epoch_2.pth'
    shutil.copy(signed, copy)
    refused = run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'), str(copy),
                   '--work-dir', str(tmp_path / 'refused')])
    assert_user_error(refused, 'trust_checkpoint.py', WEIGHTS_ONLY_TOOL, '--unsafe-pickle')
    assert '_to_mm.py' not in refused.stderr
    dst = tmp_path / 'weights.pth'
    convert = run([sys.executable, WEIGHTS_ONLY_TOOL, str(copy), str(dst), '--unsafe-pickle'])
    assert convert.returncode == 0, convert.stderr[-3000:]
    assert 'left out: ' in convert.stdout and 'optimizer' in convert.stdout
    # The whole model (backbone, neck, head) and the class names, weights-only.
    out = torch.load(dst, map_location='cpu', weights_only=True)
    original = torch.load(signed, map_location='cpu', weights_only=False)
    assert set(out) == {'state_dict', 'meta'}
    assert list(out['state_dict']) == list(original['state_dict'])
    for k, v in original['state_dict'].items():
        assert torch.equal(out['state_dict'][k], v), k
    assert {k.split('.')[0] for k in out['state_dict']} >= {'backbone', 'neck', 'bbox_head'}
    classes = original['meta']['dataset_meta']['classes']
    assert list(out['meta']['dataset_meta']['classes']) == list(classes)
    assert out['meta']['epoch'] == 2 and out['meta']['weights_only_of'] == 'epoch_2.pth'
    # tools/test.py (load_from) accepts it and scores what the last validation of training did.
    tested = run([sys.executable, 'tools/test.py', str(tiny / 'tiny.py'), str(dst),
                  '--work-dir', str(tmp_path / 'test')])
    assert tested.returncode == 0, tested.stderr[-3000:]
    got = dict(re.findall(r'(coco/bbox_mAP\w*)=(-?[\d.]+)', tested.stdout))
    log = train_result.stdout + train_result.stderr
    expected = {k: v for k, v in re.findall(r'(coco/bbox_mAP\w*): (-?[\d.]+)', log)
                if not k.endswith('copypaste')}  # the last validation wins
    assert got and set(got) == set(expected)
    for k in got:
        assert float(got[k]) == pytest.approx(float(expected[k]), abs=1e-3), k


def test_weights_only_tool_bad_input(trained, tmp_path, capsys):
    work, _ = trained
    tool = load_weights_only_tool()
    data = (work / 'epoch_2.pth').read_bytes()
    cases = {
        'truncated.pth': (data[:len(data) // 2], 'not a readable PyTorch checkpoint'),
        'notes.pth': (b'these are my notes, not a checkpoint\n', 'not a PyTorch checkpoint'),
    }
    for name, (content, needle) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save([torch.zeros(2)], tmp_path / 'list.pth')
    cases['list.pth'] = (None, 'not a checkpoint dict')
    torch.save({'epoch': 3, 'model_name': 'x'}, tmp_path / 'no_weights.pth')
    cases['no_weights.pth'] = (None, 'no state_dict of tensors')
    for name, (_, needle) in cases.items():
        for extra in ([], ['--unsafe-pickle']):
            assert tool.main([str(tmp_path / name), str(tmp_path / 'out.pth')] + extra) == 1
            err = capsys.readouterr().err
            assert err.startswith('error: ') and err.count('\n') == 1, err
            assert needle in err and name in err, (name, extra, err)
    assert not (tmp_path / 'out.pth').exists()
    # A training checkpoint outside its work dir needs --unsafe-pickle (or a signature).
    shutil.copy(work / 'epoch_2.pth', tmp_path / 'copy.pth')
    assert tool.main([str(tmp_path / 'copy.pth'), str(tmp_path / 'out.pth')]) == 1
    err = capsys.readouterr().err
    assert 'beyond tensors' in err and '--unsafe-pickle' in err and err.count('\n') == 1


# ------------------------------------------------------------------- kill anywhere, lose nothing
RESUME_CONFIG = (ROOT / 'configs' / 'demo' /
                 'retinanet_crossformer-demo_fpn_deterministic-4e_demo-coco.py')
KILL_SWITCH_DIR = Path(__file__).resolve().parent  # kill_switch.py, imported by the run itself
METRIC = re.compile(r'(coco/bbox_mAP\w*): (-?[\d.]+)')


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    """The deterministic demo config on a tiny copy of the data (4 epochs of 4 iterations,
    validation after epochs 2 and 4), with the test's kill switch."""
    root = tmp_path_factory.mktemp('resume')
    (root / 'det.py').write_text(
        f"_base_ = '{RESUME_CONFIG}'\n"
        "custom_imports = dict(imports=['crossformer_mm', 'kill_switch'],\n"
        "                      allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='KillSwitchHook')]\n" + tiny_demo_coco(root))
    return root


def machine(root: Path, name: str) -> dict:
    """Environment of a process on machine ``name``: its own home and caches."""
    home = root / 'machines' / name
    return dict(HOME=str(home), XDG_CACHE_HOME=str(home / '.cache'),
                TORCH_HOME=str(home / '.cache' / 'torch'), OMP_NUM_THREADS='1',
                PYTHONPATH=f'{ROOT}{os.pathsep}{KILL_SWITCH_DIR}')


def train(det: Path, work: Path, kill_at: str = '', resume: bool = False, procs: int = 0,
          on: str = 'a') -> subprocess.CompletedProcess:
    """tools/train.py (or tools/dist_train.sh with ``procs`` processes) on the det config."""
    env = machine(det, on)
    if kill_at:
        env['KILL_AT'] = kill_at
    if procs:
        env['PORT'] = str(random.randrange(20000, 40000))
        args = ['bash', 'tools/dist_train.sh', str(det / 'det.py'), str(procs)]
    else:
        args = [sys.executable, 'tools/train.py', str(det / 'det.py')]
    args += ['--work-dir', str(work)] + (['--resume'] if resume else [])
    return run(args, env=env)


def final_metrics(result: subprocess.CompletedProcess) -> dict:
    found = dict(METRIC.findall(result.stdout + result.stderr))
    assert 'coco/bbox_mAP' in found, result.stdout[-3000:] + result.stderr[-3000:]
    return found


def assert_identical(a, b, path: str = 'checkpoint') -> None:
    """Bit-identical nested state: tensors by torch.equal, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_identical(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f'{path}[{i}]')
    else:
        assert a == b, (path, a, b)


def assert_same_training(work: Path, ref: Path) -> None:
    """Model, optimizer and schedulers of the last checkpoint equal those of the reference."""
    got = torch.load(work / 'epoch_4.pth', map_location='cpu', weights_only=False)
    want = torch.load(ref / 'epoch_4.pth', map_location='cpu', weights_only=False)
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert_identical(got[key], want[key], key)
    assert (got['meta']['epoch'], got['meta']['iter']) == (4, 16)


@pytest.fixture(scope='module')
def reference(det):
    """One uninterrupted run."""
    work = det / 'reference'
    result = train(det, work)
    assert result.returncode == 0, result.stderr[-4000:]
    return work, final_metrics(result)


def assert_killed(result: subprocess.CompletedProcess, point: str) -> None:
    assert result.returncode == -signal.SIGKILL, (point, result.returncode,
                                                  result.stderr[-3000:])


def test_kill_anywhere_resumes_bit_identical(det, reference):
    """SIGKILL mid-iteration, mid-validation and mid-checkpoint-write, --resume after each; the
    last resume runs on another machine (other home and caches, same work dir)."""
    ref_work, ref_metrics = reference
    work = det / 'killed'
    # 6th iteration = 2nd of epoch 2, inside the backbone forward.
    assert_killed(train(det, work, 'train:6'), 'train:6')
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    # Resumed from epoch 1: epoch 2 trains and is saved, its validation is killed half-way.
    assert_killed(train(det, work, 'val:1', resume=True), 'val:1')
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_2.pth')
    # Resumed from epoch 2: killed 1 MiB into writing epoch_3.pth.
    assert_killed(train(det, work, f'save:{1 << 20}', resume=True), 'save')
    torn = [p for p in os.listdir(work) if p.startswith(TMP_PREFIX)]
    assert len(torn) == 1 and (work / torn[0]).stat().st_size == 1 << 20
    assert not (work / 'epoch_3.pth').exists()
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_2.pth')
    # Another machine: resumes from epoch 2 (redoing its validation), finishes.
    result = train(det, work, resume=True, on='b')
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert 'resumed epoch: 2' in log and 'Epoch(val) [2]' in log
    assert not [p for p in os.listdir(work) if p.startswith(TMP_PREFIX)]
    assert_same_training(work, ref_work)
    assert final_metrics(result) == ref_metrics


def test_dist_one_rank_killed_resumes_bit_identical(det):
    """tools/dist_train.sh CONFIG 2 on gloo: rank 1 SIGKILLs itself mid-iteration, torchrun stops
    rank 0, --resume finishes; the result equals an uninterrupted two-process run."""
    ref = det / 'dist_reference'
    result = train(det, ref, procs=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    ref_metrics = final_metrics(result)
    work = det / 'dist_killed'
    # Two ranks: 2 iterations per epoch each; the 4th is the second of epoch 2 (by then rank 0
    # has finished writing epoch_1.pth: the 3rd iteration's gradients needed it).
    killed = train(det, work, 'train:4@1', procs=2)
    assert killed.returncode != 0
    assert find_resume_checkpoint(str(work)) == str(work / 'epoch_1.pth')
    result = train(det, work, resume=True, procs=2, on='b')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    got = torch.load(work / 'epoch_4.pth', map_location='cpu', weights_only=False)
    want = torch.load(ref / 'epoch_4.pth', map_location='cpu', weights_only=False)
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert_identical(got[key], want[key], key)
    assert final_metrics(result) == ref_metrics


@pytest.mark.slow
def test_kill_at_ten_random_points(det, reference):
    """Ten SIGKILLs at random points (iteration, validation step or byte of a checkpoint write),
    each followed by --resume; the result equals the uninterrupted run."""
    ref_work, ref_metrics = reference
    rng = random.Random(13)
    size = (ref_work / 'epoch_4.pth').stat().st_size  # every epoch's checkpoint has this size
    work, points = det / 'random_kills', []
    resumed = False
    while len(points) < 10:
        phase = rng.choice(['train', 'val', 'save'])
        point = {'train': f'train:{rng.randint(1, 4)}', 'val': f'val:{rng.randint(1, 2)}',
                 'save': f'save:{rng.randint(1, size - 1)}'}[phase]
        result = train(det, work, point, resume=resumed)
        resumed = True
        if result.returncode == 0:  # training finished before reaching the point
            break
        assert_killed(result, point)
        points.append(point)
    result = train(det, work, resume=True, on='b')
    assert result.returncode == 0, result.stderr[-4000:]
    assert len(points) == 10, points
    assert_same_training(work, ref_work)
    assert final_metrics(result) == ref_metrics


def test_dist_train_two_processes_on_gloo(tiny):
    work = tiny / 'dist'
    result = run(['bash', 'tools/dist_train.sh', str(tiny / 'tiny.py'), '2', '--work-dir',
                  str(work)], env=dict(PORT=str(29500 + os.getpid() % 1000)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]
    assert (work / 'epoch_2.pth').is_file()
    assert 'coco/bbox_mAP' in result.stdout + result.stderr
