"""The MetaFormer classifier head: global pool -> norm -> [MLP hidden layer] -> fc.

PoolFormer's head is `pool -> LayerNorm -> Linear`; ConvFormer/CAFormer add a hidden layer
`fc1 -> SquaredReLU -> LayerNorm` (4x wide) before the classifier. The hidden layer is the
head's `pre_logits`, so `forward(x, pre_logits=True)` returns it, `head_hidden_size` is its
width, and `reset(num_classes)` swaps only `fc` (like timm's NormMlpClassifierHead).
"""
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn as nn
from timm.layers import LayerNorm, LayerNorm2d, SelectAdaptivePool2d

__all__ = ["MetaFormerHead", "SquaredReLU"]


class SquaredReLU(nn.Module):
    """`relu(x) ** 2` (Primer, https://arxiv.org/abs/2109.08668)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(torch.relu(x))


class MetaFormerHead(nn.Module):
    """`[B, C, H, W]` -> pool -> norm (NCHW LayerNorm on the pooled map) -> flatten -> [hidden] -> fc, dropout
    before the hidden layer (timm) or after it (official MetaFormer, `drop_after_hidden`).

    Args:
        in_features: channels of the feature map.
        num_classes: classifier outputs (0: `fc` is an identity).
        pool_type: timm global pool name ('avg', 'max', ...); '' keeps the map (only with num_classes=0).
        hidden_size: width of the MLP hidden layer; None for a plain linear classifier.
        drop_rate: dropout before the hidden layer (timm's place) or, with `drop_after_hidden`,
            between the hidden layer and the classifier (the official MetaFormer `MlpHead`'s place).
        drop_after_hidden: put the dropout after the hidden layer (only matters with `hidden_size`).
        norm_layer: norm applied after pooling, on `[B, C, 1, 1]`.
        act_layer: activation of the hidden layer.
    """

    def __init__(
            self,
            in_features: int,
            num_classes: int,
            pool_type: str = "avg",
            hidden_size: int | None = None,
            drop_rate: float = 0.0,
            norm_layer: Callable[[int], nn.Module] = LayerNorm2d,
            act_layer: Callable[[], nn.Module] = SquaredReLU,
            drop_after_hidden: bool = False,
    ) -> None:
        super().__init__()
        self.drop_after_hidden = drop_after_hidden
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.num_features = hidden_size or in_features
        self.classifier_pool = pool_type or "avg"  # the pool a classifier comes back with after an unpooled head
        self._set_pool(pool_type, num_classes)
        self.norm = norm_layer(in_features)
        self.drop = nn.Dropout(drop_rate)
        if hidden_size:
            self.pre_logits = nn.Sequential(OrderedDict([
                ("fc1", nn.Linear(in_features, hidden_size)),
                ("act", act_layer()),
                ("norm", LayerNorm(hidden_size)),
            ]))
        else:
            self.pre_logits = nn.Identity()
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _set_pool(self, pool_type: str, num_classes: int) -> None:
        if not pool_type and num_classes > 0:
            raise ValueError("the MetaFormer head classifies pooled features: give a global_pool "
                             f"(e.g. 'avg') or num_classes=0, got global_pool={pool_type!r}")
        pool = SelectAdaptivePool2d(pool_type=pool_type)
        if pool.feat_mult() != 1:
            raise ValueError(f"global_pool {pool_type!r} changes the feature width; use 'avg' or 'max'")
        self.global_pool = pool
        self.flatten = nn.Flatten(1) if pool_type else nn.Identity()
        if pool_type:
            self.classifier_pool = pool_type

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        """New `fc` with `num_classes` outputs (and pool if given); the norm and hidden layer are kept.

        Without `pool_type` the pool is kept; a classifier on an unpooled head gets its last pool back.
        """
        if pool_type is None:
            pool_type = self.global_pool.pool_type or (self.classifier_pool if num_classes > 0 else "")
        self._set_pool(pool_type, num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def prune(self, in_features: int) -> None:
        """Drop the norm and hidden layer (timm's `reset_other`): the head then pools `in_features` channels.

        A pruned model (a feature extractor, or one cut at an earlier stage) has no use for them: they
        are sized for the last stage and would take no gradient. `reset` then builds `fc` on the pool.
        """
        self.norm = nn.Identity()
        self.pre_logits = nn.Identity()
        self.in_features = self.num_features = in_features
        self.hidden_size = None

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.norm(x)
        if self.global_pool.is_identity():
            return x  # an unpooled map: normed, not projected
        x = self.flatten(x)
        if self.drop_after_hidden:  # official: fc1 -> act -> norm -> drop -> fc
            x = self.drop(self.pre_logits(x))
        else:  # timm: drop -> fc1 -> act -> norm -> fc
            x = self.pre_logits(self.drop(x))
        return x if pre_logits else self.fc(x)
