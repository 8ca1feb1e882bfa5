"""Build-time and run-time checks shared by the DETR-family detectors.

MMDetection's DETR detectors accept inconsistent configs (a neck whose ``in_channels`` disagree
with the backbone, ``num_feature_levels`` that disagree with the neck, ``num_queries <= 0``) and
fail later, deep inside a convolution, ``torch.topk`` or the deformable attention, with a message
that does not name the setting. These helpers turn such configs into ``ValueError``s that name the
argument and the expected value.
"""
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


def check_positive_int(value: Any, name: str) -> None:
    """Raises ``ValueError`` unless ``value`` is an int > 0 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'{name} must be a positive int, got {value!r}')


def check_required(cfg: Any, name: str, detector: str) -> None:
    """Raises ``ValueError`` if a required sub-config is missing."""
    if cfg is None:
        raise ValueError(f'{detector} needs a `{name}` config (got None)')


def backbone_out_channels(backbone: nn.Module) -> Optional[List[int]]:
    """Channels of each output of ``backbone`` as far as its attributes tell, else ``None``.

    Understands an ``out_channels`` list, ``num_features`` + ``out_indices`` (Swin, CrossFormer
    and the package's other hierarchical backbones) and mmdet's ``ResNet`` family
    (``block.expansion * base_channels * 2**i``).
    """
    out_channels = getattr(backbone, 'out_channels', None)
    if isinstance(out_channels, (list, tuple)) and all(isinstance(c, int) for c in out_channels):
        return list(out_channels)
    out_indices = getattr(backbone, 'out_indices', None)
    if out_indices is None:
        return None
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    num_features = getattr(backbone, 'num_features', None)
    if isinstance(num_features, (list, tuple)):
        try:
            return [int(num_features[i]) for i in out_indices]
        except (IndexError, TypeError):
            return None
    block = getattr(backbone, 'block', None)
    base = getattr(backbone, 'base_channels', None)
    if block is not None and hasattr(block, 'expansion') and isinstance(base, int) and \
            hasattr(backbone, 'stage_blocks'):
        return [block.expansion * base * 2**i for i in out_indices]
    return None


def neck_in_channels(neck: nn.Module) -> Optional[List[int]]:
    """Input channels the neck expects per level (``in_channels`` or ChannelMapper's convs)."""
    in_channels = getattr(neck, 'in_channels', None)
    if isinstance(in_channels, (list, tuple)):
        return [int(c) for c in in_channels]
    convs = getattr(neck, 'convs', None)
    if isinstance(convs, nn.ModuleList) and all(hasattr(c, 'conv') for c in convs):
        return [int(c.conv.in_channels) for c in convs]
    return None


def neck_num_outs(neck: nn.Module) -> Optional[int]:
    """Number of feature maps the neck returns (``num_outs`` or ChannelMapper's convs)."""
    num_outs = getattr(neck, 'num_outs', None)
    if isinstance(num_outs, int):
        return num_outs
    convs = getattr(neck, 'convs', None)
    if isinstance(convs, nn.ModuleList):
        extra = getattr(neck, 'extra_convs', None)
        return len(convs) + (len(extra) if extra is not None else 0)
    return None


def neck_out_channels(neck: nn.Module) -> Optional[int]:
    """Channels of the neck's outputs (``out_channels`` or ChannelMapper's convs)."""
    out_channels = getattr(neck, 'out_channels', None)
    if isinstance(out_channels, int):
        return out_channels
    convs = getattr(neck, 'convs', None)
    if isinstance(convs, nn.ModuleList) and len(convs) and hasattr(convs[0], 'conv'):
        return int(convs[0].conv.out_channels)
    return None


def check_backbone_neck(detector: str, backbone: nn.Module, neck: Optional[nn.Module],
                        embed_dims: int, num_levels: Optional[int] = None) -> None:
    """Checks at build time that backbone, neck and transformer fit together.

    Args:
        detector: Name used in messages.
        backbone: The built backbone.
        neck: The built neck, or ``None``.
        embed_dims: The transformer's embedding dimension (the neck's outputs must have it).
        num_levels: Number of feature levels the transformer expects, or ``None`` for any.

    Raises:
        ValueError: naming the mismatching setting and the expected value.
    """
    bb_channels = backbone_out_channels(backbone)
    if neck is None:
        if bb_channels is not None and any(c != embed_dims for c in bb_channels):
            raise ValueError(f'{detector}: without a neck the backbone outputs ({bb_channels} '
                             f'channels) must have embed_dims={embed_dims} channels')
        if num_levels is not None and bb_channels is not None and len(bb_channels) != num_levels:
            raise ValueError(f'{detector}: num_feature_levels={num_levels} but the backbone '
                             f'returns {len(bb_channels)} feature maps (no neck)')
        return
    in_channels = neck_in_channels(neck)
    if bb_channels is not None and in_channels is not None and bb_channels != in_channels:
        raise ValueError(f'{detector}: neck.in_channels={in_channels} does not match the '
                         f'backbone output channels {bb_channels} (backbone '
                         f'{type(backbone).__name__}, out_indices='
                         f'{getattr(backbone, "out_indices", None)}); set '
                         f'neck.in_channels={bb_channels}')
    out_channels = neck_out_channels(neck)
    if out_channels is not None and out_channels != embed_dims:
        raise ValueError(f'{detector}: neck.out_channels={out_channels} must equal the '
                         f'transformer embed_dims={embed_dims}')
    num_outs = neck_num_outs(neck)
    if num_levels is not None and num_outs is not None and num_outs != num_levels:
        raise ValueError(f'{detector}: num_feature_levels={num_levels} does not match the '
                         f'{num_outs} feature maps of the neck ({type(neck).__name__}, '
                         f'num_outs={num_outs}); set num_feature_levels={num_outs} or '
                         f'neck.num_outs={num_levels}')


def check_neck_inputs(detector: str, feats: Sequence[Tensor], neck: nn.Module) -> None:
    """Checks at run time that the backbone's feature maps are what the neck expects."""
    in_channels = neck_in_channels(neck)
    if in_channels is None:
        return
    got = [int(f.shape[1]) for f in feats]
    if got != in_channels:
        raise ValueError(f'{detector}: the backbone returned feature maps with channels {got} '
                         f'but neck.in_channels={in_channels}')


def check_levels(detector: str, num_levels: int, feats: Sequence[Tensor]) -> None:
    """Checks at run time that the number of feature maps is ``num_feature_levels``."""
    if len(feats) != num_levels:
        raise ValueError(f'{detector}: num_feature_levels={num_levels} but the neck returned '
                         f'{len(feats)} feature maps')


class CheckedFeatureMixin:
    """``extract_feat`` of the package's DETR detectors: channels-last images, checked neck.

    The image batch enters the backbone in channels-last memory layout. The function is the same
    (only strides differ), but oneDNN's convolutions run about 1.5x faster on that layout on the
    CPU, and the neck's maps then flatten into ``(bs, H·W, C)`` tokens without a copy. Parameters
    keep their usual layout, so state dicts and DDP buckets are unchanged. Set the class attribute
    ``channels_last_inputs = False`` on a subclass to feed the images as they come.
    """

    channels_last_inputs: bool = True

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor]:
        """Backbone and neck features, with a clear error if they do not fit together."""
        if self.channels_last_inputs and batch_inputs.dim() == 4:
            batch_inputs = batch_inputs.contiguous(memory_format=torch.channels_last)
        x = self.backbone(batch_inputs)
        if self.with_neck:
            check_neck_inputs(type(self).__name__, x, self.neck)
            x = self.neck(x)
        return x
