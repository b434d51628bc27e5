"""The generic MetaFormer block: the block is fixed, the token mixer is the variable.

norm -> token mixer -> residual -> norm -> MLP -> residual, with optional layer scale
(scales the branch) and residual scale (scales the shortcut). Swin, NAT, ViT/DeiT, PoolFormer,
ConvFormer, CAFormer, SpectFormer, ... are all this block with a different `token_mixer`.
"""

from typing import Callable

import torch
import torch.nn as nn
from timm.layers import DropPath


class Scale(nn.Module):
    """Per-channel learnable scale on the last dim, or on dim 1 of NCHW maps."""

    def __init__(self, dim: int, init_value: float = 1.0, channels_first: bool = False) -> None:
        super().__init__()
        self.channels_first = channels_first
        self.init_value = init_value
        self.scale = nn.Parameter(init_value * torch.ones(dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.constant_(self.scale, self.init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return x * self.scale.view(-1, 1, 1)
        return x * self.scale


def _maybe_scale(dim: int, init_value: float | None, channels_first: bool) -> nn.Module:
    return Scale(dim, init_value, channels_first) if init_value is not None else nn.Identity()


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)`, skipping the call of an `nn.Identity` (norms, scales and drop paths that are
    switched off): a module call costs a few microseconds of Python, as much as a small layer's
    arithmetic at batch 1 on CPU."""
    return x if type(module) is nn.Identity else module(x)


class MetaFormerBlock(nn.Module):
    """`x = rs1(x) + ls1(mixer(norm1(x)))`, `x = rs2(x) + ls2(mlp(norm2(x)))` (drop-path on branches).

    Args:
        dim: channels.
        token_mixer: module mapping a normed tensor to a tensor of the same shape.
        mlp: channel MLP module (e.g. timm.layers.Mlp); None or nn.Identity drops the MLP branch.
        norm_layer: callable `dim -> module` for both norms (ignored for a norm passed explicitly).
        drop_path: stochastic depth rate of both branches.
        layer_scale_init_value: init of the branch scales (None: no layer scale).
        res_scale_init_value: init of the shortcut scales (None: no residual scale).
        channels_first: tensors are NCHW (scales act on dim 1) rather than channels-last.
    """

    def __init__(
            self,
            dim: int,
            token_mixer: nn.Module,
            mlp: nn.Module | None,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            drop_path: float = 0.0,
            layer_scale_init_value: float | None = None,
            res_scale_init_value: float | None = None,
            channels_first: bool = False,
            norm1: nn.Module | None = None,
            norm2: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm1 if norm1 is not None else norm_layer(dim)
        self.token_mixer = token_mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.layer_scale1 = _maybe_scale(dim, layer_scale_init_value, channels_first)
        self.res_scale1 = _maybe_scale(dim, res_scale_init_value, channels_first)

        self.has_mlp = mlp is not None and not isinstance(mlp, nn.Identity)
        self.norm2 = (norm2 if norm2 is not None else norm_layer(dim)) if self.has_mlp else nn.Identity()
        self.mlp = mlp if self.has_mlp else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 and self.has_mlp else nn.Identity()
        self.layer_scale2 = _maybe_scale(dim, layer_scale_init_value, channels_first) if self.has_mlp else nn.Identity()
        self.res_scale2 = _maybe_scale(dim, res_scale_init_value, channels_first) if self.has_mlp else nn.Identity()

    def forward_mixer(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        y = _run(self.drop_path1, self.token_mixer(_run(self.norm1, x)))
        return _run(self.res_scale1, x) + _run(self.layer_scale1, y)

    def forward_mlp(self, x: torch.Tensor) -> torch.Tensor:
        if not self.has_mlp:
            return x
        if torch.jit.is_scripting():
            return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        y = _run(self.drop_path2, self.mlp(_run(self.norm2, x)))
        return _run(self.res_scale2, x) + _run(self.layer_scale2, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_mlp(self.forward_mixer(x))
