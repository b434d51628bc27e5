"""Neighborhood attention (NAT / DiNAT) as a token mixer on NHWC feature maps.

A thin module around the `vitzoo.kernels.na2d` op, with the official NATTEN module's parameters
(`qkv`, `rpb`, `proj`) so official checkpoints load by renaming the module only. Each query
attends to its `kernel_size x kernel_size` neighbours, taken every `dilation` pixels (DiNAT).

Maps smaller than `kernel_size * dilation` along an axis (late stages of small inputs) are
handled as NATTEN's `NeighborhoodAttention2D` does: the *input* is zero-padded at the bottom /
right up to that size, attention runs on the padded map (the padded tokens take part as keys,
their q/k/v being the qkv bias), and the output is cropped back.

TorchScript compiles the forward, calling the registered op `torch.ops.vitzoo.na2d` directly (the
python wrapper's argument checks are not scriptable; the padding above already guarantees them).
FX treats the module as a leaf (`register_notrace_module`): its padding depends on the map size.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_

from vitzoo.kernels import na2d

__all__ = ["NeighborhoodAttention2D"]


@register_notrace_module  # reason: padding of small maps depends on the map size; na2d checks shapes
class NeighborhoodAttention2D(nn.Module):
    """`[B, H, W, dim] -> [B, H, W, dim]`: qkv Linear -> na2d (+ relative position bias) -> proj.

    Args:
        dim: channels; must be divisible by `num_heads`.
        num_heads: attention heads.
        kernel_size: odd neighbourhood size per axis.
        dilation: gap between neighbours (1: plain NA, >1: dilated NA).
        qkv_bias: bias on the qkv projection.
        qk_scale: logit scale (default `head_dim ** -0.5`).
        attn_drop: must be 0: the fused op has no attention-weight dropout (no official model uses it).
        proj_drop: dropout after the output projection.
        rel_pos_bias: learn the `[heads, 2k-1, 2k-1]` bias table `rpb`.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            rel_pos_bias: bool = True,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        if attn_drop:
            raise ValueError(
                f"attn_drop={attn_drop}: neighborhood attention runs as one fused op without "
                "attention-weight dropout; use proj_drop / drop_path instead")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = float(qk_scale or self.head_dim ** -0.5)
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.window_size = kernel_size * dilation  # smallest map side na2d accepts

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            if not self.rpb.is_meta:
                self.reset_parameters()
        else:
            self.register_parameter("rpb", None)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The relative position bias: trunc_normal(0.02) (the linears init themselves)."""
        if self.rpb is not None:
            trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if x.ndim != 4 or x.shape[-1] != self.dim:
                raise ValueError(
                    f"NeighborhoodAttention2D expects an NHWC map [B, H, W, {self.dim}], got shape {tuple(x.shape)}")
        B, H0, W0, C = x.shape
        pad_b, pad_r = max(0, self.window_size - H0), max(0, self.window_size - W0)
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        H, W = H0 + pad_b, W0 + pad_r
        # heads-last q/k/v straight from the projection: [B, H, W, 3, heads, d] -> 3 x [B, H, W, heads, d]
        q, k, v = self.qkv(x).reshape(B, H, W, 3, self.num_heads, self.head_dim).unbind(3)
        if torch.jit.is_scripting():
            ks, dil = [self.kernel_size, self.kernel_size], [self.dilation, self.dilation]
            x = torch.ops.vitzoo.na2d(q, k, v, self.rpb, ks, dil, self.scale)[0]
        else:
            x = na2d(q, k, v, self.kernel_size, self.dilation, rpb=self.rpb, scale=self.scale)
        x = x.reshape(B, H, W, C)
        if pad_b or pad_r:
            x = x[:, :H0, :W0]
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, rel_pos_bias={self.rpb is not None}")
