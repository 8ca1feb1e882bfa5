"""Test-only: a training process that SIGKILLs itself at a chosen point.

Imported by the test configs through ``custom_imports`` (with ``tests/tools`` on ``PYTHONPATH``);
it does nothing unless ``KILL_AT`` is set:

``KILL_AT=train:K``  inside the backbone forward of the K-th training iteration this process runs;
``KILL_AT=val:K``    after the K-th validation iteration this process runs (mid-validation);
``KILL_AT=save:B``   after B bytes of this process's first checkpoint write (the file is flushed
                     to the OS first, so a torn file is left behind).

A suffix ``@R`` restricts it to the process with ``RANK=R`` (default: rank 0).
"""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _parse():
    spec = os.environ.get('KILL_AT', '')
    if not spec:
        return None, 0
    spec, _, rank = spec.partition('@')
    if os.environ.get('RANK', '0') != (rank or '0'):
        return None, 0
    phase, _, count = spec.partition(':')
    assert phase in ('train', 'val', 'save'), spec
    return phase, int(count)


PHASE, COUNT = _parse()


class _KillAfterBytes:
    """Passes writes through to ``raw`` and dies once ``limit`` bytes went through."""

    def __init__(self, raw, limit: int) -> None:
        self.raw, self.left = raw, limit

    def write(self, data) -> int:
        view = memoryview(data).cast('B')
        if view.nbytes >= self.left:
            self.raw.write(view[:self.left])
            self.raw.flush()
            _die()
        self.left -= view.nbytes
        return self.raw.write(view)

    def flush(self) -> None:
        self.raw.flush()


if PHASE == 'save':
    import torch

    _torch_save = torch.save

    def _save(obj, f, *args, **kwargs):
        if hasattr(f, 'write'):
            f = _KillAfterBytes(f, COUNT)
        return _torch_save(obj, f, *args, **kwargs)

    torch.save = _save


@HOOKS.register_module()
class KillSwitchHook(Hook):
    """Counts this process's iterations and kills it where ``KILL_AT`` says."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.train_iters = self.val_iters = 0

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.train_iters += 1
        if PHASE == 'train' and self.train_iters == COUNT:
            model = getattr(runner.model, 'module', runner.model)
            model.backbone.register_forward_hook(lambda *args: _die())

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.val_iters += 1
        if PHASE == 'val' and self.val_iters == COUNT:
            _die()
