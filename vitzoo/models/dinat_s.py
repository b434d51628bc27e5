"""DiNAT-s: Swin's layout with neighborhood attention in place of (shifted) window attention.

From "Dilated Neighborhood Attention Transformer" (https://arxiv.org/abs/2209.15001), official
code `classification/dinats.py` in https://github.com/SHI-Labs/Neighborhood-Attention-Transformer:
4x4 patchify + LayerNorm, Swin-T/S/B/L depths and widths, mlp_ratio 4, no layer scale, NA where
Swin has window attention and dilated NA where Swin shifts, Swin's PatchMerging between stages.
It is the `NAT` model with `stem_type='patch'` and `downsample_type='merge'`, so it takes any
image of at least 32x32 as the official `detection/dinats.py` backbone does (see `nat.py`), and
`feature_norms=True` adds that backbone's per-output norms `norm0..norm3`.
"""
from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs

from ._base import build_zoo_model
from ._dense import backbone_state, take_feature_norms
from ._registry import register_model
from .nat import NAT, _cfg, _rename_block, dinat_dilations

__all__ = ["checkpoint_filter_fn"]


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official DiNAT-s keys (Swin-like) -> ours.

    `patch_embed.proj` / `patch_embed.norm` -> `stem.proj.0` / `stem.norm`;
    `layers.i.blocks.j.attn.*` -> `stages.i.blocks.j.token_mixer.*`;
    `layers.i.downsample.{reduction, norm}` (PatchMerging, end of level i) -> `stages.{i+1}.downsample.*`;
    `head` -> `head.fc`. Official detection / segmentation checkpoints (`detection/dinats.py`): the
    `backbone.` keys only, `norm{i}` -> `feature_norms.{i}` (the model needs `feature_norms=True`).
    A state dict already in our layout is returned unchanged.
    """
    state_dict = backbone_state(state_dict)
    if any(k.startswith("stages.") for k in state_dict):
        return state_dict
    state_dict = take_feature_norms(state_dict, r"^norm(\d+)\.", model)
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^patch_embed\.proj\.", "stem.proj.0.", k)
        k = re.sub(r"^patch_embed\.norm\.", "stem.norm.", k)
        m = re.match(r"^layers\.(\d+)\.downsample\.(.+)$", k)
        if m:
            k = f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
        k = re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", k)
        k = re.sub(r"^head\.", "head.fc.", _rename_block(k))
        out[k] = v
    return out


def _create_dinat_s(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> NAT:
    """Build `variant` with its official `model_args`, overridden by the caller's `kwargs`."""
    args = dict(stem_type="patch", downsample_type="merge", mlp_ratio=4.0, kernel_size=7, **model_args)
    return build_zoo_model(NAT, variant, pretrained, filter_fn=checkpoint_filter_fn, **dict(args, **kwargs))


_URL = "https://shi-labs.com/projects/dinat/checkpoints/"
_PAPER = dict(paper_ids="arXiv:2209.15001")

# URLs as in the official dinats.py `model_urls`
default_cfgs = generate_default_cfgs({
    "vitzoo_dinat_s_tiny.in1k": _cfg(_URL + "imagenet1k/dinat_s_tiny_in1k_224.pth", **_PAPER),
    "vitzoo_dinat_s_small.in1k": _cfg(_URL + "imagenet1k/dinat_s_small_in1k_224.pth", **_PAPER),
    "vitzoo_dinat_s_base.in1k": _cfg(_URL + "imagenet1k/dinat_s_base_in1k_224.pth", **_PAPER),
    "vitzoo_dinat_s_large.in22k_ft_in1k": _cfg(_URL + "imagenet1k/dinat_s_large_in1k_224.pth", **_PAPER),
    "vitzoo_dinat_s_large_384.in22k_ft_in1k": _cfg(
        _URL + "imagenet1k/dinat_s_large_in1k_384.pth", input_size=(3, 384, 384), pool_size=(12, 12),
        crop_pct=1.0, **_PAPER),
    "vitzoo_dinat_s_large_21k.in22k": _cfg(
        _URL + "imagenet22k/dinat_s_large_in22k_224.pth", num_classes=21841, **_PAPER),
})

_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
# Large has Swin-L's heads (6, 12, 24, 48), as the official DiNAT-s Large checkpoints and the
# issue's measurement of the official code (196,532,476 / 228,565,093 parameters) give. An older
# copy of the official dinats.py (SHI-Labs commit 7816457) reads (4, 8, 16, 32) for Large; pass
# num_heads=(4, 8, 16, 32) to build that layout.
_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))


def _dil(cfg: dict[str, Any], dilations: tuple[int, ...] = (8, 4, 2, 1)) -> dict[str, Any]:
    return dict(cfg, dilations=dinat_dilations(cfg["depths"], dilations))


@register_model
def vitzoo_dinat_s_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_dinat_s("vitzoo_dinat_s_tiny", pretrained, dict(_dil(_TINY), drop_path_rate=0.2), **kwargs)


@register_model
def vitzoo_dinat_s_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_dinat_s("vitzoo_dinat_s_small", pretrained, dict(_dil(_SMALL), drop_path_rate=0.3), **kwargs)


@register_model
def vitzoo_dinat_s_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_dinat_s("vitzoo_dinat_s_base", pretrained, dict(_dil(_BASE), drop_path_rate=0.5), **kwargs)


@register_model
def vitzoo_dinat_s_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_dinat_s("vitzoo_dinat_s_large", pretrained, dict(_dil(_LARGE), drop_path_rate=0.35), **kwargs)


@register_model
def vitzoo_dinat_s_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_dil(_LARGE, (13, 6, 3, 1)), drop_path_rate=0.35)
    return _create_dinat_s("vitzoo_dinat_s_large_384", pretrained, args, **kwargs)


@register_model
def vitzoo_dinat_s_large_21k(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_dinat_s("vitzoo_dinat_s_large_21k", pretrained, dict(_dil(_LARGE), drop_path_rate=0.2), **kwargs)
