"""Conv-BN and BN-Linear blocks that fold into one plain Conv2d / Linear for inference.

EfficientViT (MSRA), SHViT and LeViT-like models train with a BatchNorm after (or, in the head,
before) every linear map and fold it away at deployment. `ConvBN.fuse()` / `BNLinear.fuse()`
return the equivalent plain layer; `fuse_modules(model)` replaces every fusable child in place.

Also here, because both families build their macro structure from nothing but Conv-BN pieces:
the 4-conv stem, the Conv-BN MLP (1x1 -> act -> 1x1), the inverted-residual patch merging and the
BN-Linear classifier head with timm's `reset` / `.fc` / `pre_logits` contract.
Forwards compile under TorchScript (no postponed annotations in this module).
"""
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d, SqueezeExcite, trunc_normal_

from .metaformer_block import MetaFormerBlock

__all__ = [
    "BNLinear", "BNLinearHead", "ConvBN", "ConvBNMlp", "ConvBNPatchMerging", "ConvBNStem",
    "ConvFFNPatchMerging", "conv_ffn_block", "fold_residual_into_dw_conv", "fuse_bn_linear", "fuse_conv_bn",
    "fuse_modules",
]


def _bn_scale_shift(bn: Union[nn.BatchNorm1d, nn.BatchNorm2d]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with bn(x) == x * scale + shift in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d (with bias) computing `bn(conv(x))` of the eval-mode BatchNorm."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    fused.bias.copy_(bias)
    return fused


@torch.no_grad()
def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """A Linear (with bias) computing `linear(bn(x))` of the eval-mode BatchNorm."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True,
                      device=linear.weight.device, dtype=linear.weight.dtype)
    fused.weight.copy_(linear.weight * scale[None, :])
    bias = linear.weight @ shift
    if linear.bias is not None:
        bias = bias + linear.bias
    fused.bias.copy_(bias)
    return fused


@torch.no_grad()
def fold_residual_into_dw_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """`x + conv(x)` as one conv, for a same-size depthwise conv (odd kernel, stride 1, 'same' padding)."""
    k = conv.kernel_size
    same = conv.stride == (1, 1) and k[0] % 2 == 1 and k[1] % 2 == 1 and conv.padding == (k[0] // 2, k[1] // 2)
    if not (conv.groups == conv.in_channels == conv.out_channels and same and conv.dilation == (1, 1)):
        raise ValueError(f"can only fold a residual into a same-size depthwise conv, got {conv}")
    conv.weight[:, 0, k[0] // 2, k[1] // 2] += 1.0
    return conv


class ConvBN(nn.Module):
    """`Conv2d(bias=False) -> BatchNorm2d`; `fuse()` gives the single equivalent Conv2d.

    `bn_weight_init=0` starts a residual branch at zero (the families' convention).
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 1,
            stride: int = 1,
            padding: int = 0,
            dilation: int = 1,
            groups: int = 1,
            bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.bn_weight_init = float(bn_weight_init)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BN scale `bn_weight_init`, shift 0 (also what `init_weights()` after a meta build redoes)."""
        nn.init.constant_(self.bn.weight, self.bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if torch.jit.is_scripting() or self.training or bn.running_mean is None:
            return bn(self.conv(x))
        # eval: the two ops without two more module calls (their Python overhead is as large as a
        # small conv's arithmetic at batch 1 on CPU, and these blocks hold hundreds of ConvBNs)
        conv = self.conv
        y = conv._conv_forward(x, conv.weight, conv.bias)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def fuse(self) -> nn.Conv2d:
        return fuse_conv_bn(self.conv, self.bn)


class BNLinear(nn.Module):
    """`BatchNorm1d -> Dropout -> Linear`; `fuse()` gives the single equivalent Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.fc = nn.Linear(in_features, out_features, bias=bias)
        self.std = std
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        trunc_normal_(self.fc.weight, std=self.std)
        if self.fc.bias is not None:
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x)))

    def fuse(self) -> nn.Linear:
        return fuse_bn_linear(self.norm, self.fc)


