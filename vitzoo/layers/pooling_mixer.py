"""PoolFormer's token mixer: local average pooling minus the input (the block adds the input back)."""
import torch
import torch.nn as nn

__all__ = ["Pooling"]


class Pooling(nn.Module):
    """`[B, C, H, W] -> avgpool_k(x) - x`, stride 1, borders averaged over valid pixels only.

    Subtracting `x` makes the residual branch carry only what pooling changes, so with the
    MetaFormer block's shortcut the block computes `avgpool(x)` plus an MLP.
    """

    input_fmt = "NCHW"

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be a positive odd integer (it keeps H and W), got {pool_size}")
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x
