"""Distributed training without GPUs (``torchrun`` + gloo), set up by the tools, not by patching.

mmengine assumes one GPU per rank: ``mmengine.dist.utils._init_dist_pytorch`` calls
``torch.cuda.set_device(local_rank)`` before ``init_process_group`` (it fails without CUDA; the
OneDL fork and mmengine's main branch still do it), and ``Runner.wrap_model`` passes
``device_ids=[LOCAL_RANK]`` to DDP, which DDP rejects for a module on the CPU. Both have public
ways around them, used by :func:`prepare_cpu_distributed`:

* the Runner initialises the process group only if none exists (``if self.distributed and not
  is_distributed()`` in ``Runner.setup_env``), so the tool initialises it first, on gloo;
* ``model_wrapper_cfg`` arguments override the Runner's defaults, so ``device_ids=None`` reaches
  DDP.

Nothing happens when CUDA is available or the launcher is not ``pytorch``.
"""
import os

import torch
import torch.distributed as torch_dist


def prepare_cpu_distributed(cfg) -> bool:
    """For ``--launcher pytorch`` without CUDA: join the gloo process group and set
    ``model_wrapper_cfg`` so DDP gets no device ids. Returns whether it did anything."""
    if cfg.get('launcher') != 'pytorch' or torch.cuda.is_available():
        return False
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo', rank=int(os.environ['RANK']),
                                      world_size=int(os.environ['WORLD_SIZE']))
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    else:
        cfg.model_wrapper_cfg.setdefault('device_ids', None)
    return True


__all__ = ['prepare_cpu_distributed']
