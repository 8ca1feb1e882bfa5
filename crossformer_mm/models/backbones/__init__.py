"""Backbones. Each family lives in one file; importing it registers the class."""
from .crossformer import CrossFormer  # noqa: F401
from .swin import CFSwinTransformer  # noqa: F401
from .vit import CFVisionTransformer  # noqa: F401
