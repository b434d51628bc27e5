"""NAT and DiNAT: a MetaFormer whose token mixer is (dilated) neighborhood attention.

Papers: "Neighborhood Attention Transformer" (https://arxiv.org/abs/2204.07143) and "Dilated
Neighborhood Attention Transformer" (https://arxiv.org/abs/2209.15001). Official code and weights:
https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (classification/nat.py, dinat.py).

Layout: ConvTokenizer stem (two 3x3 stride-2 convs, no activation, LayerNorm) -> 4 stages of
`norm -> NA -> + -> norm -> Mlp -> +` blocks on NHWC maps, 3x3 stride-2 conv + LayerNorm between
stages -> LayerNorm -> avg pool -> Linear. DiNAT is NAT with a per-block dilation schedule
(1 / 8,4,2,1 alternating at 224). The official model downsamples at the *end* of level i; here the
downsampler opens stage i+1 (the same computation); `checkpoint_filter_fn` moves the weights.
DiNAT-s (Swin layout) and the isotropic variants reuse `nat_block` from here.

Input sizes: any image of at least 32x32, as the official detection / segmentation backbones
(`detection/nat.py`, `dinat.py`, `dinats.py` and their `segmentation/` twins): the 3x3 stride-2
convs give ceil(H/2) per step for any H (DiNAT-s' 4x4 patchify first zero-pads the image at the
bottom / right to a multiple of 4, as the official PatchEmbed), and a map smaller than
`kernel_size * dilation` is padded to that size inside the attention and cropped back (NATTEN's
rule). Stage i of an H x W image is ceil(H / 2^(i+2)) x ceil(W / 2^(i+2)).
`feature_norms=True` adds the dense backbones' per-output norms (`norm0..norm3`), so the backbone
of their checkpoints (`backbone.*` of e.g. `maskrcnn_dinat_tiny.pth`) loads and gives their maps.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, Mlp
from timm.models import generate_default_cfgs

from vitzoo.layers import ConvNormDownsample, ConvStem, MetaFormerBlock, Stage
from vitzoo.layers.neighborhood_attention import NeighborhoodAttention2D
from vitzoo.layers.patch_merging import PatchMerging

from ._base import HierarchicalBackbone, build_zoo_model
from ._dense import FeatureNormsMixin, backbone_state, take_feature_norms
from ._init import init_linear_layernorm
from ._registry import register_model

__all__ = ["NAT", "nat_block", "checkpoint_filter_fn"]


def nat_block(
        dim: int,
        num_heads: int,
        kernel_size: int = 7,
        dilation: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
) -> MetaFormerBlock:
    """The official NATLayer as a MetaFormer block: names `norm1`, `token_mixer.{qkv,rpb,proj}`, `mlp.fc1`, ..."""
    return MetaFormerBlock(
        dim,
        token_mixer=NeighborhoodAttention2D(
            dim, num_heads, kernel_size, dilation, qkv_bias=qkv_bias, qk_scale=qk_scale,
            attn_drop=attn_drop, proj_drop=proj_drop),
        mlp=Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop),
        norm_layer=norm_layer,
        drop_path=drop_path,
        layer_scale_init_value=layer_scale,
    )


def _check_dilations(dilations: Sequence[Sequence[int]] | None, depths: Sequence[int]) -> list[list[int]]:
    if dilations is None:
        return [[1] * d for d in depths]
    dilations = [list(d) for d in dilations]
    if [len(d) for d in dilations] != list(depths):
        raise ValueError(f"dilations must give one value per block (depths {list(depths)}), got {dilations}")
    return dilations


class NAT(FeatureNormsMixin, HierarchicalBackbone):
    """NAT / DiNAT / DiNAT-s: stem -> 4 stages of neighborhood-attention blocks -> norm -> head.

    Args:
        embed_dim: stage-1 width (doubles every stage).
        depths, num_heads: blocks and heads per stage.
        kernel_size: neighbourhood size of every block.
        dilations: per stage, one dilation per block (None: all 1, i.e. NAT).
        mlp_ratio: MLP hidden width / dim.
        layer_scale: init of per-channel branch scales (None: no layer scale; official NAT-S/B and
            DiNAT-B use 1e-5).
        stem_type: 'conv' (NAT's ConvTokenizer) or 'patch' (4x4 patchify + LayerNorm, DiNAT-s).
        downsample_type: 'conv' (NAT's 3x3 stride-2 conv + LayerNorm) or 'merge' (Swin's PatchMerging, DiNAT-s).
        drop_rate: dropout before the classifier; proj_drop_rate: after attention proj and in the MLP
            (the official `drop_rate`); attn_drop_rate must be 0; drop_path_rate: stochastic depth.
        feature_norms: one LayerNorm per stage output in `forward_intermediates` / `features_only`
            (the official detection / segmentation backbones' `norm0..norm3`).
    """

    output_fmt = "NHWC"
    min_input_size = 32
    no_weight_decay_keys = ("rpb",)

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 64,
            depths: Sequence[int] = (3, 4, 6, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            kernel_size: int = 7,
            dilations: Sequence[Sequence[int]] | None = None,
            mlp_ratio: float = 3.0,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.2,
            layer_scale: float | None = None,
            stem_type: str = "conv",
            downsample_type: str = "conv",
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            act_layer: Callable[[], nn.Module] = nn.GELU,
            feature_norms: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
        if stem_type not in ("conv", "patch"):
            raise ValueError(f"stem_type must be 'conv' or 'patch', got {stem_type!r}")
        if downsample_type not in ("conv", "merge"):
            raise ValueError(f"downsample_type must be 'conv' or 'merge', got {downsample_type!r}")
        dilations = _check_dilations(dilations, depths)
        num_stages = len(depths)
        dims = [embed_dim * 2 ** i for i in range(num_stages)]

        if stem_type == "conv":
            self.stem = ConvStem(in_chans, [embed_dim // 2, embed_dim], norm=norm_layer, layout="NHWC")
        else:
            self.stem = ConvStem(in_chans, [embed_dim], kernel_size=4, stride=4, padding=0,
                                 norm=norm_layer, layout="NHWC", pad_input=True)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = []
        for i in range(num_stages):
            if i == 0:
                downsample = None
            elif downsample_type == "conv":
                downsample = ConvNormDownsample(dims[i - 1], dims[i], 3, 2, 1, bias=False,
                                                post_norm=norm_layer, layout="NHWC")
            else:
                downsample = PatchMerging(dims[i - 1], dims[i], norm_layer=norm_layer)
            first = sum(depths[:i])
            blocks = [
                nat_block(dims[i], num_heads[i], kernel_size, dilations[i][j], mlp_ratio, qkv_bias, qk_scale,
                          proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[first + j],
                          layer_scale=layer_scale, norm_layer=norm_layer, act_layer=act_layer)
                for j in range(depths[i])
            ]
            stages.append(Stage(blocks, downsample))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, global_pool, drop_rate=drop_rate, input_fmt="NHWC")
        self.init_feature_norms(feature_norms, dims, norm_layer)
        self.init_contract(in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, dims=dims,
                           reductions=[4 * 2 ** i for i in range(num_stages)])
        self.input_divisor = 1  # any size: strided convs / padded patchify, small maps padded in the attention
        self.apply(init_linear_layernorm)


# ---- official checkpoints ----------------------------------------------------------------------
def _rename_block(key: str) -> str:
    """Official block names -> MetaFormerBlock names (`attn` -> `token_mixer`, `gammaN` -> `layer_scaleN.scale`)."""
    key = key.replace(".attn.", ".token_mixer.")
    return re.sub(r"\.gamma([12])$", r".layer_scale\1.scale", key)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official NAT / DiNAT keys -> ours.

    `patch_embed.proj.{0,1}` / `patch_embed.norm` -> `stem.proj.{0,1}` / `stem.norm`;
    `levels.i.blocks.j.{attn.*, gamma1, gamma2}` -> `stages.i.blocks.j.{token_mixer.*, layer_scale1.scale, ...}`;
    `levels.i.downsample.{reduction, norm}` -> `stages.{i+1}.downsample.{conv, post_norm}`; `head` -> `head.fc`.
    Official detection / segmentation checkpoints (`detection/nat.py`, `dinat.py`): the `backbone.`
    keys only, their per-output norms `norm{i}` -> `feature_norms.{i}` (the model needs
    `feature_norms=True`). A state dict already in our layout is returned unchanged.
    """
    state_dict = backbone_state(state_dict)
    if any(k.startswith("stages.") for k in state_dict):
        return state_dict
    state_dict = take_feature_norms(state_dict, r"^norm(\d+)\.", model)
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^patch_embed\.", "stem.", k)
        m = re.match(r"^levels\.(\d+)\.downsample\.(reduction|norm)\.(.+)$", k)
        if m:
            part = "conv" if m.group(2) == "reduction" else "post_norm"
            k = f"stages.{int(m.group(1)) + 1}.downsample.{part}.{m.group(3)}"
        k = re.sub(r"^levels\.(\d+)\.blocks\.", r"stages.\1.blocks.", k)
        k = re.sub(r"^head\.", "head.fc.", _rename_block(k))
        out[k] = v
    return out


def _create_nat(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> NAT:
    """Build `variant` with its official `model_args`, overridden by the caller's `kwargs`."""
    return build_zoo_model(NAT, variant, pretrained, filter_fn=checkpoint_filter_fn, **dict(model_args, **kwargs))


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj.0", "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2204.07143", "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kwargs,
    }


_NAT_URL = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_DINAT_URL = "https://shi-labs.com/projects/dinat/checkpoints/"
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
_21K = dict(num_classes=21841)

default_cfgs = generate_default_cfgs({
    "vitzoo_nat_mini.in1k": _cfg(_NAT_URL + "nat_mini.pth"),
    "vitzoo_nat_tiny.in1k": _cfg(_NAT_URL + "nat_tiny.pth"),
    "vitzoo_nat_small.in1k": _cfg(_NAT_URL + "nat_small.pth"),
    "vitzoo_nat_base.in1k": _cfg(_NAT_URL + "nat_base.pth"),
    "vitzoo_dinat_mini.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_mini_in1k_224.pth", paper_ids="arXiv:2209.15001"),
    "vitzoo_dinat_tiny.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_tiny_in1k_224.pth", paper_ids="arXiv:2209.15001"),
    "vitzoo_dinat_small.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_small_in1k_224.pth", paper_ids="arXiv:2209.15001"),
    "vitzoo_dinat_base.in1k": _cfg(_DINAT_URL + "imagenet1k/dinat_base_in1k_224.pth", paper_ids="arXiv:2209.15001"),
    "vitzoo_dinat_large.in22k_ft_in1k": _cfg(
        _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_224.pth", paper_ids="arXiv:2209.15001"),
    "vitzoo_dinat_large_384.in22k_ft_in1k": _cfg(
        _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_384.pth", paper_ids="arXiv:2209.15001", **_384),
    "vitzoo_dinat_large_384_11x11.in22k_ft_in1k": _cfg(
        _DINAT_URL + "imagenet1k/dinat_large_in22k_in1k_384_11x11.pth", paper_ids="arXiv:2209.15001", **_384),
    "vitzoo_dinat_large_21k.in22k": _cfg(
        _DINAT_URL + "imagenet22k/dinat_large_in22k_224.pth", paper_ids="arXiv:2209.15001", **_21K),
    # same weights as dinat_large_21k except the rpb, bicubically interpolated to 11x11 by the authors
    "vitzoo_dinat_large_21k_11x11.in22k": _cfg(
        _DINAT_URL + "imagenet22k/dinat_large_in22k_224_11x11interp.pth", paper_ids="arXiv:2209.15001", **_21K),
})

# Official variants (classification/nat.py, dinat.py). DiNAT's schedule alternates 1 and the dilation
# that makes the 7x7 neighbourhood span the whole map at 224 (56/7=8, 28/7=4, 14/7=2, 7/7=1); at 384
# the official models use 13, 6, 3, 1.
_NAT_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0)
_NAT_TINY = dict(embed_dim=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0)
_NAT_SMALL = dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0)
_NAT_BASE = dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0)
_DINAT_LARGE = dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0)


