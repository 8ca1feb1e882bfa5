"""Prediction pictures that show a detector's answer: one box per object.

MMDetection's ``DetVisualizationHook`` draws every prediction scoring above ``score_thr``. A dense
detector such as RetinaNet scores every anchor for every class independently (sigmoid) and its
test-time NMS runs per class, so an object the model hesitates over keeps one box for each class
it half-believes: at the drawing threshold the object carries a pile of boxes of other classes.
:class:`CFDetVisualizationHook` draws what a person would call the model's answer: the
predictions scoring above ``score_thr``, then NMS across classes over them, so that in each
region the best-scoring box wins whatever its class.

Only the pictures change. The hook works on a copy of the predictions after the evaluator has
taken them (mmengine's loops call ``evaluator.process`` before the ``after_*_iter`` hooks), so the
metrics are those of the config's own ``test_cfg``: every class's detections with their scores,
as COCO AP expects; dropping a lower-ranked guess of another class would also drop the right
class wherever the top-scoring class is wrong.
"""
from typing import Optional, Sequence

from mmcv.ops import batched_nms
from mmdet.engine.hooks import DetVisualizationHook
from mmdet.registry import HOOKS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor


@HOOKS.register_module()
class CFDetVisualizationHook(DetVisualizationHook):
    """``DetVisualizationHook`` that draws one box per object region.

    Args:
        draw: Whether to draw at all (``tools/test.py --show-dir`` switches it on).
        interval: Draw every ``interval``-th validation iteration (testing draws every image).
        score_thr: Predictions scoring at or below it are not drawn.
        iou_threshold: Among the predictions above ``score_thr``, a box overlapping a
            higher-scoring one (of any class) by more than this IoU is not drawn. ``None`` draws
            every prediction above ``score_thr``, as ``DetVisualizationHook`` does.
        show: Show the pictures in a window instead of saving them.
        wait_time: Seconds each shown picture stays.
        test_out_dir: Folder (under the run's timestamped folder) for the test pictures.
        backend_args: File backend arguments for reading the images.
    """

    def __init__(self,
                 draw: bool = False,
                 interval: int = 50,
                 score_thr: float = 0.3,
                 iou_threshold: Optional[float] = 0.5,
                 show: bool = False,
                 wait_time: float = 0.,
                 test_out_dir: Optional[str] = None,
                 backend_args: Optional[dict] = None) -> None:
        if iou_threshold is not None and not 0 <= iou_threshold <= 1:
            raise ValueError(f'iou_threshold must be in [0, 1] or None, got {iou_threshold}')
        super().__init__(draw=draw, interval=interval, score_thr=score_thr, show=show,
                         wait_time=wait_time, test_out_dir=test_out_dir,
                         backend_args=backend_args)
        self.iou_threshold = iou_threshold

    def before_run(self, runner) -> None:
        # Draw with this runner's visualizer. The upstream hook takes mmengine's most recently
        # created visualizer when it is built, which is another runner's when several runners
        # (e.g. a detector's and a segmentor's) live in one process.
        self._visualizer = runner.visualizer

    def answer(self, data_sample: DetDataSample) -> DetDataSample:
        """A copy of ``data_sample`` holding only the predictions that are drawn, best first."""
        if 'pred_instances' not in data_sample:
            return data_sample
        pred = data_sample.pred_instances
        pred = pred[pred.scores > self.score_thr]
        if self.iou_threshold is not None and len(pred) > 1:
            _, keep = batched_nms(get_box_tensor(pred.bboxes), pred.scores, pred.labels,
                                  dict(type='nms', iou_threshold=self.iou_threshold),
                                  class_agnostic=True)
            pred = pred[keep]
        drawn = data_sample.new()
        drawn.pred_instances = pred
        return drawn

    def after_val_iter(self, runner, batch_idx: int, data_batch: dict,
                       outputs: Sequence[DetDataSample]) -> None:
        if self.draw:  # the upstream hook draws the first sample of the batch
            super().after_val_iter(runner, batch_idx, data_batch,
                                   [self.answer(outputs[0])] + list(outputs[1:]))

    def after_test_iter(self, runner, batch_idx: int, data_batch: dict,
                        outputs: Sequence[DetDataSample]) -> None:
        if self.draw:
            super().after_test_iter(runner, batch_idx, data_batch,
                                    [self.answer(s) for s in outputs])


__all__ = ['CFDetVisualizationHook']
