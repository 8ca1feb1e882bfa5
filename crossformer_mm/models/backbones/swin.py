"""Swin Transformer backbone for classification, detection and segmentation.

Paper: *Swin Transformer: Hierarchical Vision Transformer using Shifted Windows* (Liu et al., ICCV
2021); official code microsoft/Swin-Transformer. The function computed is the one of MMDetection's
``SwinTransformer`` (``mmdet/models/backbones/swin.py``): any input size (the image is padded to a
multiple of the patch size, each map to a multiple of the window, odd maps to even before a
merge; padded tokens take part in attention unmasked, as upstream and the released dense
checkpoints do), every other block shifted, one ``norm{i}`` per returned stage.

Built on the package's shared layers: :class:`~crossformer_mm.models.layers.Attention` with the
relative position bias and the shift mask folded into one SDPA ``attn_mask``,
:class:`~crossformer_mm.models.layers.RelativePositionBias`,
:class:`~crossformer_mm.models.layers.CrossScaleEmbed` (one kernel = plain patch embedding),
:class:`~crossformer_mm.models.layers.PatchMerging`,
:func:`~crossformer_mm.models.layers.window_partition` / ``window_reverse`` (pad, shift, crop) and
:func:`~crossformer_mm.models.layers.shifted_window_mask`. The shift mask is built once per map size
(cached) instead of in every block.

State-dict layout (the official one where possible): ``patch_embed.projs.0``, ``patch_embed.norm``,
``layers.i.blocks.j.{norm1, attn.qkv, attn.proj, attn.rel_pos.relative_position_bias_table, norm2,
mlp.fc1, mlp.fc2}``, ``layers.i.downsample.{norm, reduction}``, ``norm{i}``, ``head``.
:func:`convert_swin_state_dict` reads official/timm and MMDetection/MMPretrain checkpoints.

Differences from the official classification model: the official code stops shifting (and shrinks
the window) when a stage's map is not larger than the window (the 7×7 last stage at 224²); like
MMDetection, this backbone always shifts. Absolute position embeddings (``ape``, unused by every
released Swin) are not supported.
"""
import logging
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from torch import Tensor, nn

from crossformer_mm.models.layers import (Attention, CrossScaleEmbed, DropPath, Mlp, PatchMerging,
                                          RelativePositionBias, resize_rel_pos_bias_table,
                                          shifted_window_mask, window_partition, window_reverse)
from crossformer_mm.registry import register_model

