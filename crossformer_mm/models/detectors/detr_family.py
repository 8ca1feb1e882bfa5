"""What the DETR-family detectors share: :class:`DETRFamilyMixin` (the package's attention in
MMDetection's transformers, checked configs and features) and its build-time and run-time checks.

MMDetection's DETR detectors accept inconsistent configs (a neck whose ``in_channels`` disagree
with the backbone, ``num_feature_levels`` that disagree with the neck, ``num_queries <= 0``) and
fail later, deep inside a convolution, ``torch.topk`` or the deformable attention, with a message
that does not name the setting. These checks turn such configs into ``ValueError``s that name the
argument and the expected value.
"""
import inspect
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..utils import check_positive_int
from .detr_layers import swap_attention


def check_required(cfg: Any, name: str, detector: str) -> None:
    """Raises ``ValueError`` if a required sub-config is missing."""
    if cfg is None:
        raise ValueError(f'{detector} needs a `{name}` config (got None)')


def backbone_out_channels(backbone: nn.Module) -> Optional[List[int]]:
    """Channels of each output of ``backbone``, or ``None`` if the backbone does not say.

    The package's backbones declare them (``output_shape()``, one
    :class:`~crossformer_mm.models.backbones.base.ShapeSpec` per output); mmdet's ``ResNet``
    family is read from its layout (``block.expansion * base_channels * 2**i``).
    """
    output_shape = getattr(backbone, 'output_shape', None)
    if callable(output_shape):
        return [int(s.channels) for s in output_shape()]
    out_indices = getattr(backbone, 'out_indices', None)
    block = getattr(backbone, 'block', None)
    base = getattr(backbone, 'base_channels', None)
    if out_indices is not None and hasattr(block, 'expansion') and isinstance(base, int) and \
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


def _cfg_get(cfg: Optional[Mapping], *keys: str, default: Any = None) -> Any:
    """``cfg[k0][k1]...``, or ``default`` where a level is missing."""
    for key in keys:
        if cfg is None or key not in cfg:
            return default
        cfg = cfg[key]
    return cfg


def check_detr_config(detector: str, num_queries: Any, encoder: Optional[dict],
                      decoder: Optional[dict], positional_encoding: Optional[dict],
                      bbox_head: Optional[dict], num_feature_levels: Any = None) -> None:
    """Checks the arguments of a DETR-family detector before anything is built.

    Args:
        detector: Name used in messages.
        num_queries, encoder, decoder, positional_encoding, bbox_head: The detector's arguments.
        num_feature_levels: Deformable DETR's number of levels (the deformable attention's
            ``num_levels`` must equal it), or ``None`` for DETR.

    Raises:
        ValueError: naming the setting and the expected value.
    """
    check_positive_int(num_queries, 'num_queries')
    for key, cfg in (('encoder', encoder), ('decoder', decoder),
                     ('positional_encoding', positional_encoding), ('bbox_head', bbox_head)):
        check_required(cfg, key, detector)
    for key, cfg in (('encoder', encoder), ('decoder', decoder)):
        check_positive_int(cfg.get('num_layers'), f'{key}.num_layers')
    if num_feature_levels is not None:
        check_positive_int(num_feature_levels, 'num_feature_levels')
        for key, cfg, attn in (('encoder', encoder, 'self_attn_cfg'),
                               ('decoder', decoder, 'cross_attn_cfg')):
            levels = _cfg_get(cfg, 'layer_cfg', attn, 'num_levels', default=4)
            if levels != num_feature_levels:
                raise ValueError(f'{detector}: {key}.layer_cfg.{attn}.num_levels={levels} must '
                                 f'equal num_feature_levels={num_feature_levels}')
    embed_dims = _cfg_get(encoder, 'layer_cfg', 'self_attn_cfg', 'embed_dims')
    num_feats = positional_encoding.get('num_feats')
    if embed_dims is not None and num_feats is not None and num_feats * 2 != embed_dims:
        raise ValueError(f'{detector}: positional_encoding.num_feats={num_feats} must be '
                         f'embed_dims / 2 = {embed_dims / 2}')