def dinat_dilations(depths: Sequence[int], dilations: Sequence[int]) -> list[list[int]]:
    """Per-block dilations: stage i alternates 1, dilations[i], 1, ... (DiNAT's schedule)."""
    return [[1 if j % 2 == 0 else d for j in range(depth)] for depth, d in zip(depths, dilations)]


def _dinat(cfg: dict[str, Any], dilations: Sequence[int] = (8, 4, 2, 1)) -> dict[str, Any]:
    return dict(cfg, dilations=dinat_dilations(cfg["depths"], dilations))


@register_model
def vitzoo_nat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_nat("vitzoo_nat_mini", pretrained, dict(_NAT_MINI, drop_path_rate=0.2), **kwargs)


@register_model
def vitzoo_nat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_nat("vitzoo_nat_tiny", pretrained, dict(_NAT_TINY, drop_path_rate=0.2), **kwargs)


@register_model
def vitzoo_nat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_NAT_SMALL, drop_path_rate=0.3, layer_scale=1e-5)
    return _create_nat("vitzoo_nat_small", pretrained, args, **kwargs)


@register_model
def vitzoo_nat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_NAT_BASE, drop_path_rate=0.5, layer_scale=1e-5)
    return _create_nat("vitzoo_nat_base", pretrained, args, **kwargs)


