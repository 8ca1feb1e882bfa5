"""Transformer feed-forward block (``fc1 → act → drop → fc2 → drop``), timm/Swin layout."""
from typing import Callable, Optional

from torch import Tensor, nn


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

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


__all__ = ['Mlp']
