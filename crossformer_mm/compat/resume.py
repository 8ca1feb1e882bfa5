"""Resuming without losing a validation.

mmengine's ``CheckpointHook`` saves ``epoch_N.pth`` in ``after_train_epoch``, before the
validation of epoch N runs, and a resumed run starts at epoch N + 1. A run killed during that
validation therefore never reports it; killed during the last one, it never reports the final
metrics. :class:`ValidateResumedStepHook` runs the validation of the resumed epoch (or iteration)
again when it was a validation step. Validation leaves the model unchanged, so this costs one
validation and changes no result.
"""
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop


class ValidateResumedStepHook(Hook):
    """Before training continues from a checkpoint, redo that step's validation if it had one."""

    priority = 'LOWEST'

    def before_train(self, runner) -> None:
        loop, val = runner.train_loop, runner.val_loop
        if val is None:
            return
        if isinstance(loop, EpochBasedTrainLoop):
            step, last = loop.epoch, loop.max_epochs
        elif isinstance(loop, IterBasedTrainLoop):
            step, last = loop.iter, loop.max_iters
        else:
            return
        if step > 0 and step >= loop.val_begin and (step % loop.val_interval == 0 or
                                                      step == last):
            val.run()


__all__ = ['ValidateResumedStepHook']