@register_model
def vitzoo_dinat_mini(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_nat("vitzoo_dinat_mini", pretrained, dict(_dinat(_NAT_MINI), drop_path_rate=0.2), **kwargs)


@register_model
def vitzoo_dinat_tiny(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_nat("vitzoo_dinat_tiny", pretrained, dict(_dinat(_NAT_TINY), drop_path_rate=0.2), **kwargs)


@register_model
def vitzoo_dinat_small(pretrained: bool = False, **kwargs: Any) -> NAT:
    return _create_nat("vitzoo_dinat_small", pretrained, dict(_dinat(_NAT_SMALL), drop_path_rate=0.3), **kwargs)


@register_model
def vitzoo_dinat_base(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_dinat(_NAT_BASE), drop_path_rate=0.5, layer_scale=1e-5)
    return _create_nat("vitzoo_dinat_base", pretrained, args, **kwargs)


@register_model
def vitzoo_dinat_large(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_dinat(_DINAT_LARGE), drop_path_rate=0.35)
    return _create_nat("vitzoo_dinat_large", pretrained, args, **kwargs)


@register_model
def vitzoo_dinat_large_384(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_dinat(_DINAT_LARGE, (13, 6, 3, 1)), drop_path_rate=0.35)
    return _create_nat("vitzoo_dinat_large_384", pretrained, args, **kwargs)


@register_model
def vitzoo_dinat_large_384_11x11(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_dinat(_DINAT_LARGE), kernel_size=11, drop_path_rate=0.35)
    return _create_nat("vitzoo_dinat_large_384_11x11", pretrained, args, **kwargs)


@register_model
def vitzoo_dinat_large_21k(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_dinat(_DINAT_LARGE), drop_path_rate=0.2)
    return _create_nat("vitzoo_dinat_large_21k", pretrained, args, **kwargs)


@register_model
def vitzoo_dinat_large_21k_11x11(pretrained: bool = False, **kwargs: Any) -> NAT:
    args = dict(_dinat(_DINAT_LARGE), kernel_size=11, drop_path_rate=0.2)
    return _create_nat("vitzoo_dinat_large_21k_11x11", pretrained, args, **kwargs)
