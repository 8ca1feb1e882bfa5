"""Vision Transformer backbone: classification, dense features and a ViTDet feature pyramid.

Papers: *An Image is Worth 16x16 Words* (Dosovitskiy et al., ICLR 2021), *DeiT* (Touvron et al.,
2021), *MAE* (He et al., CVPR 2022) for the weights, and *ViTDet: Exploring Plain Vision
Transformer Backbones for Object Detection* (Li et al., ECCV 2022; detectron2
``modeling/backbone/vit.py``) for windowed attention with a few global blocks, decomposed relative
position and the simple feature pyramid.

With global attention and ``out_type='featmap'`` the function is MMSegmentation's
``VisionTransformer`` (``mmseg/models/backbones/vit.py``): the absolute position embedding is
resized to the token grid of every input exactly as ``resize_pos_embed`` does (bicubic,
``align_corners=False``, class-token row kept), the image is zero-padded at the bottom/right to a
multiple of the patch size, ``final_norm`` normalises the last block only. Unlike MMSegmentation,
the embedding is resized whenever the grid differs (MMSegmentation compares lengths only).

Built on the shared layers: :class:`~crossformer_mm.models.layers.Attention` (SDPA or explicit;
ViTDet's relative position enters as a query-dependent bias folded into the SDPA mask),
:class:`~crossformer_mm.models.layers.CrossScaleEmbed` (one kernel), ``Mlp``, ``DropPath``,
window partition and :func:`~crossformer_mm.models.layers.resize_abs_pos_embed`.

State-dict layout (timm's): ``patch_embed.projs.0``, ``cls_token``, ``pos_embed``, ``norm_pre``,
``blocks.i.{norm1, attn.qkv, attn.proj, attn.rel_pos_h, attn.rel_pos_w, norm2, mlp.fc1, mlp.fc2}``,
``norm``, ``fc_norm``, ``head``, ``pyramid.*``. :func:`convert_vit_state_dict` reads timm / DeiT /
MAE and MMSegmentation / MMPretrain checkpoints.
"""
import logging
import math
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch import Tensor, nn

from crossformer_mm.models.layers import (Attention, CrossScaleEmbed, DropPath, Mlp,
                                          decomposed_rel_pos_bias, resize_abs_pos_embed,
                                          to_2tuple, window_partition, window_reverse)
from crossformer_mm.registry import register_model

from ..utils import moved_names
from .base import BackboneBase, ShapeSpec
from .loading import backbone_state_dict

