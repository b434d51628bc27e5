"""Isotropic NAT / DiNAT: a ViT-like single-resolution stack of neighborhood-attention blocks.

From "Dilated Neighborhood Attention Transformer" (https://arxiv.org/abs/2209.15001), official
code `classification/isotropic.py` in https://github.com/SHI-Labs/Neighborhood-Attention-Transformer:
16x16 patchify + LayerNorm -> 12 blocks on the NHWC 14x14 map (no class token, no position
embedding: the relative position bias is the only position signal) -> LayerNorm -> avg pool ->
Linear. DiNAT-iso alternates dilation 1 and 2 (a 7x7 neighbourhood at dilation 2 spans 14x14).

Each block is its own one-block `Stage` so the hierarchical base's contract (feature_info per
block, forward_intermediates over blocks, pruning, grad checkpointing) works unchanged; the
checkpoint filter maps the official `layers.i` onto `stages.i.blocks.0`.

Input sizes: any image of at least 16x16. The official code has no dense backbone for these
models; they take other sizes the way DiNAT-s' and Swin's official dense backbones do: the image
is zero-padded at the bottom / right to a multiple of the patch size (a ceil(H/16) x ceil(W/16)
map), and maps smaller than `kernel_size * dilation` are padded inside the attention.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn as nn
from timm.layers import ClassifierHead
from timm.models import generate_default_cfgs

from vitzoo.layers import ConvStem, Stage

from ._base import HierarchicalBackbone, build_zoo_model, unwrap_state_dict
from ._registry import register_model
from ._init import init_linear_layernorm
from .nat import _cfg, _rename_block, nat_block

__all__ = ["NATIsotropic", "checkpoint_filter_fn"]


class NATIsotropic(HierarchicalBackbone):
    """patch embed -> `depth` NA blocks (dilation 1, `dilation`, 1, ...) at one resolution -> norm -> head."""

    output_fmt = "NHWC"
    no_weight_decay_keys = ("rpb",)
    min_input_size = 16

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            patch_size: int = 16,
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 12,
            kernel_size: int = 7,
            dilation: int = 1,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.stem = ConvStem(in_chans, [embed_dim], kernel_size=patch_size, stride=patch_size, padding=0,
                             norm=norm_layer, layout="NHWC", pad_input=True)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.stages = nn.Sequential(*[
            Stage([nat_block(embed_dim, num_heads, kernel_size, 1 if i % 2 == 0 else dilation, mlp_ratio,
                             qkv_bias, qk_scale, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                             drop_path=dpr[i], norm_layer=norm_layer, act_layer=act_layer)])
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.head = ClassifierHead(embed_dim, num_classes, global_pool, drop_rate=drop_rate, input_fmt="NHWC")
        self.init_contract(in_chans=in_chans, num_classes=num_classes, global_pool=global_pool,
                           dims=[embed_dim] * depth, reductions=[patch_size] * depth)
        self.input_divisor = 1  # any size: the image is padded to a multiple of the patch
        self.min_input_size = patch_size
        self.apply(init_linear_layernorm)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official isotropic keys -> ours: `patch_embed.proj` -> `stem.proj.0`, `patch_embed.norm` -> `stem.norm`,
    `layers.i.*` -> `stages.i.blocks.0.*` (`attn` -> `token_mixer`), `head` -> `head.fc`."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith("stages.") for k in state_dict):
        return state_dict
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^patch_embed\.proj\.", "stem.proj.0.", k)
        k = re.sub(r"^patch_embed\.norm\.", "stem.norm.", k)
        k = re.sub(r"^layers\.(\d+)\.", r"stages.\1.blocks.0.", k)
        k = re.sub(r"^head\.", "head.fc.", _rename_block(k))
        out[k] = v
    return out


def _create_nat_isotropic(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> NATIsotropic:
    """Build `variant` with its official `model_args`, overridden by the caller's `kwargs`."""
    return build_zoo_model(NATIsotropic, variant, pretrained, filter_fn=checkpoint_filter_fn,
                           default_out_indices=3, **dict(model_args, **kwargs))


_URL = "https://shi-labs.com/projects/dinat/checkpoints/isotropic/"
_ISO = dict(pool_size=(14, 14), paper_ids="arXiv:2209.15001")

default_cfgs = generate_default_cfgs({
    "vitzoo_nat_isotropic_small.in1k": _cfg(_URL + "nat_isotropic_small_in1k_224.pth", **_ISO),
    "vitzoo_dinat_isotropic_small.in1k": _cfg(_URL + "dinat_isotropic_small_in1k_224.pth", **_ISO),
    "vitzoo_nat_isotropic_base.in1k": _cfg(_URL + "nat_isotropic_base_in1k_224.pth", **_ISO),
    "vitzoo_dinat_isotropic_base.in1k": _cfg(_URL + "dinat_isotropic_base_in1k_224.pth", **_ISO),
})

# official: small 384 wide, 12 heads; base 768 wide, 24 heads; 12 blocks, mlp_ratio 4, kernel 7
_SMALL = dict(embed_dim=384, depth=12, num_heads=12, drop_path_rate=0.1)
_BASE = dict(embed_dim=768, depth=12, num_heads=24, drop_path_rate=0.4)


@register_model
def vitzoo_nat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _create_nat_isotropic("vitzoo_nat_isotropic_small", pretrained, dict(_SMALL, dilation=1), **kwargs)


@register_model
def vitzoo_dinat_isotropic_small(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _create_nat_isotropic("vitzoo_dinat_isotropic_small", pretrained, dict(_SMALL, dilation=2), **kwargs)


@register_model
def vitzoo_nat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _create_nat_isotropic("vitzoo_nat_isotropic_base", pretrained, dict(_BASE, dilation=1), **kwargs)


@register_model
def vitzoo_dinat_isotropic_base(pretrained: bool = False, **kwargs: Any) -> NATIsotropic:
    return _create_nat_isotropic("vitzoo_dinat_isotropic_base", pretrained, dict(_BASE, dilation=2), **kwargs)