def check_transformer(detector: str, model: nn.Module) -> None:
    """Checks after the build that decoder and head have the encoder's ``embed_dims``."""
    embed_dims = model.encoder.embed_dims
    for where, dims in (('decoder', model.decoder.embed_dims),
                        ('bbox_head', getattr(model.bbox_head, 'embed_dims', embed_dims))):
        if dims != embed_dims:
            raise ValueError(f'{detector}: {where}.embed_dims={dims} must equal the encoder '
                             f'embed_dims={embed_dims}')


class DETRFamilyMixin:
    """What the package's DETR-family detectors add to MMDetection's (put it first in the bases).

    * ``__init__``: exactly MMDetection's arguments, checked before the build
      (:func:`check_detr_config`) and after it (:func:`check_transformer`,
      :func:`check_backbone_neck`);
    * ``_init_layers``: MMDetection's, then :func:`~.detr_layers.swap_attention` on the encoder
      and decoder with :attr:`attention_replacements` (set it to ``{}`` on a subclass to keep
      mmcv's modules, e.g. for a comparison);
    * ``extract_feat``: the image batch enters the backbone in channels-last memory layout, and
      the backbone's maps are checked against the neck's ``in_channels`` with a clear error. The
      function is the same (only strides differ), but oneDNN's convolutions run faster on that
      layout on the CPU, and the neck's maps then flatten into ``(bs, H·W, C)`` tokens without a
      copy. Parameters keep their usual layout, so state dicts and DDP buckets are unchanged. Set
      ``channels_last_inputs = False`` on a subclass to feed the images as they come.
    """

    attention_replacements: Optional[Mapping[type, type]] = None
    channels_last_inputs: bool = True

    def __init__(self,
                 backbone: dict,
                 neck: Optional[dict] = None,
                 encoder: Optional[dict] = None,
                 decoder: Optional[dict] = None,
                 bbox_head: Optional[dict] = None,
                 positional_encoding: Optional[dict] = None,
                 num_queries: int = 100,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None,
                 **variant: Any) -> None:
        """MMDetection's ``DetectionTransformer`` arguments; ``variant`` holds the detector's own
        (Deformable DETR: ``with_box_refine``, ``as_two_stage``, ``num_feature_levels``), passed
        on to MMDetection, which refuses unknown ones."""
        name = type(self).__name__
        own = inspect.signature(super().__init__).parameters  # type: ignore[misc]
        levels = variant.get('num_feature_levels', own['num_feature_levels'].default
                             if 'num_feature_levels' in own else None)
        check_detr_config(name, num_queries, encoder, decoder, positional_encoding, bbox_head,
                          levels)
        super().__init__(  # type: ignore[call-arg]
            backbone=backbone, neck=neck, encoder=encoder, decoder=decoder, bbox_head=bbox_head,
            positional_encoding=positional_encoding, num_queries=num_queries,
            train_cfg=train_cfg, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
            init_cfg=init_cfg, **variant)
        check_transformer(name, self)
        neck_module = self.neck if self.with_neck else None
        if levels is None:  # DETR reads the last map of the neck, or the backbone's only map
            levels = None if neck_module is not None else 1
        check_backbone_neck(name, self.backbone, neck_module, self.embed_dims, levels)

    def _init_layers(self) -> None:
        super()._init_layers()  # type: ignore[misc]
        for coder in (self.encoder, self.decoder):
            swap_attention(coder, self.attention_replacements)

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor]:
        """Backbone and neck features, with a clear error if they do not fit together."""
        if self.channels_last_inputs and batch_inputs.dim() == 4:
            batch_inputs = batch_inputs.contiguous(memory_format=torch.channels_last)
        x = self.backbone(batch_inputs)
        if self.with_neck:
            check_neck_inputs(type(self).__name__, x, self.neck)
            x = self.neck(x)
        return x


__all__ = ['DETRFamilyMixin', 'backbone_out_channels', 'check_backbone_neck', 'check_detr_config',
           'check_levels', 'check_neck_inputs', 'check_required', 'check_transformer',
           'neck_in_channels', 'neck_num_outs', 'neck_out_channels']
