"""A torchvision detection backbone (feature pyramid + `out_channels`) from any timm `features_only` model.

torchvision's `MaskRCNN`, `FasterRCNN` and `RetinaNet` take any module that returns an
OrderedDict of NCHW maps and has an `out_channels` attribute. This adapter builds one from a
zoo (or timm) backbone through timm's public API only, as a user would:

    backbone = backbone_with_fpn("vitzoo_nat_mini")            # timm.create_model(..., features_only=True) + FPN
    model = torchvision.models.detection.MaskRCNN(backbone, num_classes=91)

Feature maps are read in the layout the timm model declares (`output_fmt`; timm's Swin returns
NHWC) and handed to the FPN as NCHW, keyed "0", "1", ... (the names torchvision's RoI pooling
expects by default). The input size is whatever the backbone accepts: torchvision's transform
pads batches to `size_divisible` (32 by default), and `size_divisible=1` passes odd sizes on.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import timm
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

__all__ = ["TimmBackboneWithFPN", "backbone_with_fpn", "anchor_generator"]


def _layout(body: nn.Module) -> str:
    """'NCHW' or 'NHWC': the layout a timm feature wrapper says its maps come in."""
    fmt = getattr(body, "output_fmt", "NCHW")
    fmt = str(getattr(fmt, "value", fmt))  # timm's Format enum or a plain string
    if fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"backbone output_fmt must be 'NCHW' or 'NHWC' for a detection backbone, got {fmt!r}")
    return fmt


def _extra_block(extra_blocks: str | ExtraFPNBlock | None, fpn_channels: int) -> ExtraFPNBlock | None:
    """'pool' (Faster/Mask R-CNN's P6 by max-pool), 'p6p7' (RetinaNet's two strided convs on P5), a block or None."""
    if extra_blocks is None or isinstance(extra_blocks, ExtraFPNBlock):
        return extra_blocks
    if extra_blocks == "pool":
        return LastLevelMaxPool()
    if extra_blocks == "p6p7":
        return LastLevelP6P7(fpn_channels, fpn_channels)
    raise ValueError(f"extra_blocks must be 'pool', 'p6p7', None or an ExtraFPNBlock, got {extra_blocks!r}")


class TimmBackboneWithFPN(nn.Module):
    """torchvision's BackboneWithFPN for a timm `features_only` model (`body`).

    Attributes:
        body: the timm feature model (its `feature_info` gives channels and strides).
        fpn: torchvision's FeaturePyramidNetwork over the body's maps.
        out_channels: channels of every pyramid level (what torchvision's detectors read).
        featmap_names: keys of the body's levels in the output ("0", "1", ...); the extra
            block adds "pool" or "p6", "p7" after them.
        strides: the body's reduction per level, from `feature_info`.
    """

    def __init__(
            self,
            body: nn.Module,
            fpn_channels: int = 256,
            extra_blocks: str | ExtraFPNBlock | None = "pool",
            norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        info = getattr(body, "feature_info", None)
        if info is None or not hasattr(info, "channels"):
            raise TypeError(f"body must be a timm features_only model (with feature_info), got {type(body).__name__}")
        self.body = body
        self.channels_last = _layout(body) == "NHWC"
        self.in_channels_list: list[int] = list(info.channels())
        self.strides: list[int] = list(info.reduction())
        self.featmap_names: list[str] = [str(i) for i in range(len(self.in_channels_list))]
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=self.in_channels_list,
            out_channels=fpn_channels,
            extra_blocks=_extra_block(extra_blocks, fpn_channels),
            norm_layer=norm_layer,
        )
        self.out_channels = fpn_channels

    def body_features(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """The body's maps as NCHW, keyed like `featmap_names`, checked against `feature_info`."""
        maps = self.body(x)
        if isinstance(maps, dict):
            maps = list(maps.values())
        if len(maps) != len(self.in_channels_list):
            raise RuntimeError(f"backbone returned {len(maps)} maps, its feature_info lists {len(self.in_channels_list)}")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, m, c in zip(self.featmap_names, maps, self.in_channels_list):
            if self.channels_last:
                m = m.permute(0, 3, 1, 2)
            if m.ndim != 4 or m.shape[1] != c:
                raise RuntimeError(f"backbone map {name} has shape {tuple(m.shape)} "
                                   f"({'NHWC' if self.channels_last else 'NCHW'}), expected {c} channels")
            out[name] = m
        return out

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body_features(x))


def backbone_with_fpn(
        model: str | nn.Module,
        out_indices: int | Sequence[int] | None = None,
        fpn_channels: int = 256,
        extra_blocks: str | ExtraFPNBlock | None = "pool",
        pretrained: bool = False,
        norm_layer: Callable[..., nn.Module] | None = None,
        **model_kwargs: Any,
) -> TimmBackboneWithFPN:
    """A detection backbone: `timm.create_model(model, features_only=True, ...)` under an FPN.

    Args:
        model: a timm model name (e.g. "vitzoo_swin_tiny_patch4_window7_224"), or a model
            already built with `features_only=True`.
        out_indices: the levels to take (timm's meaning: indices, or an int for the last n;
            default: the model's own, all stages of a pyramid, the last blocks of an isotropic one). RetinaNet's recipe is the last three with `extra_blocks="p6p7"`.
        fpn_channels: `out_channels` of the pyramid.
        extra_blocks: "pool" (Faster/Mask R-CNN), "p6p7" (RetinaNet), an ExtraFPNBlock or None.
        pretrained, model_kwargs: passed to `timm.create_model` (e.g. `drop_path_rate`,
            `pretrained_cfg_overlay=dict(file=...)`).
    """
    if isinstance(model, str):
        if out_indices is not None:
            model_kwargs["out_indices"] = out_indices if isinstance(out_indices, int) else tuple(out_indices)
        body = timm.create_model(model, pretrained=pretrained, features_only=True, **model_kwargs)
    else:
        if out_indices is not None or pretrained or model_kwargs:
            raise ValueError("out_indices, pretrained and model kwargs apply only when model is a name")
        body = model
    return TimmBackboneWithFPN(body, fpn_channels=fpn_channels, extra_blocks=extra_blocks, norm_layer=norm_layer)


def anchor_generator(
        backbone: TimmBackboneWithFPN,
        base_size: int = 32,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales_per_octave: int = 1,
) -> AnchorGenerator:
    """One anchor size per pyramid level (`base_size` doubling per level), for any number of levels.

    torchvision's defaults assume five levels (four stages + one extra); a three-stage backbone
    (EfficientViT, SHViT) or other `out_indices` need this generator (pass it as
    `rpn_anchor_generator=` / `anchor_generator=`). `scales_per_octave=3` gives RetinaNet's sizes.
    """
    extra = backbone.fpn.extra_blocks
    num_levels = len(backbone.featmap_names) + (2 if isinstance(extra, LastLevelP6P7) else int(extra is not None))
    sizes = tuple(tuple(int(base_size * 2 ** (level + s / scales_per_octave)) for s in range(scales_per_octave))
                  for level in range(num_levels))
    return AnchorGenerator(sizes, (tuple(aspect_ratios),) * num_levels)
