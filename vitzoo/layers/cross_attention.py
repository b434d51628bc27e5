"""CLS-token cross-attention: one token queries a sequence (CrossViT's branch fusion).

In CrossViT (Chen et al., ICCV 2021) each branch's CLS token, projected to the other branch's
width, is put in front of the other branch's patch tokens; only that CLS token forms a query, so
the fusion costs O(N) rather than O(N^2). Parameter names (`wq`, `wk`, `wv`, `proj`, `norm1`,
`attn`) follow the official code and timm.
"""
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath


class CrossAttention(nn.Module):
    """`[B, N, C] -> [B, 1, C]`: the first token attends to all N tokens (itself included)."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        q = self._heads(self.wq(x[:, :1]))
        k, v = self._heads(self.wk(x)), self._heads(self.wv(x))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, 1, C)))


class CrossAttentionBlock(nn.Module):
    """`cls + drop_path(cross_attn(norm(tokens)))`: returns the updated first token only, `[B, 1, C]`."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            qkv_bias: bool = False,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.drop_path(self.attn(self.norm1(x)))
