"""BiFormer's token mixers on NHWC maps: bi-level routing attention and its last-stage full attention.

`BiLevelRoutingAttention` (Zhu et al. 2023, https://arxiv.org/abs/2303.08810; official code
rayleizhu/BiFormer `ops/bra_legacy.py`): one qkv Linear gives q | k | v; the map is cut into
`n_win x n_win` regions; the region means of q and k give a region affinity `(q_r * scale) k_r^T`
whose `topk` per query region pick the key regions every query of that region attends to
(routing is detached, the official default `diff_routing=False`); attention over the routed
tokens runs in the fused `vitzoo.kernels.routed_attention` op (it gathers the routed regions
inside the kernel, no gathered K/V tensor); then `+ lepe(v)` (a depthwise conv on v) and `wo`.
The scale is `qk_dim ** -0.5`, the *full* qk width, as in the official code (not head_dim).

Maps whose sides are not multiples of `n_win` are zero-padded at the bottom/right (on the mixer
input, so padded tokens take part with q/k/v equal to the qkv bias) and cropped after attention:
the official `auto_pad=True` behaviour that its segmentation models use. At 224 px nothing is
padded (56/28/14 are multiples of 7).

`AttentionLePE` is the official last-stage mixer (`models/_common.py`): plain multi-head
attention over the whole map (no qkv bias, 8 heads, scale head_dim ** -0.5) plus a depthwise conv
of the mixer *input* added before `proj`.

TorchScript compiles both forwards (the routed op is called through `torch.ops` when scripting);
FX treats both as leaves (the padding and the input checks read the map size).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from vitzoo.kernels import routed_attention

from .attention import Attention

__all__ = ["BiLevelRoutingAttention", "AttentionLePE", "route_regions"]


def _check_lepe(side_dwconv: int) -> None:
    if side_dwconv < 1 or side_dwconv % 2 == 0:
        raise ValueError(f"side_dwconv (the LePE kernel size) must be an odd positive int, got {side_dwconv}")


def route_regions(q: torch.Tensor, k: torch.Tensor, n_win: int, topk: int, scale: float) -> torch.Tensor:
    """The routing index `[B, n_win**2, topk]` (int64, row-major regions) from q, k `[B, H, W, C]`.

    Region means of q and k, logits `(q_r * scale) @ k_r^T`, `topk` key regions per query region.
    Detached, as the official `diff_routing=False`: no gradient flows through the routing.
    """
    B, H, W, C = q.shape
    h, w = H // n_win, W // n_win
    with torch.no_grad():
        q_r = q.detach().reshape(B, n_win, h, n_win, w, C).mean(dim=(2, 4)).reshape(B, n_win * n_win, C)
        k_r = k.detach().reshape(B, n_win, h, n_win, w, C).mean(dim=(2, 4)).reshape(B, n_win * n_win, C)
        logits = (q_r * scale) @ k_r.transpose(-1, -2)
        r_idx = torch.topk(logits, topk, dim=-1)[1]
    return r_idx


@register_notrace_module  # reason: padding to a multiple of n_win depends on the map size
class BiLevelRoutingAttention(nn.Module):
    """`[B, H, W, dim] -> [B, H, W, dim]`: qkv -> region routing -> routed attention -> + lepe(v) -> wo.

    Args:
        dim: channels (also the value width).
        num_heads: attention heads; must divide `dim` and `qk_dim`.
        n_win: regions per side (the map is cut into n_win x n_win regions).
        topk: key regions routed to every query region (1 .. n_win**2).
        qk_dim: query/key width (default `dim`).
        qk_scale: logit scale (default `qk_dim ** -0.5`, the official full-width scale).
        side_dwconv: kernel size of the LePE depthwise conv on v.
        qkv_bias: bias on the qkv projection (official: True).
        proj_drop: dropout after `wo`.

    Parameter names follow the official module (`qkv` = official `qkv.qkv`, `wo`, `lepe`).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            n_win: int = 7,
            topk: int = 4,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        qk_dim = qk_dim or dim
        if num_heads < 1 or dim % num_heads or qk_dim % num_heads:
            raise ValueError(f"dim ({dim}) and qk_dim ({qk_dim}) must be divisible by num_heads ({num_heads})")
        if n_win < 1:
            raise ValueError(f"n_win must be >= 1, got {n_win}")
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(f"topk must be in 1..n_win**2 = {n_win * n_win} regions, got {topk}")
        _check_lepe(side_dwconv)
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.scale = float(qk_scale or qk_dim ** -0.5)

        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.wo = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if x.ndim != 4 or x.shape[-1] != self.dim:
                raise ValueError(
                    f"BiLevelRoutingAttention expects an NHWC map [B, H, W, {self.dim}], got shape {tuple(x.shape)}")
        B, H0, W0, C = x.shape
        n = self.n_win
        pad_b, pad_r = (n - H0 % n) % n, (n - W0 % n) % n
        if pad_b > 0 or pad_r > 0:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        H, W = H0 + pad_b, W0 + pad_r
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        r_idx = route_regions(q, k, n, self.topk, self.scale)
        nh = self.num_heads
        q5 = q.reshape(B, H, W, nh, self.qk_dim // nh)
        k5 = k.reshape(B, H, W, nh, self.qk_dim // nh)
        v5 = v.reshape(B, H, W, nh, C // nh)
        if torch.jit.is_scripting():
            out = torch.ops.vitzoo.routed_attention(q5, k5, v5, r_idx, n, self.scale)[0]
        else:
            out = routed_attention(q5, k5, v5, r_idx, n, self.scale)
        out = out.reshape(B, H, W, C) + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if pad_b > 0 or pad_r > 0:
            out = out[:, :H0, :W0]
        return self.proj_drop(self.wo(out))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, n_win={self.n_win}, "
                f"topk={self.topk}, scale={self.scale:.4g}")


@register_notrace_module  # reason: the input check reads the map's shape
class AttentionLePE(Attention):
    """`[B, H, W, dim] -> [B, H, W, dim]`: full multi-head attention + lepe(x) before `proj` (BiFormer's last stage).

    The official `AttentionLePE`: qkv without bias by default, scale `head_dim ** -0.5`, and the
    depthwise conv applied to the mixer input (not to v, unlike the routed mixer).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
            proj_drop: float = 0.0,
    ) -> None:
        _check_lepe(side_dwconv)
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop)
        self.dim = dim
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if x.ndim != 4 or x.shape[-1] != self.dim:
                raise ValueError(f"AttentionLePE expects an NHWC map [B, H, W, {self.dim}], got shape {tuple(x.shape)}")
        B, H, W, C = x.shape
        q, k, v = self._qkv(x.reshape(B, H * W, C))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, heads, N, head_dim]
        out = out.transpose(1, 2).reshape(B, H, W, C) + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out))
