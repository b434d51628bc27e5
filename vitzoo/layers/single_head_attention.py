"""SHViT's single-head self-attention (SHSA) on a partial set of channels.

Only the first `pdim` channels are attended over (one head, GroupNorm(1) pre-norm, 1x1 Conv-BN
qkv); the remaining channels pass through untouched and both are mixed by the output projection.
Global attention over the whole map, so any input size works and there is no position bias.
"""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import GroupNorm1

from .conv_bn import ConvBN

__all__ = ["SingleHeadAttention"]


class SingleHeadAttention(nn.Module):
    """`[B, C, H, W] -> [B, C, H, W]`: single-head attention on channels `[:pdim]`, proj over all.

    Args:
        dim: channels C.
        qk_dim: query/key channels.
        pdim: attended (partial) channels; value channels = pdim.
        norm_layer: pre-norm of the attended channels (GroupNorm with one group).
        act_layer: activation before the output projection.
    """

    def __init__(
            self,
            dim: int,
            qk_dim: int,
            pdim: int,
            norm_layer: Callable[[int], nn.Module] = GroupNorm1,
            act_layer: Callable[[], nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if not 0 < pdim <= dim:
            raise ValueError(f"partial dim must be in (0, dim={dim}], got {pdim}")
        self.dim = dim
        self.qk_dim = qk_dim
        self.pdim = pdim
        self.scale = qk_dim ** -0.5
        self.pre_norm = norm_layer(pdim)
        self.qkv = ConvBN(pdim, 2 * qk_dim + pdim)
        self.proj = nn.Sequential(act_layer(), ConvBN(dim, dim, bn_weight_init=0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        x1, x2 = x.split([self.pdim, self.dim - self.pdim], dim=1)
        q, k, v = self.qkv(self.pre_norm(x1)).split([self.qk_dim, self.qk_dim, self.pdim], dim=1)
        q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)  # [B, d, N]: channels-first matmuls, no copies
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        x1 = (v @ attn.transpose(-2, -1)).reshape(B, self.pdim, H, W)
        return self.proj(torch.cat([x1, x2], dim=1))
