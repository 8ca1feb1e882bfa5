"""Patch embedding and patch merging with one or several kernel sizes.

CrossFormer's cross-scale embedding layer (CEL, Wang et al., ICLR 2022) samples every patch with
several convolutions of different kernel sizes but one stride and concatenates their outputs; a
single kernel equal to the stride is the plain ViT/Swin patch embedding, so the same classes serve
all backbones of the package.

Inputs of any size are accepted: the map is zero-padded at the bottom/right to a multiple of the
stride first, so the output is ``ceil(H / stride) × ceil(W / stride)``. The padding is the same as
the zero padding of the convolutions themselves, so an image whose size is already a multiple of
the stride gives exactly the official result.

Outputs are channels-last ``(B, H', W', C)`` maps.

A kernel at least four times its stride (CEL's 16 and 32 at stride 4) is computed as a stride-1
convolution of the space-to-depth map: :func:`strided_conv_as_s2d`. It is the same sum, reordered,
with the same parameters; CPU convolution kernels handle a large kernel over three image channels
at a large stride far worse than the equivalent small kernel over ``3·s²`` channels, and this one
convolution was the largest part of the demo detector's training step.
"""
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .partition import pad_to_multiple


def split_channels(total: int, num_kernels: int) -> List[int]:
    """CrossFormer's channel split over kernels: halves, the last one taking the remainder share.

    ``96`` over 4 kernels → ``[48, 24, 12, 12]``; one kernel → ``[total]``.
    """
    return [total // 2 ** (i + 1) if i < num_kernels - 1 else total // 2 ** i
            for i in range(num_kernels)]


def strided_conv_as_s2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` for a square kernel ``k`` divisible by the stride ``s``, padding ``(k − s) / 2``:
    pad, ``pixel_unshuffle`` input and weight by ``s``, then a ``k/s`` kernel at stride 1.

    ``pixel_unshuffle`` orders channels ``(c, i, j)`` for both, so input channel ``c`` at offset
    ``(i, j)`` inside an ``s×s`` cell meets the weight tap of the same ``c`` and offset.
    """
    s, p = conv.stride[0], conv.padding[0]
    x = F.pixel_unshuffle(F.pad(x, (p, p, p, p)), s)
    return F.conv2d(x, F.pixel_unshuffle(conv.weight, s), conv.bias)


def _uses_s2d(conv: nn.Conv2d) -> bool:
    k, s = conv.kernel_size[0], conv.stride[0]
    return k >= 4 * s and k % s == 0 and conv.padding[0] * 2 == k - s


class _MultiKernelConv(nn.Module):
    """Convolutions with several kernel sizes, one stride, outputs concatenated along channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int],
                 stride: int) -> None:
        super().__init__()
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if not kernel_sizes:
            raise ValueError('kernel_sizes must not be empty')
        for k in kernel_sizes:
            if k < stride or (k - stride) % 2:
                raise ValueError(f'kernel_sizes must be >= stride ({stride}) and differ from it by '
                                 f'an even number, got {kernel_sizes}')
        self.kernel_sizes = kernel_sizes
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.split = split_channels(out_channels, len(kernel_sizes))

    def _make_convs(self, bias: bool = True) -> nn.ModuleList:
        return nn.ModuleList(
            nn.Conv2d(self.in_channels, c, kernel_size=k, stride=self.stride,
                      padding=(k - self.stride) // 2, bias=bias)
            for k, c in zip(self.kernel_sizes, self.split))

    @staticmethod
    def _run_convs(convs: nn.ModuleList, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` padded map → channels-last ``(B, H/s, W/s, out)``."""
        outs = [strided_conv_as_s2d(conv, x) if _uses_s2d(conv) else conv(x) for conv in convs]
        return torch.cat(outs, dim=1).permute(0, 2, 3, 1)


class CrossScaleEmbed(_MultiKernelConv):
    """Image → patch tokens with one or several kernel sizes (CrossFormer CEL / plain patch embed).

    Parameters are ``projs.{i}.*`` (one Conv2d per kernel) and ``norm.*``, the official names.

    Args:
        in_channels: Image channels.
        embed_dim: Output channels (split over kernels with :func:`split_channels`).
        kernel_sizes: Kernel sizes, e.g. ``(4, 8, 16, 32)``; ``(patch_size,)`` for ViT/Swin.
        stride: Patch size (stride of every conv); padding is ``(k − stride) / 2``.
        norm_layer: Norm class applied to the concatenated tokens, or None.
        bias: Biases in the convolutions.
    """

    def __init__(self, in_channels: int = 3, embed_dim: int = 96,
                 kernel_sizes: Sequence[int] = (4, 8, 16, 32), stride: int = 4,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.LayerNorm,
                 bias: bool = True) -> None:
        super().__init__(in_channels, embed_dim, kernel_sizes, stride)
        self.embed_dim = embed_dim
        self.projs = self._make_convs(bias)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` → ``(B, ceil(H/s), ceil(W/s), embed_dim)``."""
        if x.ndim != 4:
            raise ValueError(f'expected a 4-D (B, C, H, W) image batch, got shape '
                             f'{tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'in_channels={self.in_channels} but the input has {x.shape[1]} '
                             f'channels (shape {tuple(x.shape)})')
        x, _ = pad_to_multiple(x, self.stride, channels_last=False)
        x = self._run_convs(self.projs, x)
        return self.norm(x) if self.norm is not None else x


class CrossScalePatchMerging(_MultiKernelConv):
    """Downsample a token map by ``stride`` with one or several kernel sizes (CrossFormer merge).

    ``norm`` first (over ``dim`` channels), then the convolutions (``reductions.{i}``, the official
    names) producing ``out_dim`` channels in total. An odd map is zero-padded after the norm, like
    the convolutions' own zero padding.

    Args:
        dim: Input channels.
        out_dim: Output channels (default ``2·dim``).
        kernel_sizes: Kernel sizes; CrossFormer uses ``(2, 4)``.
        stride: Downsampling factor.
        norm_layer: Norm class applied before the convolutions, or None.
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None,
                 kernel_sizes: Sequence[int] = (2, 4), stride: int = 2,
                 norm_layer: Optional[Callable[[int], nn.Module]] = nn.LayerNorm) -> None:
        super().__init__(dim, out_dim or 2 * dim, kernel_sizes, stride)
        self.dim = dim
        self.norm = norm_layer(dim) if norm_layer is not None else None
        self.reductions = self._make_convs()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, dim)`` → ``(B, ceil(H/s), ceil(W/s), out_dim)``."""
        if self.norm is not None:
            x = self.norm(x)
        x, _ = pad_to_multiple(x, self.stride, channels_last=True)
        return self._run_convs(self.reductions, x.permute(0, 3, 1, 2))


__all__ = ['CrossScaleEmbed', 'CrossScalePatchMerging', 'split_channels', 'strided_conv_as_s2d']