class BNLinearHead(nn.Module):
    """Classifier head: global pool -> [pre_logits] -> BatchNorm1d -> Dropout -> Linear.

    The BN-Linear classifier of EfficientViT / SHViT (timm's `NormLinear`). `reset` rebuilds it
    for a new class count or pooling; with `num_classes=0` the head is pooling only (no BN), like
    timm. With `distillation=True` a second BN-Linear (`dist`, the official `head_dist`) is added:
    outputs are averaged, or returned as a pair in training when `distilled_training` is set.
    `fuse()` folds the BN(s) into `fc` in place (both heads into one Linear) and returns the head.
    """

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0,
                 distillation: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.drop_rate = drop_rate
        self.pool_type = pool_type
        self.classifier_pool = pool_type or "avg"  # the pool a classifier comes back with after an unpooled head
        self.distillation = distillation
        self.distilled_training = False
        self._build(num_classes, pool_type)

    def _build(self, num_classes: int, pool_type: str) -> None:
        if num_classes > 0 and not pool_type:
            raise ValueError("a classifier needs pooled features: give global_pool (e.g. 'avg') or num_classes=0")
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=bool(pool_type))
        width = self.in_features * self.global_pool.feat_mult()
        self.hidden_size = width  # pre-logits width (x2 for 'catavgmax')
        if num_classes > 0:
            head = BNLinear(width, num_classes, drop=self.drop_rate)
            self.norm, self.drop, self.fc = head.norm, head.drop, head.fc
        else:
            self.norm, self.drop, self.fc = nn.Identity(), nn.Identity(), nn.Identity()
        self.dist = BNLinear(width, num_classes, drop=self.drop_rate) if self.distillation and num_classes > 0 else None

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        """New classifier; without `pool_type` the pool is kept (an unpooled head gets its last pool back)."""
        if pool_type is not None:
            self.pool_type = pool_type
        elif not self.pool_type and num_classes > 0:
            self.pool_type = self.classifier_pool
        if self.pool_type:
            self.classifier_pool = self.pool_type
        training = self.training
        self._build(num_classes, self.pool_type)
        self.train(training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False):  # -> Tensor, or a pair in distilled training
        x = self.global_pool(x)
        if pre_logits:
            return x
        out = self.fc(self.drop(self.norm(x)))
        if self.dist is None:
            return out
        out_dist = self.dist(x)
        if not torch.jit.is_scripting():  # TorchScript: always the averaged logits (one return type)
            if self.distilled_training and self.training:
                return out, out_dist
        return (out + out_dist) / 2

    @torch.no_grad()
    def fuse(self) -> "BNLinearHead":
        if isinstance(self.norm, nn.BatchNorm1d) and isinstance(self.fc, nn.Linear):
            self.fc = fuse_bn_linear(self.norm, self.fc)
            self.norm = nn.Identity()
        if self.dist is not None and isinstance(self.fc, nn.Linear):  # eval averages the heads: one Linear
            dist = self.dist.fuse()
            self.fc.weight.copy_((self.fc.weight + dist.weight) / 2)
            self.fc.bias.copy_((self.fc.bias + dist.bias) / 2)
            self.dist = None
        return self


class ConvBNMlp(nn.Module):
    """The families' FFN: 1x1 ConvBN -> act -> 1x1 ConvBN (the second starts at zero)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = ConvBN(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = ConvBN(hidden_dim, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBNStem(nn.Module):
    """Four 3x3 stride-2 ConvBNs (out/8, out/4, out/2, out channels) with activations between: /16."""

    reduction = 16

    def __init__(self, in_chs: int, out_chs: int, act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        chs = [in_chs, out_chs // 8, out_chs // 4, out_chs // 2, out_chs]
        for i in range(4):
            self.add_module(f"conv{i + 1}", ConvBN(chs[i], chs[i + 1], 3, 2, 1))
            if i < 3:
                self.add_module(f"act{i + 1}", act_layer())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.children():
            x = m(x)
        return x


class ConvBNPatchMerging(nn.Module):
    """Inverted-residual /2 downsample: 1x1 ConvBN (4x) -> act -> 3x3 s2 DW ConvBN -> act -> SE -> 1x1 ConvBN."""

    def __init__(self, dim: int, out_dim: int, act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        hidden = 4 * dim
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = act_layer()
        self.conv2 = ConvBN(hidden, hidden, 3, 2, 1, groups=hidden)
        self.act2 = act_layer()
        self.se = SqueezeExcite(hidden, 0.25)
        self.conv3 = ConvBN(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act2(self.conv2(self.act1(self.conv1(x))))))


def conv_ffn_block(
        dim: int,
        bn_weight_init: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        with_mlp: bool = True,
) -> MetaFormerBlock:
    """A MetaFormer block whose token mixer is a 3x3 depthwise ConvBN and whose MLP is `ConvBNMlp(2x)`.

    No norms (each ConvBN carries its own BatchNorm): `x + dw(x)`, then `x + ffn(x)`. With
    `with_mlp=False` it is the depthwise-conv residual alone.
    """
    return MetaFormerBlock(
        dim,
        token_mixer=ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=bn_weight_init),
        mlp=ConvBNMlp(dim, 2 * dim, act_layer) if with_mlp else None,
        norm_layer=nn.Identity,
        drop_path=drop_path,
        channels_first=True,
    )


class ConvFFNPatchMerging(nn.Sequential):
    """The EfficientViT / SHViT between-stage downsample: DW-conv+FFN, patch merging /2, DW-conv+FFN."""

    def __init__(self, dim: int, out_dim: int, act_layer: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.local0 = conv_ffn_block(dim, bn_weight_init=1.0, act_layer=act_layer)
        self.merge = ConvBNPatchMerging(dim, out_dim, act_layer)
        self.local1 = conv_ffn_block(out_dim, bn_weight_init=1.0, act_layer=act_layer)


@torch.no_grad()
def fuse_modules(module: nn.Module) -> nn.Module:
    """Replace, in place, every descendant of `module` that has a `fuse()` by what `fuse()` returns.

    Uses the BatchNorm running statistics, so outputs stay equal in eval mode; a fused model no
    longer loads unfused checkpoints. A child whose `fuse()` returns itself (a head folding in
    place) is searched further. Returns `module`.
    """
    for name, child in list(module.named_children()):
        if hasattr(child, "fuse"):
            new = child.fuse()
            if new is not child:
                setattr(module, name, new)
                continue
        fuse_modules(child)
    return module
