"""Utilities shared by the tools.

The config checks need mmengine; they load on first use, so that the GPU checks
(:mod:`.gpu_env`, :mod:`.gpu_check`) import where only torch is installed.
"""
from typing import Any

__all__ = ['ConfigError', 'check_checkpoint_path', 'check_data_roots', 'check_types',
           'load_config']


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import config
        return getattr(config, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
