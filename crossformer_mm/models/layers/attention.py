"""Multi-head self-attention over token groups: a fast (fused) path and a plain explicit path.

Follows timm's ``Attention`` (``fused_attn`` switch). The explicit path (``fused=False``) is the
plain implementation, ``softmax(q·kᵀ·scale + bias + mask) · v`` with matmuls, whole tensors at
once; it is kept for checking, export and FLOP counting. The fused path computes the same
function and picks, per call:

* inference (nothing needs a gradient): slices of the groups (:mod:`.chunking`), so that the
  ``qkv`` projection and the output of only one slice exist at a time, each through the native
  group-attention kernel (:func:`crossformer_mm.ops.group_attention`, float32 CPU: q, k, v read
  in place, no ``N×N`` tensor) or else ``F.scaled_dot_product_attention``;
* training on the CPU with a position bias that needs a gradient:
  :class:`_BiasedSoftmaxAttention`, which keeps less for the backward than SDPA's CPU fallback;
* otherwise: SDPA on whole tensors, the bias and the padding / shift masks folded into one
  ``attn_mask``.

Grouped inputs: the batch of ``x`` is ``B_ = B·n`` token groups ordered batch-major
(``index = b·n + g``, the order of :func:`~crossformer_mm.models.layers.group_partition`).
Biases and masks given per group (leading dimension ``n``) are applied to group ``g`` of every
image without being repeated over the batch: q, k, v are viewed as ``(B, n·heads, N, d)`` and
the mask as ``(1, n·heads, N, N)``.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossformer_mm.ops.group_attention import group_attention, group_attention_available
from .chunking import inference_linear, needs_autograd, rows_per_chunk, tracing


#: Largest group (tokens) for which inference uses the native group-attention kernel: it is
#: 1.1-1.5x faster than SDPA's CPU kernel on 7×7 windows, on par with it at 950-token groups.
NATIVE_MAX_TOKENS = 256


def mask_value(dtype: torch.dtype) -> float:
    """Large negative value used for masked logits.

    Finite, so that a row whose keys are all masked (a padded query in an all-padding group)
    gives a uniform softmax instead of NaN, and small enough in magnitude that adding a bias
    cannot overflow.
    """
    return torch.finfo(dtype).min / 4


def _num_groups(attn_bias: Optional[Tensor], attn_mask: Optional[Tensor],
                key_padding_mask: Optional[Tensor]) -> int:
    """Number ``n`` of groups the per-group bias / masks describe (1 if none is per group)."""
    n = 1
    for t, per_group_ndim in ((attn_bias, 4), (attn_mask, 3), (key_padding_mask, 2)):
        if t is not None and t.ndim == per_group_ndim:
            n = max(n, int(t.shape[0]))
    return n


def _group_slice(t: Optional[Tensor], per_group_ndim: int, start: int,
                 stop: int) -> Optional[Tensor]:
    """Groups ``start:stop`` of a per-group bias / mask (shared ones are returned as they are)."""
    if t is None or t.ndim != per_group_ndim or t.shape[0] == 1:
        return t
    return t[start:stop]


def _bias_4d(bias: Tensor, dtype: torch.dtype) -> Tensor:
    """A bias ``(N, N)``, ``(heads, N, N)`` or ``(n, heads, N, N)`` as a 4-D tensor of ``dtype``."""
    bias = bias.to(dtype)
    while bias.ndim < 4:
        bias = bias.unsqueeze(0)
    return bias


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
        out = _bias_4d(attn_bias, dtype)
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


class _BiasedSoftmaxAttention(torch.autograd.Function):
    """``softmax(scale·q·kᵀ + bias + mask) · v`` with a gradient for the bias.

    ``q, k, v``: ``(B·n, heads, N, d)`` batch-major groups; ``bias``: ``(n | 1, heads, N, N)``
    (needs a gradient, summed over the batch in the backward); ``mask``: constant
    ``(n | 1, heads | 1, N, N)`` or None. Saves only q, k, v (views of the ``qkv`` projection,
    which the backward of any implementation keeps) and the small bias and mask: the softmax is
    recomputed in the backward instead of being stored (``heads·N²`` values per group, more than
    q, k and v together for 7×7 windows), at the cost of one more ``q·kᵀ`` and softmax. The
    backward is the softmax's: ``dS = P ⊙ (dP − rowsum(P ⊙ dP))``.
    """

    @staticmethod
    def _probs(q: Tensor, k: Tensor, bias: Tensor, mask: Optional[Tensor], scale: float,
               n: int) -> Tensor:
        b_, heads, n_tok, _ = q.shape
        s = torch.matmul(q, k.transpose(-2, -1)).view(b_ // n, n, heads, n_tok, n_tok)
        s = s.mul_(scale).add_(bias)
        if mask is not None:
            s = s.add_(mask)
        return s.view(b_, heads, n_tok, n_tok).softmax(-1)

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Optional[Tensor],
                scale: float, n: int) -> Tensor:
        p = _BiasedSoftmaxAttention._probs(q, k, bias, mask, scale, n)
        ctx.save_for_backward(q, k, v, bias, mask)
        ctx.scale, ctx.n = scale, n
        return torch.matmul(p, v)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, bias, mask = ctx.saved_tensors
        p = _BiasedSoftmaxAttention._probs(q, k, bias, mask, ctx.scale, ctx.n)
        grad_v = torch.matmul(p.transpose(-2, -1), grad_out)
        grad_s = torch.matmul(grad_out, v.transpose(-2, -1)).mul_(p)  # P ⊙ dP
        grad_s = grad_s.sub_(p.mul_(grad_s.sum(-1, keepdim=True)))
        del p
        b_, heads, n_tok, _ = q.shape
        grad_bias = grad_s.view(b_ // ctx.n, ctx.n, heads, n_tok, n_tok).sum_to_size(bias.shape)
        grad_q = torch.matmul(grad_s, k).mul_(ctx.scale)
        grad_k = torch.matmul(grad_s.transpose(-2, -1), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, grad_bias, None, None, None


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
        fused: The fast path (True: native kernel / SDPA, chunked inference, the learned-bias
            autograd function; see the module docstring) or the plain explicit
            ``softmax(q·kᵀ·scale + bias + mask)·v`` path (False). Both compute the same function.
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
        n = _num_groups(attn_bias, attn_mask, key_padding_mask)
        if b_ % n:
            raise ValueError(f'batch of groups ({b_}) is not a multiple of the {n} groups the '
                             f'bias/mask describe')
        fast = self.fused and not tracing()
        if fast and not needs_autograd(x, attn_bias, self.qkv.weight, self.proj.weight):
            # a slice takes group indices (every image's) when masks are per group, else rows
            total, images = (n, b_ // n) if n > 1 else (b_, 1)
            chunk = rows_per_chunk(total, images * n_tok * 3 * c * x.element_size()) or total
            if chunk == 0:  # no groups at all
                return self.proj(x)
            return self._forward_chunked(x, n, chunk, attn_bias, attn_mask, key_padding_mask,
                                         bias_from_q)
        if (fast and x.device.type == 'cpu' and attn_bias is not None and bias_from_q is None
                and needs_autograd(attn_bias) and not (self.training and self.attn_drop.p > 0)):
            # CUDA SDPA has fused kernels with a bias gradient; the CPU one does not
            return self._forward_learned_bias(x, n, attn_bias, attn_mask, key_padding_mask)
        mask = build_attn_mask(self.num_heads, n_tok, x.dtype, attn_bias, attn_mask,
                               key_padding_mask)
        n = 1 if mask is None else mask.shape[0]
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
        x = self._attend(q, k, v, mask)
        x = x.reshape(b_, self.num_heads, n_tok, self.head_dim).transpose(1, 2)
        x = x.reshape(b_, n_tok, c)
        return self.proj_drop(self.proj(x))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        """``softmax(q·kᵀ·scale + mask) · v`` on ``(B, H, N, d)`` tensors, fused or explicit."""
        if self.fused:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask,
                dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if mask is not None:
            attn = attn + mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        return attn @ v

    def _forward_learned_bias(self, x: Tensor, n: int, attn_bias: Tensor,
                              attn_mask: Optional[Tensor],
                              key_padding_mask: Optional[Tensor]) -> Tensor:
        """Training with a position bias that needs a gradient (Swin's table, CrossFormer's DPB).

        On the CPU, SDPA has no fused backward for a mask that requires a gradient and falls back
        to its math path, which keeps scaled copies of q and k and the softmax for the backward;
        :class:`_BiasedSoftmaxAttention` keeps none of them.
        """
        b_, n_tok, c = x.shape
        mask = build_attn_mask(self.num_heads, n_tok, x.dtype, None, attn_mask, key_padding_mask)
        bias = _bias_4d(attn_bias, x.dtype)
        if (bias.shape[1] != self.num_heads or bias.shape[-1] != n_tok
                or bias.shape[0] not in (1, n)):
            raise ValueError(f'attention bias of shape {tuple(attn_bias.shape)} does not broadcast '
                             f'to ({n}, {self.num_heads}, {n_tok}, {n_tok})')
        qkv = self.qkv(x).reshape(b_, n_tok, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B_, heads, N, d
        y = _BiasedSoftmaxAttention.apply(q, k, v, bias, mask, self.scale, n)
        y = y.transpose(1, 2).reshape(b_, n_tok, c)
        return self.proj_drop(self.proj(y))

    def _forward_chunked(self, x: Tensor, n: int, chunk: int, attn_bias: Optional[Tensor],
                         attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                         bias_from_q: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
        """Inference over slices of the groups (``chunk`` group indices of every image when the
        bias / masks are per group, else ``chunk`` rows of the batch of groups).

        Each slice runs the native group-attention kernel
        (:func:`crossformer_mm.ops.group_attention`: q, k, v read in place from the projection,
        bias and masks added per row, no ``N×N`` tensor) on float32 CPU tensors with groups of
        at most :data:`NATIVE_MAX_TOKENS` tokens, else SDPA (whose flash kernel is as fast for
        large groups).
        """
        b_, n_tok, c = x.shape
        bsz = b_ // n
        native = (group_attention_available(x) and n_tok <= NATIVE_MAX_TOKENS
                  and not (self.training and self.attn_drop.p > 0))
        out = torch.empty_like(x)
        if n > 1:  # slice the group index; every image's groups start..stop at once
            xs, outs = x.view(bsz, n, n_tok, c), out.view(bsz, n, n_tok, c)
        for start in range(0, n if n > 1 else b_, chunk):
            stop = min(start + chunk, n if n > 1 else b_)
            xc = xs[:, start:stop].reshape(-1, n_tok, c) if n > 1 else x[start:stop]
            bias, am, kpm = attn_bias, attn_mask, key_padding_mask
            if n > 1:
                bias, am, kpm = (_group_slice(attn_bias, 4, start, stop),
                                 _group_slice(attn_mask, 3, start, stop),
                                 _group_slice(key_padding_mask, 2, start, stop))
            rows = xc.shape[0]
            qkv = inference_linear(xc, self.qkv).view(rows, n_tok, 3, self.num_heads,
                                                      self.head_dim)
            if native:
                y = self._native_slice(qkv, bias, am, kpm, bias_from_q)
            else:
                y = self._sdpa_slice(qkv, bsz if n > 1 else 1, bias, am, kpm, bias_from_q)
            y = self.proj_drop(inference_linear(y.reshape(rows, n_tok, c), self.proj))
            if n > 1:
                outs[:, start:stop] = y.view(bsz, stop - start, n_tok, c)
            else:
                out[start:stop] = y
        return out

    def _native_slice(self, qkv: Tensor, bias: Optional[Tensor], attn_mask: Optional[Tensor],
                      key_padding_mask: Optional[Tensor],
                      bias_from_q: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
        """One slice through the native kernel; returns ``(rows, N, heads, d)``."""
        n_tok = qkv.shape[1]
        if bias is not None:
            bias = _bias_4d(bias, qkv.dtype)
        if bias_from_q is not None:  # one bias per row
            q_bias = bias_from_q(qkv[:, :, 0].transpose(1, 2)).to(qkv.dtype)
            if bias is not None:
                q_bias = (q_bias.view(-1, bias.shape[0], *q_bias.shape[1:]) + bias).view(
                    q_bias.shape)
            bias = q_bias
        mask = build_attn_mask(self.num_heads, n_tok, qkv.dtype, None, attn_mask,
                               key_padding_mask)
        return group_attention(qkv, bias, mask, self.scale)

    def _sdpa_slice(self, qkv: Tensor, bsz: int, bias: Optional[Tensor],
                    attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor],
                    bias_from_q: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
        """One slice through SDPA; returns ``(rows, heads, ...)`` transposed to
        ``(rows, N, heads, d)``. ``bsz`` images share the slice's per-group masks."""
        n_tok = qkv.shape[1]
        mask = build_attn_mask(self.num_heads, n_tok, qkv.dtype, bias, attn_mask,
                               key_padding_mask)
        if mask is not None and bsz > 1 and mask.shape[0] > 1:
            mask = mask.unsqueeze(0).expand(bsz, *mask.shape).reshape(-1, *mask.shape[1:])
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # rows, heads, N, d
        if bias_from_q is not None:
            q_bias = bias_from_q(q).to(qkv.dtype)
            mask = q_bias if mask is None else q_bias + mask
        return self._attend(q, k, v, mask).transpose(1, 2)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, fused={self.fused}'


__all__ = ['Attention', 'build_attn_mask', 'mask_value']