OUT_TYPES = ('featmap', 'pyramid', 'cls_token', 'avg_featmap')


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class ViTAttention(Attention):
    """Global or windowed attention with optional ViTDet decomposed relative position.

    Args:
        dim: Channels.
        num_heads: Heads.
        rel_pos_size: ``(h, w)`` grid the tables ``rel_pos_h`` ``(2h−1, head_dim)`` and
            ``rel_pos_w`` are learned for (the window, or the pre-training grid of a global
            block); None disables relative position.
        **attn_args: Forwarded to :class:`~crossformer_mm.models.layers.Attention`.
    """

    def __init__(self, dim: int, num_heads: int, rel_pos_size: Optional[Tuple[int, int]] = None,
                 **attn_args: Any) -> None:
        super().__init__(dim, num_heads, **attn_args)
        self.use_rel_pos = rel_pos_size is not None
        if rel_pos_size is not None:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dim))

    def forward_tokens(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """``(B_, h·w, C)`` tokens of an ``h×w`` grid (no prefix tokens with rel. position)."""
        if not self.use_rel_pos:
            return self.forward(x)
        return self.forward(x, bias_from_q=lambda q: decomposed_rel_pos_bias(
            q, self.rel_pos_h, self.rel_pos_w, hw, hw))


class ViTBlock(nn.Module):
    """Pre-norm transformer block; global attention or ``window_size`` windows (ViTDet).

    Windowed blocks pad the grid at the bottom/right to a multiple of the window after
    ``norm1`` and let the padded tokens take part unmasked, as ViTDet does.

    Args:
        dim: Channels.
        num_heads: Heads.
        mlp_ratio: MLP hidden ratio.
        qkv_bias: qkv bias.
        drop: Dropout after proj and in the MLP.
        attn_drop: Attention dropout.
        drop_path: Stochastic depth rate.
        window_size: 0 for global attention, else the window side.
        rel_pos_size: Grid of the relative-position tables, or None.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the explicit softmax (False);
            see :class:`~crossformer_mm.models.layers.Attention`.
        norm_layer: Norm class.
        act_layer: MLP activation class.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 window_size: int = 0, rel_pos_size: Optional[Tuple[int, int]] = None,
                 fused_attn: bool = True, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = ViTAttention(dim, num_heads, rel_pos_size, qkv_bias=qkv_bias,
                                 attn_drop=attn_drop, proj_drop=drop, fused_attn=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """``(B, P + h·w, C)`` → same (``P`` prefix tokens must be 0 for windowed blocks)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            b, _, c = x.shape
            ws = self.window_size
            windows, padded = window_partition(x.view(b, hw[0], hw[1], c), ws)
            x = self.attn.forward_tokens(windows, (ws, ws))
            x = window_reverse(x, ws, padded, hw).reshape(b, hw[0] * hw[1], c)
        else:
            x = self.attn.forward_tokens(x, hw)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f'window_size={self.window_size}'


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: strides 4, 8, 16, 32 from one stride-16 map.

    Scale 4: deconv 2×2/2 → LN → GELU → deconv 2×2/2 (``C → C/2 → C/4``); scale 2: one deconv
    (``C → C/2``); scale 1: identity; scale 0.5: 2×2 max pool (``ceil_mode``, so odd grids give
    ``⌈h/2⌉``). With ``out_channels`` each level then gets ViTDet's 1×1 conv → LN → 3×3 conv → LN.

    Args:
        dim: Channels of the input map.
        scales: Scale factors, a subset of ``(4, 2, 1, 0.5)``.
        out_channels: Common output channels, or None for the native ones.
    """

    def __init__(self, dim: int, scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.stages = nn.ModuleList()
        self.out_channels: List[int] = []
        for s in self.scales:
            if s == 4.0:
                ops: List[nn.Module] = [nn.ConvTranspose2d(dim, dim // 2, 2, 2),
                                        LayerNorm2d(dim // 2), nn.GELU(),
                                        nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)]
                c = dim // 4
            elif s == 2.0:
                ops, c = [nn.ConvTranspose2d(dim, dim // 2, 2, 2)], dim // 2
            elif s == 1.0:
                ops, c = [], dim
            elif s == 0.5:
                ops, c = [nn.MaxPool2d(2, 2, ceil_mode=True)], dim
            else:
                raise ValueError(f'pyramid scales must be among (4, 2, 1, 0.5), got {scales}')
            if out_channels is not None:
                ops += [nn.Conv2d(c, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                        LayerNorm2d(out_channels)]
                c = out_channels
            self.stages.append(nn.Sequential(*ops))
            self.out_channels.append(c)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        return tuple(stage(x) for stage in self.stages)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
@register_model()
class CFVisionTransformer(BackboneBase):
    """Vision Transformer backbone (classification, dense features, ViTDet pyramid).

    Args:
        arch: A name of :attr:`arch_zoo` (``tiny``/``t``, ``small``/``s``, ``base``/``b``,
            ``large``/``l``) or a dict with ``embed_dim``, ``depth``, ``num_heads`` and optionally
            ``mlp_ratio``.
        img_size: Pre-training image size; the position embedding has its token grid.
        patch_size: Patch size.
        in_channels: Image channels.
        with_cls_token: Prepend a class token (its position-embedding row comes first).
        qkv_bias: Bias of the qkv projection.
        drop_rate: Dropout rate (after the position embedding, proj, MLP).
        attn_drop_rate: Attention dropout rate.
        drop_path_rate: Stochastic depth (linear over blocks).
        patch_norm: LayerNorm after the patch embedding.
        pre_norm: LayerNorm ``norm_pre`` before the blocks (CLIP style).
        final_norm: LayerNorm ``norm`` on the output of the last block.
        window_size: 0 for global attention everywhere, else the window side of every block not
            in ``global_attn_indexes`` (ViTDet uses 14 with global blocks 2, 5, 8, 11).
        global_attn_indexes: Blocks with global attention when ``window_size > 0``.
        use_rel_pos: ViTDet decomposed relative position in every block.
        out_type: ``'featmap'`` — ``(B, C, h, w)`` maps of ``out_indices``; ``'pyramid'`` — the
            simple feature pyramid of the last ``out_indices`` map (strides 4..32, for FPN /
            UPerNet); ``'cls_token'`` / ``'avg_featmap'`` — a ``(B, C)`` feature (class token or
            mean of the patch tokens, then ``fc_norm`` if set) for classification.
        out_indices: Blocks whose outputs are returned (increasing; negative counts from the
            end). :meth:`output_shape` gives the channels and strides of the outputs.
        pyramid_scales: Scales of the pyramid.
        pyramid_channels: Output channels of every pyramid level, or None for the native
            ``(C/4, C/2, C, C)``.
        fc_norm: LayerNorm ``fc_norm`` after average pooling (MAE fine-tuning style).
        interpolate_mode: Mode used to resize the position embedding.
        num_classes: > 0 adds a ``head`` Linear used by :meth:`forward_head`.
        frozen_stages: Freeze the embeddings (0) and blocks ``< frozen_stages``; -1: nothing.
        norm_eval: Keep BatchNorm layers (if any) in eval mode in training.
        with_cp: Gradient checkpointing of the blocks.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the explicit softmax (False)
            in every attention; see :class:`~crossformer_mm.models.layers.Attention`.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=path)`` loads a
            timm / DeiT / MAE / MMSegmentation / MMPretrain / converted checkpoint with
            :meth:`load_pretrained` (``prefix`` optional).
    """

    arch_zoo: Dict[str, Dict[str, Any]] = {
        'tiny': dict(embed_dim=192, depth=12, num_heads=3),
        'small': dict(embed_dim=384, depth=12, num_heads=6),
        'base': dict(embed_dim=768, depth=12, num_heads=12),
        'large': dict(embed_dim=1024, depth=24, num_heads=16),
    }
    arch_aliases: Dict[str, str] = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large'}
    arch_required = frozenset({'embed_dim', 'depth', 'num_heads'})
    arch_optional = frozenset({'mlp_ratio'})
    converter_tool = 'vit_to_mm'
    structural_keys = ('patch_embed.', 'blocks.')
    optional_keys = ('rel_pos_h', 'rel_pos_w')

    def __init__(self, arch: Union[str, Mapping[str, Any]] = 'base',
                 img_size: Union[int, Sequence[int]] = 224, patch_size: int = 16,
                 in_channels: int = 3, with_cls_token: bool = True, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, patch_norm: bool = False, pre_norm: bool = False,
                 final_norm: bool = True, window_size: int = 0,
                 global_attn_indexes: Sequence[int] = (), use_rel_pos: bool = False,
                 out_type: str = 'featmap', out_indices: Union[int, Sequence[int]] = -1,
                 pyramid_scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 pyramid_channels: Optional[int] = None, fc_norm: bool = False,
                 interpolate_mode: str = 'bicubic', num_classes: int = 0,
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 fused_attn: bool = True,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = self._resolve_arch(arch)
        dim, depth, heads = cfg['embed_dim'], cfg['depth'], cfg['num_heads']
        mlp_ratio = cfg.get('mlp_ratio', 4.0)
        if out_type not in OUT_TYPES:
            raise ValueError(f'out_type must be one of {OUT_TYPES}, got {out_type!r}')
        if out_type == 'cls_token' and not with_cls_token:
            raise ValueError("out_type='cls_token' needs with_cls_token=True")
        if (window_size > 0 or use_rel_pos) and with_cls_token:
            raise ValueError('windowed attention and relative position work on the patch grid '
                             'only: set with_cls_token=False (ViTDet drops the class token)')
        self._init_outputs(depth, out_indices, frozen_stages, norm_eval)
        for i in global_attn_indexes:
            if not 0 <= i < depth:
                raise ValueError(f'global_attn_indexes must be in [0, {depth - 1}], got '
                                 f'{tuple(global_attn_indexes)}')
        self.arch_settings = cfg
        self.embed_dim = dim
        self.depth = depth
        self.in_channels = in_channels
        self.img_size = to_2tuple(img_size, 'img_size')
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.with_cls_token = with_cls_token
        self.num_prefix_tokens = 1 if with_cls_token else 0
        self.final_norm = final_norm
        self.out_type = out_type
        self.interpolate_mode = interpolate_mode
        self.num_classes = num_classes
        self.with_cp = with_cp
        self.num_features = [dim] * depth
        self.strides = [patch_size] * depth

        self.patch_embed = CrossScaleEmbed(in_channels, dim, (patch_size,), stride=patch_size,
                                           norm_layer=nn.LayerNorm if patch_norm else None)
        if with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        num_pos = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm_pre = nn.LayerNorm(dim) if pre_norm else None
        dpr = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList()
        for i in range(depth):
            ws = 0 if i in global_attn_indexes else window_size
            rel = ((ws, ws) if ws > 0 else self.grid_size) if use_rel_pos else None
            self.blocks.append(ViTBlock(dim, heads, mlp_ratio, qkv_bias, drop_rate,
                                        attn_drop_rate, dpr[i], ws, rel, fused_attn))
        self.norm = nn.LayerNorm(dim) if final_norm else None
        self.fc_norm = nn.LayerNorm(dim) if fc_norm else None
        self.pyramid = (SimpleFeaturePyramid(dim, pyramid_scales, pyramid_channels)
                        if out_type == 'pyramid' else None)
        if num_classes > 0:
            self.head = nn.Linear(dim, num_classes)
        self._freeze_stages()

    # ---------------------------------------------------------------- construction helpers
    def stage_modules(self) -> Sequence[nn.Module]:
        return self.blocks

    def output_shape(self) -> List[ShapeSpec]:
        """Per output: the blocks' maps (stride ``patch_size``), the pyramid levels (stride
        ``patch_size / scale``), or one ``(B, C)`` vector (stride None)."""
        if self.out_type == 'featmap':
            return super().output_shape()
        if self.out_type == 'pyramid':
            return [ShapeSpec(c, int(self.patch_size / s))
                    for c, s in zip(self.pyramid.out_channels, self.pyramid.scales)]
        return [ShapeSpec(self.embed_dim, None)]

    def _frozen_params(self) -> List[nn.Parameter]:
        return [self.pos_embed] + ([self.cls_token] if self.with_cls_token else [])

    def _init_extra(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.with_cls_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for blk in self.blocks:
            if blk.attn.use_rel_pos:
                nn.init.trunc_normal_(blk.attn.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(blk.attn.rel_pos_w, std=0.02)

    def convert_state_dict(self, state_dict: 'OrderedDict[str, Tensor]',
                           logger: Union[str, logging.Logger]) -> 'OrderedDict[str, Tensor]':
        """Any supported layout → this model's key names (:func:`convert_vit_state_dict`); a
        position embedding of another grid is resized (``interpolate_mode``) and its class rows
        adapted; relative-position tables of another length are resized (linear), as ViTDet's
        :func:`~crossformer_mm.models.layers.get_rel_pos` would at run time. Logged."""
        state_dict = convert_vit_state_dict(state_dict)
        own = self.state_dict()
        pos = state_dict.get('pos_embed')
        if pos is not None and pos.shape[-1] == own['pos_embed'].shape[-1]:
            state_dict['pos_embed'] = _adapt_pos_embed(pos, self, logger)
        for k, v in state_dict.items():
            if k.endswith(self.optional_keys) and k in own and v.shape != own[k].shape:
                print_log(f'resizing {k} from {tuple(v.shape)} to {tuple(own[k].shape)} '
                          f'(linear)', logger=logger)
                state_dict[k] = F.interpolate(v.t().unsqueeze(0), size=own[k].shape[0],
                                              mode='linear').squeeze(0).t()
        return state_dict

    # ---------------------------------------------------------------- forward
    def _pos_embed(self, hw: Tuple[int, int]) -> Tensor:
        """Position embedding for an ``h×w`` token grid (resized if it is not the training one)."""
        return resize_abs_pos_embed(self.pos_embed, hw, self.grid_size, self.num_prefix_tokens,
                                    self.interpolate_mode)

    def forward_features(self, x: Tensor) -> Tuple[List[Tensor], Tensor, Tuple[int, int]]:
        """Images → (tokens ``(B, P + h·w, C)`` after each block in ``out_indices``, final tokens,
        grid ``(h, w)``). The last block's tokens are normalised if ``final_norm``."""
        if x.ndim != 4:
            raise ValueError(f'CFVisionTransformer expects a 4-D (B, C, H, W) input, got shape '
                             f'{tuple(x.shape)}')
        x = self.patch_embed(x)  # B, h, w, C
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if self.with_cls_token:
            x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = self.pos_drop(x + self._pos_embed((h, w)))
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        outs, x = self.forward_stages(x, (h, w), final_norm=self.norm, with_cp=self.with_cp)
        return outs, x, (h, w)

    def _to_map(self, tokens: Tensor, hw: Tuple[int, int]) -> Tensor:
        b, _, c = tokens.shape
        grid = tokens[:, self.num_prefix_tokens:]
        return grid.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images ``(B, C, H, W)`` → a tuple according to ``out_type`` (see the class doc)."""
        outs, last, hw = self.forward_features(x)
        if self.out_type == 'featmap':
            return tuple(self._to_map(t, hw) for t in outs)
        if self.out_type == 'pyramid':
            return self.pyramid(self._to_map(outs[-1], hw))
        if self.out_type == 'cls_token':
            feat = last[:, 0]
        else:
            feat = last[:, self.num_prefix_tokens:].mean(dim=1)
        if self.fc_norm is not None:
            feat = self.fc_norm(feat)
        return (feat,)

    def forward_head(self, feats: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        """Logits from ``forward``'s ``(B, C)`` feature (``out_type`` cls_token/avg_featmap)."""
        if self.num_classes <= 0:
            raise RuntimeError('forward_head needs num_classes > 0')
        x = feats if isinstance(feats, Tensor) else feats[-1]
        if x.ndim != 2:
            raise RuntimeError(f"forward_head needs out_type 'cls_token' or 'avg_featmap', "
                               f'got features of shape {tuple(x.shape)}')
        return self.head(x)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def vit_checkpoint_layout(sd: Mapping[str, Any]) -> str:
    """``'ours'``, ``'timm'`` (timm / DeiT / MAE), ``'mmseg'`` or ``'mmpretrain'``."""
    keys = list(sd)
    if any(k.startswith('patch_embed.projs.') for k in keys):
        return 'ours'
    if any(k.startswith('layers.') and '.attn.attn.in_proj_weight' in k for k in keys):
        return 'mmseg'
    if any(k.startswith('layers.') for k in keys):
        return 'mmpretrain'
    if any(k.startswith('blocks.') for k in keys):
        return 'timm'
    raise ValueError(f'not a ViT checkpoint: no blocks.* or layers.* keys (first keys: '
                     f'{keys[:3]})')


