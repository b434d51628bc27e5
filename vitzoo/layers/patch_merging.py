"""Swin's PatchMerging: halve an NHWC map by concatenating each 2x2 neighbourhood.

`[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), out_dim]`: odd sizes are zero-padded at the bottom /
right (as timm does), the four neighbours are concatenated along channels in the official order
x0 = (0, 0), x1 = (1, 0), x2 = (0, 1), x3 = (1, 1) (row offset first), then LayerNorm(4C) and a
bias-free Linear(4C, out_dim). Parameter names `norm` and `reduction` are timm's and the official
repository's, so Swin (and NAT-style) checkpoints load without renaming these weights.
"""

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function


@register_notrace_function  # reason: pads only odd sizes, a branch on the map size (FX leaf)
def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad an NHWC map at the bottom / right to even height and width (unchanged if even)."""
    H, W = x.shape[1], x.shape[2]
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    return x


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> norm(4C) -> Linear(4C, out_dim, bias=False), on NHWC maps.

    Args:
        dim: input channels C.
        out_dim: output channels (default 2 * dim).
        norm_layer: callable `channels -> module` normalising the last dim (default nn.LayerNorm).
    """

    def __init__(
            self,
            dim: int,
            out_dim: int | None = None,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_even(x)
        B, H, W, C = x.shape
        # [B, H/2, dh, W/2, dw, C] -> [B, H/2, W/2, dw, dh, C]: channel blocks x0, x1, x2, x3
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, out_dim={self.out_dim}"
