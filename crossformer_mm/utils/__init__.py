"""Utilities shared by the tools."""
from .config import (ConfigError, check_checkpoint_path, check_data_roots, check_types,
                     load_config)

__all__ = ['ConfigError', 'check_checkpoint_path', 'check_data_roots', 'check_types',
           'load_config']
