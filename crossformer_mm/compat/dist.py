"""Distributed training without GPUs (torchrun + gloo) on mmengine 0.10.7.

mmengine assumes one GPU per rank in three places; on a CPU machine each of them fails:

1. ``mmengine.dist.utils._init_dist_pytorch`` calls ``torch.cuda.set_device(local_rank)``;
2. ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP, which DDP rejects for a module
   whose parameters live on the CPU;
3. nothing calls ``destroy_process_group()``, so ranks may abort at interpreter exit.

When CUDA is unavailable we initialise the process group on gloo (the configured ``nccl`` cannot
work without GPUs), drop ``device_ids`` for CPU modules and destroy the group at exit. On machines
with CUDA nothing changes.
"""
import atexit
import os
from typing import Any

import torch
import torch.distributed as torch_dist

_PATCHED = False


def _destroy_process_group() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def _init_dist_pytorch_cpu(original):
    def init(backend: str, init_backend: str = 'torch', **kwargs: Any) -> None:
        if torch.cuda.is_available() or init_backend != 'torch':
            return original(backend, init_backend=init_backend, **kwargs)
        if backend in ('nccl', 'hccl', 'cncl', 'mccl'):
            backend = 'gloo'
        torch_dist.init_process_group(
            backend=backend, rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']), **kwargs)

    return init


def apply() -> None:
    """Patch mmengine for CPU-only distributed runs (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from mmengine.dist import utils as dist_utils
    from mmengine.model import MMDistributedDataParallel

    dist_utils._init_dist_pytorch = _init_dist_pytorch_cpu(dist_utils._init_dist_pytorch)

    original_init = MMDistributedDataParallel.__init__

    def ddp_init(self, module: torch.nn.Module, detect_anomalous_params: bool = False,
                 **kwargs: Any) -> None:
        params = list(module.parameters())
        if kwargs.get('device_ids') is not None and params and params[0].device.type == 'cpu':
            kwargs['device_ids'] = None
        original_init(self, module=module, detect_anomalous_params=detect_anomalous_params,
                      **kwargs)

    MMDistributedDataParallel.__init__ = ddp_init
    atexit.register(_destroy_process_group)
    _PATCHED = True
