"""EfficientViT's cascaded group attention (CGA) and its local-window wrapper.

CGA splits the channels into one chunk per head; head i attends over `chunk_i + output_{i-1}`
(the cascade), with its own 1x1 Conv-BN qkv, a depthwise Conv-BN on the queries and a learned
relative-offset bias (`AttentionBiasTable`). `LocalWindowAttention` runs CGA on non-overlapping
`window x window` tiles of an NCHW map, zero-padding the bottom/right edge like the official code.

Both forwards compile under TorchScript; FX treats `LocalWindowAttention` as a leaf
(`register_notrace_module`): whether and how it tiles depends on the map size.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .attention_bias import AttentionBiasTable
from .conv_bn import ConvBN

__all__ = ["CascadedGroupAttention", "LocalWindowAttention", "window_partition_nchw", "window_reverse_nchw"]


class CascadedGroupAttention(nn.Module):
    """`[B, C, r, r] -> [B, C, r, r]` for a map exactly the size of the bias window `r`.

    Args:
        dim: channels (split evenly over heads).
        key_dim: query/key channels per head.
        num_heads: heads (cascade length).
        attn_ratio: value channels per head = int(attn_ratio * key_dim).
        resolution: window side the biases are learned for.
        kernels: depthwise kernel size on the queries, per head.
    """

    def __init__(
            self,
            dim: int,
            key_dim: int,
            num_heads: int = 8,
            attn_ratio: float = 4.0,
            resolution: int = 14,
            kernels: Sequence[int] = (5, 5, 5, 5),
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if len(kernels) < num_heads:
            raise ValueError(f"need a query kernel size per head: {num_heads} heads, kernels={tuple(kernels)}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim ** -0.5
        chunk = dim // num_heads
        self.qkvs = nn.ModuleList([ConvBN(chunk, 2 * key_dim + self.val_dim) for _ in range(num_heads)])
        self.dws = nn.ModuleList([
            ConvBN(key_dim, key_dim, k, 1, k // 2, groups=key_dim) for k in kernels[:num_heads]])
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(self.val_dim * num_heads, dim, bn_weight_init=0.0))
        self.attn_bias = AttentionBiasTable(num_heads, resolution)

    @property
    def resolution(self) -> int:
        return self.attn_bias.resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        bias = self.attn_bias()  # [heads, N, N]
        chunks = x.chunk(self.num_heads, dim=1)
        outs: List[torch.Tensor] = []
        feat = chunks[0]
        kd = self.key_dim
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + chunks[i]
            q, k, v = qkv(feat).split([kd, kd, self.val_dim], dim=1)
            # channels-first matmuls on the [B, d, N] maps: no transposed copies (the small
            # windows make SDPA's layout shuffles cost more than the attention itself on CPU)
            q, k, v = dw(q).flatten(2), k.flatten(2), v.flatten(2)
            attn = ((q * self.scale).transpose(-2, -1) @ k + bias[i].to(q.dtype)).softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(B, self.val_dim, H, W)
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=1))


def window_partition_nchw(x: torch.Tensor, ws: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """`[B, C, H, W] -> [B * nH * nW, C, ws, ws]`, zero-padding bottom/right; returns the padded (H, W)."""
    B, C, H, W = x.shape
    pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b))
    pH, pW = H + pad_b, W + pad_r
    x = x.view(B, C, pH // ws, ws, pW // ws, ws).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, C, ws, ws), (pH, pW)


def window_reverse_nchw(x: torch.Tensor, ws: int, padded: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition_nchw`, cropping the padding away: `[B, C, H, W]`."""
    pH, pW = padded
    nH, nW = pH // ws, pW // ws
    C = x.shape[1]
    x = x.view(-1, nH, nW, C, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(-1, C, pH, pW)
    return x[:, :, :size[0], :size[1]].contiguous()


@register_notrace_module  # reason: tiling (and padding) depends on the map size
class LocalWindowAttention(nn.Module):
    """Cascaded group attention within `window_resolution` tiles of an NCHW map of any size.

    The bias window is `min(window_resolution, resolution)` (a feature map smaller than the
    window gets a smaller window), exactly as the official model and timm build it.
    """

    def __init__(
            self,
            dim: int,
            key_dim: int,
            num_heads: int = 8,
            attn_ratio: float = 4.0,
            resolution: int = 14,
            window_resolution: int = 7,
            kernels: Sequence[int] = (5, 5, 5, 5),
    ) -> None:
        super().__init__()
        if window_resolution < 1:
            raise ValueError(f"window_resolution must be >= 1, got {window_resolution}")
        self.window_resolution = window_resolution
        self.resolution = resolution
        self.cga = CascadedGroupAttention(
            dim, key_dim, num_heads, attn_ratio=attn_ratio,
            resolution=min(window_resolution, resolution), kernels=kernels)

    def set_input_size(self, resolution: int) -> None:
        """New feature-map resolution: the bias window follows `min(window_resolution, resolution)`."""
        self.resolution = resolution
        self.cga.attn_bias.set_resolution(min(self.window_resolution, resolution))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2], x.shape[-1]
        ws = self.cga.attn_bias.resolution
        if H == ws and W == ws:
            return self.cga(x)
        windows, padded = window_partition_nchw(x, ws)
        return window_reverse_nchw(self.cga(windows), ws, padded, (H, W))
