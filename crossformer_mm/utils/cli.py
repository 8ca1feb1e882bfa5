"""Shared plumbing of ``tools/train.py`` and ``tools/test.py``."""
import functools
import os
import os.path as osp
import sys
from typing import Any, Callable, Optional

from mmengine.config import Config

from ..compat.checkpoint import CheckpointLoadError
from ..registry import MissingToolboxError
from .config import ConfigError, check_data_roots, check_types, load_config
from .gpu_check import GPUUnusableError

#: Errors a user can cause and fix: printed as one clear line instead of a traceback.
USER_ERRORS = (ConfigError, FileNotFoundError, CheckpointLoadError, MissingToolboxError,
               GPUUnusableError)


def prepare_config(config: str, work_dir: Optional[str], cfg_options: Optional[dict],
                   launcher: str, data_keys: tuple) -> Config:
    """Load ``config``, apply command-line overrides, and run the early checks."""
    cfg = load_config(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    check_types(cfg)
    check_data_roots(cfg, data_keys)
    return cfg


def build_runner(cfg: Config):
    """Build the Runner (or the config's ``runner_type``) under the config's scope."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)


def finish_distributed() -> None:
    """Tear the process group down so ranks exit cleanly."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def user_errors_as_messages(main: Callable[..., Any]) -> Callable[..., Any]:
    """Print user errors as ``error: ...`` and exit 2; set CFM_DEBUG=1 for the traceback."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get('CFM_DEBUG'):
                raise
            print(f'error: {err}', file=sys.stderr)
            sys.exit(2)
        except KeyError as err:
            # mmengine's registry raises KeyError("X is not in the Y registry ...") at build time.
            if os.environ.get('CFM_DEBUG') or 'registry' not in str(err):
                raise
            print(f'error: {err.args[0]}', file=sys.stderr)
            sys.exit(2)

    return wrapped
