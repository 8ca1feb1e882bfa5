"""Multi-head self-attention over token groups, after timm's ``Attention``.

One switch, ``fused_attn`` (timm's name): True computes the attention with
``F.scaled_dot_product_attention``, False with the explicit ``softmax(q·kᵀ·scale + bias + mask)·v``
(matmuls, kept for checking, export and FLOP counting). Both are the same function, in training
and in inference. :func:`fold_attn_mask` is the one place where the position bias and the masks
become the additive tensor both paths take.

Grouped inputs: the batch of ``x`` is ``B_ = B·n`` token groups ordered batch-major
(``index = b·n + g``, the order of :func:`~crossformer_mm.models.layers.group_partition`).
Biases and masks given per group (leading dimension ``n``) are applied to group ``g`` of every
image without being repeated over the batch: q, k, v are viewed as ``(B, n·heads, N, d)`` and
the mask as ``(1, n·heads, N, N)``.
"""
from typing import Callable, Optional, Tuple

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
        attn_bias: Additive bias, ``(N, N)``, ``(heads, N, N)`` or ``(n, heads, N, N)``.
        attn_mask: Per-group mask ``(n, N, N)`` or ``(N, N)``: bool (True = the query may NOT
            attend that key) or float (added as it is), e.g. Swin's shifted-window mask.
        key_padding_mask: Bool ``(n, N)`` or ``(N,)``, True at keys to ignore (padding).

    Returns:
        ``None`` if nothing is given, else a 4-D float tensor ``(n, heads or 1, N, N)`` (the
        leading ``n`` is 1 when nothing depends on the group).

    Raises:
        TypeError: for a ``key_padding_mask`` that is not bool.
        ValueError: for shapes that do not broadcast to ``(n, heads, N, N)``.
    """
    neg = mask_value(dtype)
    parts = []
    if attn_bias is not None:
        bias = attn_bias.to(dtype)
        while bias.ndim < 4:
            bias = bias.unsqueeze(0)
        parts.append(('attn_bias', attn_bias, bias))
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(m, neg)
        parts.append(('attn_mask', attn_mask, m.to(dtype).reshape(-1, 1, *m.shape[-2:])))
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f'key_padding_mask must be bool, got {key_padding_mask.dtype}')
        m = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
        m = m.masked_fill_(key_padding_mask, neg)
        parts.append(('key_padding_mask', key_padding_mask, m.reshape(-1, 1, 1, m.shape[-1])))
    out: Optional[Tensor] = None
    groups = 1
    for name, given, part in parts:
        n = part.shape[0]
        if (part.ndim != 4 or part.shape[1] not in (1, num_heads)
                or part.shape[2] not in (1, n_tokens) or part.shape[3] != n_tokens
                or (n != 1 and groups != 1 and n != groups)):
            raise ValueError(f'{name} of shape {tuple(given.shape)} does not broadcast to '
                             f'(n, {num_heads}, {n_tokens}, {n_tokens}) with the other '
                             f'bias/masks ({groups} groups)')
        groups = max(groups, n)
        out = part if out is None else out + part
    return out


def fold_attn_mask(q: Tensor, attn_bias: Optional[Tensor] = None,
                   attn_mask: Optional[Tensor] = None,
                   key_padding_mask: Optional[Tensor] = None,
                   bias_from_q: Optional[Callable[[Tensor], Tensor]] = None
                   ) -> Tuple[Optional[Tensor], int]:
    """The additive mask of one attention call and the group layout it needs.

    Args:
        q: Unscaled queries ``(B_, heads, N, d)``.
        attn_bias, attn_mask, key_padding_mask: See :func:`build_attn_mask`.
        bias_from_q: Optional callable mapping ``q`` to a bias ``(B_, heads, N, N)`` that
            depends on the sample (ViTDet's decomposed relative position).

    Returns:
        ``(mask, n)``: ``mask`` is None or broadcasts to ``(B_ // n, n·heads, N, N)``, the
        layout q, k and v take: ``n`` is the number of groups the mask describes (1 when it is
        shared by all groups or given per sample).

    Raises:
        ValueError: if ``B_`` is not a multiple of the groups the bias / masks describe.
    """
    b_, heads, n_tok, _ = q.shape
    mask = build_attn_mask(heads, n_tok, q.dtype, attn_bias, attn_mask, key_padding_mask)
    n = 1 if mask is None else mask.shape[0]
    if b_ % n:
        raise ValueError(f'batch of groups ({b_}) is not a multiple of the {n} groups the '
                         f'bias/mask describe')
    if bias_from_q is not None:  # one bias per sample: the plain (B_, heads) layout
        q_bias = bias_from_q(q).to(q.dtype)
        if mask is not None:
            q_bias = (q_bias.view(b_ // n, n, heads, n_tok, n_tok) + mask).view(q_bias.shape)
        return q_bias, 1
    if n > 1:
        mask = mask.expand(n, heads, n_tok, n_tok).reshape(1, n * heads, n_tok, n_tok)
    return mask, n


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
        fused_attn: ``F.scaled_dot_product_attention`` (True) or the explicit
            ``softmax(q·kᵀ·scale + bias + mask)·v`` (False); the same function.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, fused_attn: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused_attn = fused_attn
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
                e.g. ViTDet's decomposed relative position.

        Returns:
            ``(B_, N, C)``.
        """
        b_, n_tok, c = x.shape
        if c != self.dim:
            raise ValueError(f'expected {self.dim} channels, got input of shape {tuple(x.shape)}')
        qkv = self.qkv(x).reshape(b_, n_tok, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B_, heads, N, d
        mask, n = fold_attn_mask(q, attn_bias, attn_mask, key_padding_mask, bias_from_q)
        if n > 1:  # (B, n·heads, N, d), so that one per-group mask serves every image
            q, k, v = (t.reshape(b_ // n, n * self.num_heads, n_tok, self.head_dim)
                       for t in (q, k, v))

        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask,
                dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn + mask
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v

        x = x.reshape(b_, self.num_heads, n_tok, self.head_dim).transpose(1, 2)
        x = self.proj(x.reshape(b_, n_tok, c))
        return self.proj_drop(x)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, fused_attn={self.fused_attn}'


__all__ = ['Attention', 'build_attn_mask', 'fold_attn_mask', 'mask_value']