_MM_BLOCK_RULES = (
    (r'^layers\.(\d+)\.ln1\.', r'blocks.\1.norm1.'),
    (r'^layers\.(\d+)\.ln2\.', r'blocks.\1.norm2.'),
    (r'^layers\.(\d+)\.attn\.attn\.in_proj_weight$', r'blocks.\1.attn.qkv.weight'),
    (r'^layers\.(\d+)\.attn\.attn\.in_proj_bias$', r'blocks.\1.attn.qkv.bias'),
    (r'^layers\.(\d+)\.attn\.attn\.out_proj\.', r'blocks.\1.attn.proj.'),
    (r'^layers\.(\d+)\.attn\.(qkv|proj)\.', r'blocks.\1.attn.\2.'),
    (r'^layers\.(\d+)\.ffn\.layers\.0\.0\.', r'blocks.\1.mlp.fc1.'),
    (r'^layers\.(\d+)\.ffn\.layers\.1\.', r'blocks.\1.mlp.fc2.'),
    (r'^layers\.', 'blocks.'),  # anything else (e.g. layer scale) stays visible as unexpected
    (r'^patch_embed\.projection\.', 'patch_embed.projs.0.'),
    (r'^ln1\.', 'norm.'),
    (r'^ln_pre\.', 'norm_pre.'),
    (r'^pre_norm\.', 'norm_pre.'),
    (r'^ln2\.', 'fc_norm.'),
)


