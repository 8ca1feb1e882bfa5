"""CFDetVisualizationHook: the predictions it draws (score threshold, then NMS across classes),
on hand-made predictions and through a real visualizer writing a picture."""
import argparse

import cv2
import numpy as np
import pytest
import torch
from mmdet.registry import HOOKS, VISUALIZERS
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from crossformer_mm.engine import CFDetVisualizationHook


@pytest.fixture(scope='module', autouse=True)
def visualizer():
    """The hook draws with the current visualizer (the Runner builds one before its hooks)."""
    vis = VISUALIZERS.build(dict(type='DetLocalVisualizer', name='hook-test'))
    vis.dataset_meta = dict(classes=('circle', 'square', 'triangle', 'star', 'cross'))
    return vis


def sample_with_pile(img_path: str = '') -> DetDataSample:
    """One object predicted as three classes (and once more, shifted), a second object, and a
    weak box: what a hesitant dense detector returns after per-class NMS."""
    pred = InstanceData()
    pred.bboxes = torch.tensor([[10., 10., 50., 50.],     # 0: object A, class 1, best
                                [11., 9., 51., 49.],      # 1: A again as class 3
                                [9., 11., 49., 52.],      # 2: A again as class 4
                                [100., 100., 140., 150.],  # 3: object B, class 0
                                [14., 10., 54., 50.],     # 4: A shifted, class 1 again
                                [60., 10., 90., 40.]])    # 5: weak box, below the threshold
    pred.labels = torch.tensor([1, 3, 4, 0, 1, 2])
    pred.scores = torch.tensor([0.9, 0.5, 0.35, 0.8, 0.4, 0.2])
    sample = DetDataSample(metainfo=dict(img_path=img_path, img_shape=(160, 160),
                                         ori_shape=(160, 160)))
    sample.pred_instances = pred
    gt = InstanceData()
    gt.bboxes = torch.tensor([[10., 10., 50., 50.], [100., 100., 140., 150.]])
    gt.labels = torch.tensor([1, 0])
    sample.gt_instances = gt
    return sample


def test_answer_keeps_the_best_box_of_each_region():
    hook = CFDetVisualizationHook(score_thr=0.3, iou_threshold=0.5)
    sample = sample_with_pile()
    drawn = hook.answer(sample)
    assert drawn.pred_instances.labels.tolist() == [1, 0]
    assert drawn.pred_instances.scores.tolist() == pytest.approx([0.9, 0.8])
    assert torch.equal(drawn.pred_instances.bboxes, sample.pred_instances.bboxes[[0, 3]])
    # a copy: the predictions the evaluator got are untouched, the ground truth is kept
    assert len(sample.pred_instances) == 6
    assert drawn.gt_instances is sample.gt_instances
    assert drawn.img_shape == (160, 160)


def test_threshold_alone_without_iou_threshold():
    drawn = CFDetVisualizationHook(score_thr=0.3, iou_threshold=None).answer(sample_with_pile())
    assert drawn.pred_instances.scores.tolist() == pytest.approx([0.9, 0.5, 0.35, 0.8, 0.4])
    # a stricter score threshold keeps fewer; an IoU threshold above every overlap removes none
    assert len(CFDetVisualizationHook(score_thr=0.85).answer(sample_with_pile())
               .pred_instances) == 1
    loose = CFDetVisualizationHook(score_thr=0.3, iou_threshold=0.95).answer(sample_with_pile())
    assert len(loose.pred_instances) == 5


def test_sample_without_predictions_and_bad_threshold():
    sample = DetDataSample(metainfo=dict(img_path='x.jpg'))
    assert CFDetVisualizationHook().answer(sample) is sample
    with pytest.raises(ValueError, match='iou_threshold'):
        CFDetVisualizationHook(iou_threshold=1.5)


def test_after_test_iter_draws_the_answer(tmp_path, visualizer):
    image = np.full((160, 160, 3), 255, np.uint8)
    cv2.imwrite(str(tmp_path / 'img.jpg'), image)
    hook = HOOKS.build(dict(type='CFDetVisualizationHook', draw=True, test_out_dir='vis'))
    assert isinstance(hook, CFDetVisualizationHook) and hook.score_thr == 0.3
    seen = []
    draw = visualizer.add_datasample

    def recording(name, img, data_sample=None, **kwargs):
        seen.append((data_sample.pred_instances.labels.tolist(), kwargs['pred_score_thr']))
        return draw(name, img, data_sample=data_sample, **kwargs)

    visualizer.add_datasample = recording
    runner = argparse.Namespace(work_dir=str(tmp_path), timestamp='t', iter=0)
    sample = sample_with_pile(str(tmp_path / 'img.jpg'))
    hook.after_test_iter(runner, 0, {}, [sample])
    assert seen == [([1, 0], 0.3)]
    assert (tmp_path / 't' / 'vis' / 'img.jpg').is_file()
    assert len(sample.pred_instances) == 6
    # switched off (the default outside tools/test.py --show-dir): nothing drawn
    CFDetVisualizationHook().after_test_iter(runner, 0, {}, [sample])
    assert len(seen) == 1
