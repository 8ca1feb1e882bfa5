"""DETR-family detectors: ``CFDETR`` (SDPA attention) and ``CFDeformableDETR`` (the package's
MSDA op; plain, ``with_box_refine``, ``as_two_stage``)."""
from .deformable_detr import CFDeformableDETR
from .detr import CFDETR

__all__ = ['CFDETR', 'CFDeformableDETR']
