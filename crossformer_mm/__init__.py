"""crossformer_mm: CrossFormer, Swin and ViT backbones, an MSDA op and DETR detectors for OpenMMLab."""
from .version import __version__

__all__ = ['__version__']
