"""Multi-head self-attention over token groups, with an SDPA path and an explicit path.

Follows timm's ``Attention`` (``fused_attn`` switch): the fused path calls
``F.scaled_dot_product_attention`` with the additive position bias and the padding / shift masks
folded into one ``attn_mask``; the explicit path computes ``softmax(q·kᵀ·scale + bias) · v`` and is
kept for checking, export and FLOP counting.

Grouped inputs: the batch of ``x`` is ``B_ = B·n`` token groups ordered batch-major
(``index = b·n + g``, the order of :func:`~crossformer_mm.models.layers.group_partition`). Biases and
masks given per group (leading dimension ``n``) are applied to group ``g`` of every image without
being repeated over the batch: q, k, v are viewed as ``(B, n·heads, N, d)`` and the mask as
``(1, n·heads, N, N)``.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mask_value(dtype: torch.dtype) -> float:
    """Large negative value used for masked logits.

    Finite, so that a row whose keys are all masked (a padded query in an all-padding group)
    gives a uniform softmax instead of NaN, and small enough in magnitude that adding a bias
    cannot overflow.
    """
    return torch.finfo(dtype).min / 4


def build_attn_mask(num_heads: int, n_tokens: int, dtype: torch.dtype,
                    attn_bias: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                    key_padding_mask: Optional[Tensor] = None) -> Optional[Tensor]:
    """Fold a position bias and masks into one additive mask of shape ``(n, heads|1, N, N)``.

    Args:
        num_heads: Number of heads.
        n_tokens: Tokens per group ``N``.
        dtype: dtype of the attention logits.
        attn_bias: Additive bias, ``(heads, N, N)`` or ``(n, heads, N, N)`` (or broadcastable).
        attn_mask: Per-group mask ``(n, N, N)`` or ``(N, N)``: bool (True = the query may NOT
            attend that key) or float (added as it is), e.g. Swin's shifted-window mask.
        key_padding_mask: Bool ``(n, N)`` or ``(N,)``, True at keys to ignore (padding).

    Returns:
        ``None`` if nothing is given, else a 4-D float tensor ``(n, heads or 1, N, N)`` (the
        leading ``n`` is 1 when nothing depends on the group).
    """
    out: Optional[Tensor] = None
    if attn_bias is not None:
        out = attn_bias.to(dtype)
        while out.ndim < 4:
            out = out.unsqueeze(0)
    neg = mask_value(dtype)
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(m, neg)
        else:
            m = m.to(dtype)
        m = m.reshape(-1, 1, n_tokens, n_tokens)
        out = m if out is None else out + m
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f'key_padding_mask must be bool, got {key_padding_mask.dtype}')
        m = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
        m = m.masked_fill_(key_padding_mask, neg).reshape(-1, 1, 1, n_tokens)
        out = m if out is None else out + m
    if out is not None and (out.shape[1] not in (1, num_heads) or out.shape[-1] != n_tokens):
        raise ValueError(f'attention bias/mask of shape {tuple(out.shape)} does not broadcast '
                         f'to (n, {num_heads}, {n_tokens}, {n_tokens})')
    return out


class Attention(nn.Module):
    """Multi-head self-attention (``qkv`` and ``proj`` Linear layers) over token groups.

    Parameter names ``qkv.*`` and ``proj.*`` match timm, Swin (``WindowMSA``) and CrossFormer.

    Args:
        dim: Token channels ``C``.
        num_heads: Number of heads; must divide ``dim``.
        qkv_bias: Whether ``qkv`` has a bias.
        qk_scale: Logit scale; default ``head_dim ** -0.5``.
        attn_drop: Dropout on the attention weights (training only).
        proj_drop: Dropout after ``proj``.
        fused: Use ``F.scaled_dot_product_attention`` (True) or the explicit
            ``softmax(q·kᵀ·scale + bias)`` path (False). Both compute the same function.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, attn_bias: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                bias_from_q: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
        """Attend within each group.

        Args:
            x: ``(B_, N, C)`` token groups, ``B_ = B·n`` ordered batch-major.
            attn_bias: Additive bias ``(heads, N, N)`` shared by all groups, or
                ``(n, heads, N, N)`` per group.
            attn_mask: Per-group ``(n, N, N)`` mask, bool (True = blocked) or additive float.
            key_padding_mask: Bool ``(n, N)``, True at padded keys.
            bias_from_q: Optional callable mapping the queries ``(B_, heads, N, d)`` (before
                scaling) to an additive bias ``(B_, heads, N, N)`` that depends on the sample,
                e.g. ViTDet's decomposed relative position; added to the folded mask.

        Returns:
            ``(B_, N, C)``.
        """
        b_, n_tok, c = x.shape
        if c != self.dim:
            raise ValueError(f'expected {self.dim} channels, got input of shape {tuple(x.shape)}')
        mask = build_attn_mask(self.num_heads, n_tok, x.dtype, attn_bias, attn_mask,
                               key_padding_mask)
        n = 1 if mask is None else mask.shape[0]
        if b_ % n:
            raise ValueError(f'batch of groups ({b_}) is not a multiple of the {n} groups the '
                             f'bias/mask describe')
        qkv = self.qkv(x).reshape(b_, n_tok, 3, self.num_heads, self.head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # 3, B_, heads, N, d
        if bias_from_q is not None:
            q_bias = bias_from_q(qkv[0]).to(x.dtype)  # B_, heads, N, N
            if mask is not None:
                q_bias = (q_bias.reshape(b_ // n, n, self.num_heads, n_tok, n_tok)
                          + mask.unsqueeze(0)).view(b_, self.num_heads, n_tok, n_tok)
            mask, n = q_bias, 1  # one mask per sample, in the (B_, heads) layout
        if n > 1:
            # (B, n·heads, N, d) so that a per-group mask broadcasts over the batch.
            qkv = qkv.reshape(3, b_ // n, n * self.num_heads, n_tok, self.head_dim)
            mask = mask.expand(n, self.num_heads, n_tok, n_tok).reshape(
                1, n * self.num_heads, n_tok, n_tok)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask,
                dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn + mask
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.reshape(b_, self.num_heads, n_tok, self.head_dim).transpose(1, 2)
        x = x.reshape(b_, n_tok, c)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, fused={self.fused}'


__all__ = ['Attention', 'build_attn_mask', 'mask_value']