from ..utils import moved_names
from .base import BackboneBase
from .loading import backbone_state_dict


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class WindowAttention(Attention):
    """Window attention with Swin's learned relative position bias (``rel_pos``).

    Args:
        dim: Channels.
        num_heads: Heads.
        window_size: Window side ``W``.
        **attn_args: Forwarded to :class:`~crossformer_mm.models.layers.Attention`
            (``qkv_bias``, ``qk_scale``, ``attn_drop``, ``proj_drop``, ``fused_attn``).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, **attn_args: Any) -> None:
        super().__init__(dim, num_heads, **attn_args)
        self.window_size = window_size
        self.rel_pos = RelativePositionBias(window_size, num_heads, persistent_index=False)

    def forward_windows(self, x: Tensor, shift_mask: Optional[Tensor]) -> Tensor:
        """``(B·nW, W², C)`` windows → same; ``shift_mask`` bool ``(nW, W², W²)`` or None."""
        return self.forward(x, attn_bias=self.rel_pos(), attn_mask=shift_mask)


class SwinBlock(nn.Module):
    """Swin block: (shifted) window attention and MLP, pre-norm, residual.

    Args:
        dim: Channels.
        num_heads: Heads.
        window_size: Window side.
        shift: Shift the windows by ``window_size // 2``.
        mlp_ratio: MLP hidden ratio.
        qkv_bias: qkv bias.
        qk_scale: Logit scale override.
        drop: Dropout after proj and in the MLP.
        attn_drop: Attention dropout.
        drop_path: Stochastic depth rate.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the explicit softmax (False);
            see :class:`~crossformer_mm.models.layers.Attention`.
        norm_layer: Norm class.
        act_layer: MLP activation class.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 fused_attn: bool = True, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias=qkv_bias,
                                    qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop,
                                    fused_attn=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def attention(self, x: Tensor) -> Tensor:
        """The attention branch ``(B, H, W, C)`` → ``(B, H, W, C)`` (before drop path):
        pad → roll → window partition → attention → back, as MMDetection's ``ShiftWindowMSA``."""
        h, w = x.shape[1], x.shape[2]
        ws, s = self.window_size, self.shift_size
        windows, padded = window_partition(self.norm1(x), ws, s)
        mask = shifted_window_mask(padded, ws, s, x.device) if s else None
        windows = self.attn.forward_windows(windows, mask)
        return window_reverse(windows, ws, padded, (h, w), s)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` → ``(B, H, W, C)``."""
        x = x + self.drop_path(self.attention(x))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f'window_size={self.window_size}, shift_size={self.shift_size}'


class SwinStage(nn.Module):
    """A stage: blocks alternating regular / shifted windows, then an optional merge.

    Args:
        dim: Channels.
        depth: Number of blocks.
        num_heads: Heads.
        window_size: Window side.
        drop_paths: Stochastic depth rate of each block.
        downsample: Merging module applied after the blocks, or None.
        with_cp: Gradient checkpointing of each block in training.
        **block_args: Forwarded to :class:`SwinBlock`.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int,
                 drop_paths: Sequence[float], downsample: Optional[nn.Module] = None,
                 with_cp: bool = False, **block_args: Any) -> None:
        super().__init__()
        self.with_cp = with_cp
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, shift=i % 2 == 1, drop_path=drop_paths[i],
                      **block_args) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(B, H, W, C)`` → (stage output, merged map or the output)."""
        for blk in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
@register_model()
class CFSwinTransformer(BackboneBase):
    """Swin Transformer backbone (one class for classification, detection and segmentation).

    Args:
        arch: A name of :attr:`arch_zoo` (``tiny``/``t``, ``small``/``s``, ``base``/``b``,
            ``large``/``l``) or a dict with ``embed_dim``, ``depths``, ``num_heads`` and
            optionally ``drop_path_rate``.
        in_channels: Image channels.
        patch_size: Patch size (stride of the embedding).
        window_size: Window side.
        mlp_ratio: MLP hidden ratio.
        out_indices: Stages whose outputs are returned (increasing; negative counts from the
            end); :meth:`output_shape` gives their channels and strides.
        qkv_bias: Bias of the qkv projection.
        qk_scale: Attention logit scale override.
        patch_norm: LayerNorm in the patch embedding and the mergings.
        drop_rate: Dropout rate.
        attn_drop_rate: Attention dropout rate.
        drop_path_rate: Stochastic depth (linear over blocks); default from the arch.
        out_norms: A LayerNorm ``norm{i}`` on each returned stage (as MMDetection's Swin).
        frozen_stages: Freeze the embedding (0) and stages ``< frozen_stages`` (with their
            ``norm{i}``); -1 freezes nothing.
        norm_eval: Keep BatchNorm layers (if a custom norm uses them) in eval mode in training.
        num_classes: > 0 adds a ``head`` Linear used by :meth:`forward_head`.
        with_cp: Gradient checkpointing of the blocks.
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the explicit softmax (False)
            in every attention; see :class:`~crossformer_mm.models.layers.Attention`.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=path)`` loads an
            official, timm, MMDetection/MMPretrain or converted checkpoint with
            :meth:`load_pretrained` (``prefix`` optional).
    """

    arch_zoo: Dict[str, Dict[str, Any]] = {
        'tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                     drop_path_rate=0.2),
        'small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                      drop_path_rate=0.3),
        'base': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                     drop_path_rate=0.5),
        'large': dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                      drop_path_rate=0.5),
    }
    arch_aliases: Dict[str, str] = {'t': 'tiny', 's': 'small', 'b': 'base', 'l': 'large'}
    arch_required = frozenset({'embed_dim', 'depths', 'num_heads'})
    arch_optional = frozenset({'drop_path_rate'})
    converter_tool = 'swin_to_mm'
    structural_keys = ('patch_embed.', 'layers.')

    def __init__(self, arch: Union[str, Mapping[str, Any]] = 'tiny', in_channels: int = 3,
                 patch_size: int = 4, window_size: int = 7, mlp_ratio: float = 4.0,
                 out_indices: Sequence[int] = (0, 1, 2, 3), qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, patch_norm: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: Optional[float] = None, out_norms: bool = True,
                 frozen_stages: int = -1, norm_eval: bool = False, num_classes: int = 0,
                 with_cp: bool = False, fused_attn: bool = True,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = self._resolve_arch(arch)
        embed_dim, depths, num_heads = cfg['embed_dim'], tuple(cfg['depths']), tuple(
            cfg['num_heads'])
        if len(depths) != len(num_heads):
            raise ValueError(f'arch: depths {depths} and num_heads {num_heads} must have the '
                             f'same length')
        if drop_path_rate is None:
            drop_path_rate = cfg.get('drop_path_rate', 0.1)
        if window_size < 1:
            raise ValueError(f'window_size must be >= 1, got {window_size}')
        n_st = len(depths)
        self._init_outputs(n_st, out_indices, frozen_stages, norm_eval)
        self.arch_settings = cfg
        self.in_channels = in_channels
        self.window_size = window_size
        self.num_classes = num_classes
        self.num_features = [embed_dim * 2 ** i for i in range(n_st)]
        self.strides = [patch_size * 2 ** i for i in range(n_st)]

        self.patch_embed = CrossScaleEmbed(in_channels, embed_dim, (patch_size,), stride=patch_size,
                                           norm_layer=nn.LayerNorm if patch_norm else None)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.layers = nn.ModuleList()
        for i in range(n_st):
            dim = self.num_features[i]
            downsample = (PatchMerging(dim, 2 * dim,
                                       norm_layer=nn.LayerNorm if patch_norm else None)
                          if i < n_st - 1 else None)
            self.layers.append(SwinStage(
                dim, depths[i], num_heads[i], window_size,
                dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=downsample,
                with_cp=with_cp, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                drop=drop_rate, attn_drop=attn_drop_rate, fused_attn=fused_attn))
        if out_norms:
            self._add_out_norms()
        if num_classes > 0:
            self.head = nn.Linear(self.num_features[-1], num_classes)
        self._freeze_stages()

    # ---------------------------------------------------------------- construction helpers
    def _init_extra(self) -> None:
        for m in self.modules():
            if isinstance(m, RelativePositionBias):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def convert_state_dict(self, state_dict: 'OrderedDict[str, Tensor]',
                           logger: Union[str, logging.Logger]) -> 'OrderedDict[str, Tensor]':
        """Any supported layout → this model's key names
        (:func:`convert_swin_state_dict`); relative-position tables of another window size are
        resized (bicubic, logged)."""
        state_dict = convert_swin_state_dict(state_dict, self.num_stages)
        own = self.state_dict()
        for k, v in state_dict.items():
            if k.endswith('relative_position_bias_table') and k in own and \
                    v.shape != own[k].shape and v.shape[1] == own[k].shape[1]:
                print_log(f'resizing {k} from {tuple(v.shape)} to {tuple(own[k].shape)} '
                          f'(window {self.window_size}, bicubic)', logger=logger)
                state_dict[k] = resize_rel_pos_bias_table(v, (self.window_size,) * 2)
        return state_dict

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Images ``(B, C, H, W)`` → the ``out_indices`` stage maps ``(B, C_i, ⌈H/2^(i+2)⌉, …)``."""
        if x.ndim != 4:
            raise ValueError(f'CFSwinTransformer expects a 4-D (B, C, H, W) input, got shape '
                             f'{tuple(x.shape)}')
        outs, _ = self.forward_stages(self.pos_drop(self.patch_embed(x)))
        return tuple(f.permute(0, 3, 1, 2).contiguous() for f in outs)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
_UNFOLD_PERM = [0, 2, 1, 3]  # unfold order (dh·2 + dw) <-> official order (dw·2 + dh)


def unfold_to_official_order(v: Tensor) -> Tensor:
    """Permute MMDetection/MMPretrain patch-merging channels (``c·4 + dh·2 + dw``, ``nn.Unfold``
    order) into the official concatenation order (``(dw·2 + dh)·C + c``).

    Works on the ``reduction.weight`` ``(out, 4C)`` and on ``norm.weight/bias`` ``(4C,)``; the
    inverse of the ``correct_unfold_*`` functions of MMDetection's ``swin_converter``. Used by
    :func:`convert_swin_state_dict` on MMDetection / MMPretrain checkpoints.
    """
    if v.ndim == 2:
        out, in4 = v.shape
        return v.reshape(out, in4 // 4, 4)[:, :, _UNFOLD_PERM].transpose(1, 2).reshape(out, in4)
    in4 = v.shape[0]
    return v.reshape(in4 // 4, 4)[:, _UNFOLD_PERM].t().reshape(in4)


def swin_checkpoint_layout(sd: Mapping[str, Any]) -> str:
    """``'mm'`` (MMDetection/MMPretrain), ``'timm'``, ``'official'`` or ``'ours'`` (converted)."""
    keys = list(sd)
    if any(k.startswith('stages.') for k in keys):
        return 'mm'
    if any('.attn.rel_pos.relative_position_bias_table' in k or k.startswith('patch_embed.projs.')
           for k in keys):
        return 'ours'
    downs = {int(m.group(1)) for k in keys
             if (m := re.match(r'layers\.(\d+)\.downsample\.', k))}
    if downs and 0 not in downs:
        return 'timm'  # timm >= 0.9 puts each merge at the start of the next stage
    if any(k.startswith('layers.') for k in keys):
        return 'official'
    raise ValueError('not a Swin checkpoint: no stages.* or layers.* keys (first keys: '
                     f'{keys[:3]})')


def convert_swin_state_dict(state_dict: Mapping[str, Tensor],
                            num_stages: int = 4) -> 'OrderedDict[str, Tensor]':
    """The backbone's tensors of a Swin checkpoint of any supported layout → state dict of
    :class:`CFSwinTransformer`.

    Layouts: official (``layers.i.blocks.j.attn.qkv``, ``patch_embed.proj``,
    ``layers.i.downsample.reduction/norm``, final ``norm`` → ``norm{num_stages-1}``), timm (merges
    at the start of the next stage, ``head.fc``), MMDetection/MMPretrain (``stages.i.blocks.j.attn.
    w_msa.qkv``, ``ffn.layers.0.0``, ``patch_embed.projection``, merging channels in ``nn.Unfold``
    order, permuted back) and already converted files. The buffers ``relative_position_index`` and
    ``attn_mask`` that the model rebuilds are dropped. Relative-position tables are returned as
    they are; :meth:`CFSwinTransformer.convert_state_dict` resizes them to the model.
    """
    layout = swin_checkpoint_layout(state_dict)
    out: 'OrderedDict[str, Tensor]' = OrderedDict()
    for k, v in state_dict.items():
        if k.endswith(('relative_position_index', 'attn_mask')):
            continue
        if layout == 'mm':
            k = k.replace('patch_embed.projection.', 'patch_embed.projs.0.')
            k = re.sub(r'^stages\.', 'layers.', k)
            k = k.replace('.attn.w_msa.', '.attn.')
            k = k.replace('.ffn.layers.0.0.', '.mlp.fc1.').replace('.ffn.layers.1.', '.mlp.fc2.')
            if '.downsample.' in k:
                v = unfold_to_official_order(v)
        elif layout in ('official', 'timm'):
            k = k.replace('patch_embed.proj.', 'patch_embed.projs.0.')
            if k.startswith('norm.'):
                k = f'norm{num_stages - 1}.' + k[len('norm.'):]
            if k.startswith('head.fc.'):
                k = 'head.' + k[len('head.fc.'):]
            if layout == 'timm':
                m = re.match(r'layers\.(\d+)\.downsample\.(.*)', k)
                if m:
                    k = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
        if layout != 'ours':
            k = k.replace('.attn.relative_position_bias_table',
                          '.attn.rel_pos.relative_position_bias_table')
        out[k] = v
    return out


def convert_swin_checkpoint(checkpoint: Mapping[str, Any], num_stages: int = 4,
                            prefix: Optional[str] = None) -> 'OrderedDict[str, Tensor]':
    """A Swin checkpoint (official ``model`` key, timm, MMDetection / MMPretrain, whole-model
    files) → state dict of :class:`CFSwinTransformer` (what
    ``tools/model_converters/swin_to_mm.py`` writes): the backbone's entries selected by
    :func:`~.loading.backbone_state_dict` (``prefix``, by default the ``backbone.`` entries of
    detector / segmentor / classifier checkpoints), then :func:`convert_swin_state_dict`."""
    return convert_swin_state_dict(backbone_state_dict(checkpoint, prefix), num_stages)


__all__ = ['CFSwinTransformer', 'SwinBlock', 'SwinStage', 'WindowAttention',
           'convert_swin_checkpoint', 'convert_swin_state_dict',
           'swin_checkpoint_layout', 'unfold_to_official_order']

#: ``load_swin_checkpoint(model, ...)`` is ``model.load_pretrained(...)`` (deprecated).
__getattr__ = moved_names(__name__, {
    'load_swin_checkpoint':
        'crossformer_mm.models.backbones.base:BackboneBase.load_pretrained'})
