"""Backbones. Each family lives in one file; importing it registers the class."""
from .crossformer import CrossFormer  # noqa: F401
