"""ConvFormer's token mixer: an inverted separable conv (MobileNetV2 style), and its StarReLU.

NCHW throughout, with the pointwise projections as 1x1 convs (the layout timm uses), so a
ConvFormer stage runs without permutes. Official checkpoints store the pointwise weights as
Linear `[out, in]`; the model's checkpoint filter reshapes them to `[out, in, 1, 1]`.
"""
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["SepConv", "StarReLU"]


class StarReLU(nn.Module):
    """`scale * relu(x) ** 2 + bias` with a learnable scalar scale and bias (MetaFormer baselines)."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0, learnable: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.scale = nn.Parameter(torch.full((1,), float(scale_value)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.full((1,), float(bias_value)), requires_grad=learnable)
        self.init_values = (float(scale_value), float(bias_value))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.scale.fill_(self.init_values[0])
        self.bias.fill_(self.init_values[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.relu(x) ** 2 + self.bias


class SepConv(nn.Module):
    """`pwconv1 (dim -> r*dim) -> act1 -> depthwise k x k -> act2 -> pwconv2 (r*dim -> dim)` on NCHW."""

    input_fmt = "NCHW"

    def __init__(
            self,
            dim: int,
            expansion_ratio: float = 2.0,
            kernel_size: int = 7,
            bias: bool = False,
            act1_layer: Callable[[], nn.Module] = StarReLU,
            act2_layer: Callable[[], nn.Module] = nn.Identity,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (it keeps H and W), got {kernel_size}")
        mid = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, mid, 1, bias=bias)
        self.act1 = act1_layer()
        self.dwconv = nn.Conv2d(mid, mid, kernel_size, padding=kernel_size // 2, groups=mid, bias=bias)
        self.act2 = act2_layer()
        self.pwconv2 = nn.Conv2d(mid, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))
        x = self.act2(self.dwconv(x))
        return self.pwconv2(x)
