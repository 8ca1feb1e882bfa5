"""Swin patch merging: 2×2 space-to-depth, LayerNorm over ``4C``, Linear ``4C → 2C``.

Liu et al., ICCV 2021 (official code microsoft/Swin-Transformer). Unlike
:class:`~crossformer_mm.models.layers.CrossScalePatchMerging` (norm over ``C`` first, then strided
convolutions) the norm here acts on the concatenated ``4C`` channels, so it cannot be written as a
convolution. The four neighbours are concatenated in the official order
``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]`` (``(dh, dw)`` = (0,0), (1,0), (0,1),
(1,1)), so official and timm checkpoints load as they are; MMDetection/MMPretrain order the channels
as ``nn.Unfold`` does (``c·4 + dh·2 + dw``) and their weights are permuted by the Swin converter.
An odd map is zero-padded at the bottom/right first, as MMDetection does.
"""
from typing import Callable, Optional

from torch import Tensor, nn

from .partition import pad_to_multiple


class PatchMerging(nn.Module):
    """Downsample a channels-last map ``(B, H, W, C)`` by 2: ``(B, ⌈H/2⌉, ⌈W/2⌉, out_dim)``.

    Parameters ``norm.*`` and ``reduction.weight`` (no bias), the official names.

    Args:
        dim: Input channels ``C``.
        out_dim: Output channels (default ``2·C``).
        norm_layer: Norm over the ``4C`` concatenated channels, or None.
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.LayerNorm) -> None:
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.norm = norm_layer(4 * dim) if norm_layer is not None else None
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-1] != self.dim:
            raise ValueError(f'expected a (B, H, W, {self.dim}) map, got {tuple(x.shape)}')
        x, _ = pad_to_multiple(x, 2, channels_last=True)
        b, h, w, c = x.shape
        # (B, H/2, dh, W/2, dw, C) -> (B, H/2, W/2, dw, dh, C): channel index (dw·2 + dh)·C + c
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(
            b, h // 2, w // 2, 4 * c)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, out_dim={self.out_dim}'


__all__ = ['PatchMerging']
