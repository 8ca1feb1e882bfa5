"""Transformer feed-forward block (``fc1 → act → drop → fc2 → drop``), timm/Swin layout."""
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .chunking import inference_linear, needs_autograd, rows_per_chunk, tracing


class Mlp(nn.Module):
    """Two-layer MLP applied to the last dimension.

    Parameter names (``fc1``, ``fc2``) match timm, Swin and CrossFormer checkpoints.

    Args:
        in_features: Input channels.
        hidden_features: Hidden channels (default: ``in_features``).
        out_features: Output channels (default: ``in_features``).
        act_layer: Activation class, called without arguments.
        drop: Dropout after the activation and after ``fc2``.
        bias: Whether the two Linear layers have biases.

    Attribute ``fast`` (default True): inference (no autograd) runs over token slices with the
    activation fused into ``fc1`` (:mod:`.chunking`); False keeps the plain whole-tensor path.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, act_layer: Callable[[], nn.Module] = nn.GELU,
                 drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)
        self.fast = True

    def forward(self, x: Tensor) -> Tensor:
        if self.fast and not tracing() and not needs_autograd(x, self.fc1.weight,
                                                              self.fc2.weight):
            rows = x.numel() // x.shape[-1]
            chunk = rows_per_chunk(rows, self.fc1.out_features * x.element_size()) or rows
            if chunk:
                return self._forward_chunked(x, chunk)
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))

    def _forward_chunked(self, x: Tensor, chunk: int) -> Tensor:
        """Inference over slices of ``chunk`` tokens; the hidden activation of one slice is
        all that exists of it at a time, and the activation is fused into ``fc1`` where oneDNN
        runs it (see :mod:`.chunking`)."""
        shape = x.shape
        x2d = x.reshape(-1, shape[-1])
        out = x2d.new_empty(x2d.shape[0], self.fc2.out_features)
        for start in range(0, x2d.shape[0], chunk):
            h = self.drop(inference_linear(x2d[start:start + chunk], self.fc1, self.act))
            out[start:start + chunk] = inference_linear(h, self.fc2)
        out = out.view(*shape[:-1], self.fc2.out_features)
        return self.drop(out) if self.drop.training and self.drop.p > 0 else out


__all__ = ['Mlp']