def convert_vit_state_dict(state_dict: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """The backbone's tensors of a ViT checkpoint of any supported layout → state dict of
    :class:`CFVisionTransformer`.

    timm / DeiT / MAE (``blocks.i.attn.qkv``, ``patch_embed.proj``, ``pos_embed``, ``cls_token``,
    ``norm``, ``fc_norm``, ``head``); MMSegmentation (``layers.i.ln1``,
    ``attn.attn.in_proj_weight``, ``attn.attn.out_proj``, ``ffn.layers.0.0``, ``ffn.layers.1``,
    ``patch_embed.projection``, final ``ln1``; a missing patch bias becomes zeros); MMPretrain
    (``layers.i.attn.qkv``, final ``ln1``, ``pre_norm``, ``ln2`` → ``fc_norm``). The position
    embedding is returned as it is; :meth:`CFVisionTransformer.convert_state_dict` adapts its
    grid and prefix rows to the model. timm's classifier ``head.weight`` stays ``head.weight``;
    ``dist_token``/``head_dist`` (DeiT distilled) and MAE decoder weights are kept and reported as
    unexpected on loading.
    """
    layout = vit_checkpoint_layout(state_dict)
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    for k, v in state_dict.items():
        if layout == 'timm':
            k = re.sub(r'^patch_embed\.proj\.', 'patch_embed.projs.0.', k)
        elif layout in ('mmseg', 'mmpretrain'):
            for pattern, repl in _MM_BLOCK_RULES:
                new = re.sub(pattern, repl, k)
                if new != k:
                    k = new
                    break
        out[k] = v
    w = out.get('patch_embed.projs.0.weight')
    if w is not None and 'patch_embed.projs.0.bias' not in out:
        out['patch_embed.projs.0.bias'] = w.new_zeros(w.shape[0])  # MMSeg's patch_bias=False
    return out


def convert_vit_checkpoint(checkpoint: Mapping[str, Any],
                           prefix: Optional[str] = None) -> 'OrderedDict[str, Tensor]':
    """A ViT checkpoint (timm / DeiT / MAE, MMSegmentation, MMPretrain, whole-model files) → state
    dict of :class:`CFVisionTransformer` (what ``tools/model_converters/vit_to_mm.py`` writes):
    the backbone's entries selected by :func:`~.loading.backbone_state_dict` (``prefix``, by
    default the ``backbone.`` entries of whole-model checkpoints), then
    :func:`convert_vit_state_dict`."""
    return convert_vit_state_dict(backbone_state_dict(checkpoint, prefix))


def _adapt_pos_embed(pos: Tensor, model: CFVisionTransformer,
                     logger: Union[str, logging.Logger]) -> Tensor:
    """Checkpoint position embedding → the model's prefix rows and grid (logged if changed)."""
    length = pos.shape[1]
    gh, gw = model.grid_size
    want = model.num_prefix_tokens
    # The model's own grid first (it may not be square), then a square grid after 0-2 rows.
    for prefix in dict.fromkeys((want, 0, 1, 2)):
        if length - prefix == gh * gw:
            old_hw = (gh, gw)
            break
    else:
        side = math.isqrt(length)
        prefix = length - side * side
        if prefix > 2:
            raise ValueError(f'pos_embed of shape {tuple(pos.shape)} is neither a square grid '
                             f'(plus up to 2 class/distillation rows) nor the model grid '
                             f'{model.grid_size}')
        old_hw = (side, side)
    new = pos
    if prefix != want:
        if prefix > want:
            new = torch.cat((pos[:, :want], pos[:, prefix:]), dim=1)
        else:
            new = torch.cat((pos.new_zeros(1, want - prefix, pos.shape[2]), pos), dim=1)
        print_log(f'pos_embed: checkpoint has {prefix} prefix row(s), the model {want}; '
                  f'{"dropped the extra" if prefix > want else "zero-filled the missing"} rows',
                  logger=logger)
    if old_hw != model.grid_size:
        print_log(f'resizing pos_embed from a {old_hw[0]}x{old_hw[1]} grid to '
                  f'{model.grid_size[0]}x{model.grid_size[1]} ({model.interpolate_mode})',
                  logger=logger)
        new = resize_abs_pos_embed(new, model.grid_size, old_hw, want, model.interpolate_mode)
    return new


__all__ = ['CFVisionTransformer', 'ViTBlock', 'ViTAttention', 'SimpleFeaturePyramid',
           'LayerNorm2d', 'convert_vit_checkpoint', 'convert_vit_state_dict',
           'vit_checkpoint_layout']

#: ``load_vit_checkpoint(model, ...)`` is ``model.load_pretrained(...)`` (deprecated).
__getattr__ = moved_names(__name__, {
    'load_vit_checkpoint':
        'crossformer_mm.models.backbones.base:BackboneBase.load_pretrained'})
