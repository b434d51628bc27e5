"""BiFormer: a MetaFormer whose token mixer is bi-level routing attention.

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention" (Zhu et al., CVPR 2023,
https://arxiv.org/abs/2303.08810). Official code and weights: https://github.com/rayleizhu/BiFormer
(models/biformer.py, models/biformer_stl.py, ops/bra_legacy.py, models/_common.py).

Layout (T/S/B): a conv stem (3x3/s2 conv + BN + GELU + 3x3/s2 conv + BN) -> 4 stages of blocks on
NCHW maps, a 3x3/s2 conv + BN opening stages 2-4 -> BatchNorm2d -> avg pool -> Linear. A block is
`x + pos_embed(x)` (3x3 depthwise conv) followed by the pre-norm MetaFormer block (LayerNorm eps
1e-6, MLP ratio 3) on NHWC. Stages 1-3 mix with bi-level routing attention (n_win 7, topk 1/4/16,
head_dim 32); stage 4 with plain attention over the map (8 heads, no qkv bias) plus LePE.
BiFormer-STL (Swin-Tiny layout): 4x4/s4 conv + BN stem, BN + 2x2/s2 conv downsamplers, no
pos_embed conv, MLP ratio 4.

Input sizes: any image of at least 32x32, as the official dense backbones (`BiFormer_mm` in
`object_detection/models_mm/biformer_mm.py` and `semantic_segmentation/models_mm/biformer_mm.py`,
built with `auto_pad=True`): the 3x3 stride-2 convs give ceil(H/2) per step, and each routed
mixer pads its map at the bottom / right to a multiple of `n_win` and crops back. Stage i of an
H x W image is ceil(H / 2^(i+2)) x ceil(W / 2^(i+2)). BiFormer-STL's kernel-equals-stride convs
(4x4/4 stem, 2x2/2 downsamplers; no official dense backbone) floor instead: floor(H/4), then
halved and floored per stage. Those dense backbones use `n_win=16` (COCO) or `n_win=8` (ADE20K);
pass it as `n_win=`. `feature_norms=True` adds their per-output norms (`extra_norms.0..3`,
LayerNorm2d eps 1e-6), so their checkpoints' `backbone.*` loads and gives their maps.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, LayerNorm2d, Mlp
from timm.models import generate_default_cfgs

from vitzoo.layers import ConvNormDownsample, MetaFormerBlock, Stage
from vitzoo.layers.routing_attention import AttentionLePE, BiLevelRoutingAttention

from ._base import HierarchicalBackbone, build_zoo_model
from ._dense import FeatureNormsMixin, backbone_state, take_feature_norms
from ._init import init_linear_layernorm
from ._registry import register_model

__all__ = ["BiFormer", "BiFormerBlock", "checkpoint_filter_fn"]

#: `topks` entry of a stage that runs full attention + LePE instead of routing (the official code's -2)
FULL_ATTENTION = -2


class BiFormerBlock(MetaFormerBlock):
    """NCHW in and out: `x + pos_embed(x)` (depthwise conv, optional), then the MetaFormer block on NHWC."""

    def __init__(
            self,
            dim: int,
            token_mixer: nn.Module,
            mlp: nn.Module,
            drop_path: float = 0.0,
            layer_scale: float | None = None,
            pos_embed_kernel: int = 3,
    ) -> None:
        super().__init__(dim, token_mixer, mlp, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                         drop_path=drop_path, layer_scale_init_value=layer_scale)
        self.has_pos_embed = pos_embed_kernel > 0
        self.pos_embed = (nn.Conv2d(dim, dim, pos_embed_kernel, padding=pos_embed_kernel // 2, groups=dim)
                          if self.has_pos_embed else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_pos_embed:
            x = x + self.pos_embed(x)
        x = self.forward_mlp(self.forward_mixer(x.permute(0, 2, 3, 1)))
        return x.permute(0, 3, 1, 2)


def _per_stage(value: int | Sequence[int], num_stages: int, name: str) -> list[int]:
    values = [value] * num_stages if isinstance(value, int) else list(value)
    if len(values) != num_stages:
        raise ValueError(f"{name} must give one value per stage ({num_stages}), got {value}")
    return values


class BiFormer(FeatureNormsMixin, HierarchicalBackbone):
    """BiFormer / BiFormer-STL: stem -> 4 stages of routed-attention blocks -> BatchNorm2d -> head.

    Args:
        embed_dims: width of each stage.
        depths: blocks per stage.
        topks: routed key regions per stage; `-2` (FULL_ATTENTION) = full attention + LePE.
        n_win: regions per side, one value or one per stage.
        head_dim: routed-attention head width (heads = qk_dim // head_dim).
        qk_dims: query/key width per stage (default: embed_dims).
        full_attn_heads: heads of the full-attention stages (official: 8).
        mlp_ratio: MLP hidden width / dim.
        side_dwconv: LePE kernel size.
        pos_embed_kernel: depthwise conv before every block (0: none, STL).
        layer_scale: init of per-channel branch scales (None: none, as every official variant).
        stem_type: 'conv' (two 3x3/s2 conv + BN, GELU between) or 'patch' (4x4/s4 conv + BN, STL).
        downsample_type: 'conv' (3x3/s2 conv + BN) or 'norm_conv' (BN + 2x2/s2 conv, STL).
        drop_rate: dropout before the classifier; proj_drop_rate: after the mixers' output
            projections and in the MLP; drop_path_rate: stochastic depth (linear over blocks).
        feature_norms: a LayerNorm2d (eps 1e-6) per stage output in `forward_intermediates` /
            `features_only` (the official dense backbones' `extra_norms`).
    """

    output_fmt = "NCHW"
    min_input_size = 32

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            depths: Sequence[int] = (2, 2, 8, 2),
            topks: Sequence[int] = (1, 4, 16, FULL_ATTENTION),
            n_win: int | Sequence[int] = 7,
            head_dim: int = 32,
            qk_dims: Sequence[int] | None = None,
            qk_scale: float | None = None,
            full_attn_heads: int = 8,
            mlp_ratio: float = 3.0,
            side_dwconv: int = 5,
            pos_embed_kernel: int = 3,
            layer_scale: float | None = None,
            stem_type: str = "conv",
            downsample_type: str = "conv",
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            act_layer: Callable[[], nn.Module] = nn.GELU,
            feature_norms: bool = False,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        dims = list(embed_dims)
        if len(dims) != num_stages:
            raise ValueError(f"embed_dims {dims} and depths {list(depths)} must have the same length")
        topks = _per_stage(topks, num_stages, "topks")
        n_wins = _per_stage(n_win, num_stages, "n_win")
        qk_dims = dims if qk_dims is None else _per_stage(qk_dims, num_stages, "qk_dims")
        if any(t < 1 and t != FULL_ATTENTION for t in topks):
            raise ValueError(f"topks entries must be >= 1 (routed) or {FULL_ATTENTION} (full attention), got {topks}")
        if stem_type not in ("conv", "patch"):
            raise ValueError(f"stem_type must be 'conv' or 'patch', got {stem_type!r}")
        if downsample_type not in ("conv", "norm_conv"):
            raise ValueError(f"downsample_type must be 'conv' or 'norm_conv', got {downsample_type!r}")
        self.topks, self.n_wins = topks, n_wins

        bn = nn.BatchNorm2d
        if stem_type == "conv":
            self.stem = nn.Sequential(
                ConvNormDownsample(in_chans, dims[0] // 2, 3, 2, 1, post_norm=bn),
                act_layer(),
                ConvNormDownsample(dims[0] // 2, dims[0], 3, 2, 1, post_norm=bn),
            )
        else:
            self.stem = ConvNormDownsample(in_chans, dims[0], 4, 4, 0, post_norm=bn)

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = []
        for i in range(num_stages):
            if i == 0:
                downsample = None
            elif downsample_type == "conv":
                downsample = ConvNormDownsample(dims[i - 1], dims[i], 3, 2, 1, post_norm=bn)
            else:
                downsample = ConvNormDownsample(dims[i - 1], dims[i], 2, 2, 0, pre_norm=bn)
            first = sum(depths[:i])
            blocks = []
            for j in range(depths[i]):
                if topks[i] == FULL_ATTENTION:
                    mixer: nn.Module = AttentionLePE(dims[i], full_attn_heads, side_dwconv=side_dwconv,
                                                     proj_drop=proj_drop_rate)
                else:
                    mixer = BiLevelRoutingAttention(
                        dims[i], qk_dims[i] // head_dim, n_wins[i], topks[i], qk_dim=qk_dims[i], qk_scale=qk_scale,
                        side_dwconv=side_dwconv, proj_drop=proj_drop_rate)
                mlp = Mlp(dims[i], int(dims[i] * mlp_ratio), act_layer=act_layer, drop=proj_drop_rate)
                blocks.append(BiFormerBlock(dims[i], mixer, mlp, dpr[first + j], layer_scale, pos_embed_kernel))
            stages.append(Stage(blocks, downsample))
        self.stages = nn.Sequential(*stages)
        self.norm = bn(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, global_pool, drop_rate=drop_rate, input_fmt="NCHW")
        self.init_feature_norms(feature_norms, dims, LayerNorm2d)  # timm's LayerNorm2d: eps 1e-6, as official
        self.init_contract(in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, dims=dims,
                           reductions=[4 * 2 ** i for i in range(num_stages)])
        self.input_divisor = 1  # any size: strided convs, routed mixers pad to a multiple of n_win
        self.apply(init_linear_layernorm)

    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's `custom_load` hook for `pretrained=True`: the official OneDrive links all end in
        `/root/content`, so the cfg names the cached file (`biformer_tiny_in1k.pth`, ...) and this loads it
        (weights only) through `checkpoint_filter_fn`; a head of another size keeps its new init."""
        state = checkpoint_filter_fn(torch.load(checkpoint_path, map_location="cpu", weights_only=True), self)
        own = self.state_dict()
        head = [k for k in state if k.startswith("head.") and (k not in own or own[k].shape != state[k].shape)]
        for k in head:
            del state[k]
        result = self.load_state_dict(state, strict=not head)
        stray = [k for k in result.missing_keys + result.unexpected_keys if not k.startswith("head.")]
        if stray:
            raise RuntimeError(f"{checkpoint_path}: checkpoint does not fit {type(self).__name__}: {stray[:5]}")


# ---- official checkpoints ----------------------------------------------------------------------
def _rename_block(rest: str) -> str:
    """Official block names -> ours: `attn.qkv.qkv` -> `token_mixer.qkv`, `mlp.0`/`mlp.{2,3}` -> `mlp.fc1/fc2`."""
    rest = re.sub(r"^attn\.qkv\.qkv\.", "token_mixer.qkv.", rest)
    rest = re.sub(r"^attn\.", "token_mixer.", rest)
    rest = re.sub(r"^mlp\.0\.", "mlp.fc1.", rest)
    rest = re.sub(r"^mlp\.[23]\.", "mlp.fc2.", rest)
    return re.sub(r"^gamma([12])$", r"layer_scale\1.scale", rest)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official BiFormer / BiFormer-STL keys -> ours.

    `downsample_layers.0.{0,1,3,4}` (conv, BN, -, conv, BN) -> `stem.{0,2}.{conv,post_norm}`, STL's
    `downsample_layers.0.{0,1}` -> `stem.{conv,post_norm}`; `downsample_layers.i.{0,1}` ->
    `stages.i.downsample.{conv,post_norm}` (STL, BN first: `{pre_norm,conv}`);
    `stages.i.j.*` (STL: `stages.i.blocks.j.*`) -> `stages.i.blocks.j.*` with `attn` -> `token_mixer`,
    `attn.qkv.qkv` -> `token_mixer.qkv`, `mlp.0`/`mlp.3` (STL `mlp.2`) -> `mlp.fc1`/`mlp.fc2`;
    `norm` (BatchNorm2d) unchanged; `head` -> `head.fc`. A state dict already in our layout is
    returned unchanged. Checkpoints of the official dense backbones (`BiFormer_mm`, saved by
    mmdet / mmseg): the `backbone.` keys only, `extra_norms.i` -> `feature_norms.i` (the model needs
    `feature_norms=True`).
    """
    state_dict = backbone_state(state_dict)
    if not any(k.startswith("downsample_layers.") for k in state_dict):
        return state_dict
    state_dict = take_feature_norms(state_dict, r"^extra_norms\.(\d+)\.", model)
    two_conv_stem = "downsample_layers.0.3.weight" in state_dict
    bn_first = {  # per downsample layer, whether index 0 is the BatchNorm (STL) or the conv
        m.group(1) for k in state_dict for m in [re.match(r"^downsample_layers\.(\d+)\.0\.running_mean$", k)] if m}
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"^downsample_layers\.0\.(\d)\.(.+)$", k)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            part = "conv" if idx in (0, 3) else "post_norm"
            k = f"stem.{0 if idx < 2 else 2}.{part}.{rest}" if two_conv_stem else f"stem.{part}.{rest}"
            out[k] = v
            continue
        m = re.match(r"^downsample_layers\.(\d+)\.(\d)\.(.+)$", k)
        if m:
            i, idx, rest = m.group(1), int(m.group(2)), m.group(3)
            part = ("pre_norm", "conv")[idx] if i in bn_first else ("conv", "post_norm")[idx]
            out[f"stages.{i}.downsample.{part}.{rest}"] = v
            continue
        m = re.match(r"^stages\.(\d+)\.(?:blocks\.)?(\d+)\.(.+)$", k)
        if m:
            out[f"stages.{m.group(1)}.blocks.{m.group(2)}.{_rename_block(m.group(3))}"] = v
            continue
        out[re.sub(r"^head\.", "head.fc.", k)] = v
    return out


def _create_biformer(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> BiFormer:
    """Build `variant` with its official `model_args`, overridden by the caller's `kwargs`."""
    return build_zoo_model(BiFormer, variant, pretrained, filter_fn=checkpoint_filter_fn, **dict(model_args, **kwargs))


def _cfg(url: tuple[str, str], first_conv: str = "stem.0.conv", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url, "custom_load": True, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv, "classifier": "head.fc", "license": "mit",
        "paper_ids": "arXiv:2303.08810", "origin_url": "https://github.com/rayleizhu/BiFormer",
        **kwargs,
    }


# the official repo's `model_urls` as of rayleizhu/BiFormer@1697bbb ("repair broken links", README
# and models/biformer.py, models/biformer_stl.py): OneDrive API links replacing the old matix.li
# short links (STL's file changed too); `{'model': state_dict, ...}` checkpoints that the official
# code caches as f"{model_key}.pth" (biformer_tiny_in1k.pth, ...).
_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvCh{}/root/content"
default_cfgs = generate_default_cfgs({
    "vitzoo_biformer_tiny.in1k": _cfg((_ONEDRIVE.format("HEOoGkgwgQzEDlM"), "biformer_tiny_in1k.pth")),
    "vitzoo_biformer_small.in1k": _cfg((_ONEDRIVE.format("HDyM-x9KWRBZ832"), "biformer_small_in1k.pth")),
    "vitzoo_biformer_base.in1k": _cfg((_ONEDRIVE.format("HI_XPhoadjaNxtO"), "biformer_base_in1k.pth")),
    "vitzoo_biformer_stl.in1k": _cfg((_ONEDRIVE.format("Sf-m7ujkvx9lIQ1"), "biformer_stl_in1k.pth"),
                                     first_conv="stem.conv"),
})

# Official variants: head_dim 32, n_win 7, topks (1, 4, 16, full attention), LePE 5x5, qk_dims = embed_dims.
_TINY = dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), mlp_ratio=3.0)
_SMALL = dict(embed_dims=(64, 128, 256, 512), depths=(4, 4, 18, 4), mlp_ratio=3.0)
_BASE = dict(embed_dims=(96, 192, 384, 768), depths=(4, 4, 18, 4), mlp_ratio=3.0)
_STL = dict(embed_dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), mlp_ratio=4.0, pos_embed_kernel=0,
            stem_type="patch", downsample_type="norm_conv")


@register_model
def vitzoo_biformer_tiny(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    return _create_biformer("vitzoo_biformer_tiny", pretrained, _TINY, **kwargs)


@register_model
def vitzoo_biformer_small(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    return _create_biformer("vitzoo_biformer_small", pretrained, _SMALL, **kwargs)


@register_model
def vitzoo_biformer_base(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    return _create_biformer("vitzoo_biformer_base", pretrained, _BASE, **kwargs)


@register_model
def vitzoo_biformer_stl(pretrained: bool = False, **kwargs: Any) -> BiFormer:
    return _create_biformer("vitzoo_biformer_stl", pretrained, _STL, **kwargs)
