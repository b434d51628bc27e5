"""Bias-free norms with eps 1e-6, as the MetaFormer baselines (PoolFormerV2, ConvFormer, CAFormer) use.

timm.layers has the biased versions (GroupNorm1, LayerNorm2d, LayerNorm); the official
MetaFormer baselines drop the bias term and use eps=1e-6, so checkpoints carry only `.weight`.
"""
from timm.layers import GroupNorm1, LayerNorm, LayerNorm2d

__all__ = ["GroupNorm1NoBias", "LayerNorm2dNoBias", "LayerNormNoBias"]


class GroupNorm1NoBias(GroupNorm1):
    """Normalise over (C, H, W) of an NCHW tensor, per-channel weight, no bias."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)
        self.register_parameter("bias", None)


class LayerNorm2dNoBias(LayerNorm2d):
    """LayerNorm over the channels of an NCHW tensor, weight only."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps, bias=False)


class LayerNormNoBias(LayerNorm):
    """LayerNorm over the last dim (channels-last / token tensors), weight only."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps, bias=False)
