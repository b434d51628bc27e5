"""Convolutional stems and downsamplers, in either layout the families use.

A hierarchical family's stem and its between-stage downsamplers are almost always
`[norm] -> conv(k, stride, pad) -> [norm]` (MetaFormer, NAT/DiNAT, ...) or a short stack of
strided convs (NAT's tokenizer). One module each, parameterised by layout, serves them all;
the families' checkpoint filters map their official key names onto these.
"""

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

NormFactory = Callable[[int], nn.Module]


def _check_layout(layout: str) -> str:
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


@register_notrace_function  # reason: pads only sizes that are not multiples, a branch on the size (FX leaf)
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW image at the bottom / right to height and width multiples of `multiple`
    (unchanged when they are): what the official dense backbones' patch embeddings do."""
    H, W = x.shape[-2], x.shape[-1]
    pad_h, pad_w = (multiple - H % multiple) % multiple, (multiple - W % multiple) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


class ConvNormDownsample(nn.Module):
    """`pre_norm -> conv(kernel_size, stride, padding) -> post_norm`.

    Input and output are in `layout`; the norms act in that layout (so pass nn.LayerNorm for
    NHWC, timm's LayerNorm2d/GroupNorm1 for NCHW). The conv always sees NCHW.
    """

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            stride: int = 2,
            padding: int | None = None,
            bias: bool = True,
            pre_norm: NormFactory | None = None,
            post_norm: NormFactory | None = None,
            layout: str = "NCHW",
            in_layout: str | None = None,
    ) -> None:
        super().__init__()
        self.layout = _check_layout(layout)
        self.in_layout = _check_layout(in_layout or layout)
        self.pre_norm = pre_norm(in_chs) if pre_norm is not None else nn.Identity()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, bias=bias)
        self.post_norm = post_norm(out_chs) if post_norm is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        if self.in_layout == "NHWC":
            x = x.permute(0, 3, 1, 2)
        x = self.conv(x)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return self.post_norm(x)


class ConvStem(nn.Module):
    """A stack of strided convs on an NCHW image (optional activation between), then a norm.

    `channels` lists the output channels of each conv; each conv has `kernel_size`, `stride`
    and padding `kernel_size // 2`. The output is in `layout`, normed by `norm` in that layout.
    `pad_input=True` first zero-pads the image at the bottom / right to a multiple of the total
    stride (a patchify stem then sees every pixel, as the official dense backbones' PatchEmbed).
    """

    def __init__(
            self,
            in_chs: int,
            channels: Sequence[int],
            kernel_size: int = 3,
            stride: int = 2,
            padding: int | None = None,
            act_layer: Callable[[], nn.Module] | None = None,
            norm: NormFactory | None = None,
            layout: str = "NHWC",
            pad_input: bool = False,
    ) -> None:
        super().__init__()
        self.layout = _check_layout(layout)
        self.pad_input = pad_input
        padding = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = []
        prev = in_chs
        for i, c in enumerate(channels):
            if i and act_layer is not None:
                layers.append(act_layer())
            layers.append(nn.Conv2d(prev, c, kernel_size, stride=stride, padding=padding))
            prev = c
        self.proj = nn.Sequential(*layers)
        self.norm = norm(prev) if norm is not None else nn.Identity()
        self.reduction = stride ** len(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_input:
            x = pad_to_multiple(x, self.reduction)
        x = self.proj(x)
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return self.norm(x)
