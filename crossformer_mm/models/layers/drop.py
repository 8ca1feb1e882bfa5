"""Stochastic depth (drop path), as in timm's ``timm.layers.drop`` (Huang et al., 2016)."""
from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False,
              scale_by_keep: bool = True) -> Tensor:
    """Drop whole samples of a residual branch with probability ``drop_prob``.

    Args:
        x: Branch output, any shape whose first dimension is the batch.
        drop_prob: Probability of zeroing a sample's branch.
        training: Only active in training mode.
        scale_by_keep: Divide the kept samples by ``1 - drop_prob`` (keeps the expectation).

    Returns:
        Tensor of the shape of ``x``.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    if keep > 0.0 and scale_by_keep:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """Module form of :func:`drop_path`.

    Args:
        drop_prob: Probability of dropping a sample's residual branch; must lie in [0, 1).
        scale_by_keep: Divide kept samples by the keep probability.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


__all__ = ['drop_path', 'DropPath']
