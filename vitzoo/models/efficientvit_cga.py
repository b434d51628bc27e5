"""EfficientViT (MSRA): memory-efficient ViT with cascaded group attention, M0..M5.

Paper: `EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention`
(https://arxiv.org/abs/2305.07027); official code: microsoft/Cream, EfficientViT/classification.
timm's name for the family is `efficientvit_msra` (this module's name differs on purpose).

The "sandwich" block is three MetaFormer blocks without norms (every linear map is a Conv-BN):
`DW-conv mixer + Conv-BN FFN`, `local-window cascaded group attention` (no MLP), `DW-conv + FFN`.
A 4-conv /16 stem feeds 3 stages (/16, /32, /64); stages 2 and 3 open with the shared
`ConvFFNPatchMerging` downsample. The head is timm's BN-Linear classifier. `fuse()` folds every
BatchNorm into its conv / linear for deployment.

Image size: `img_size` (its shorter side) sets each stage's attention-bias window,
`min(window_size, feature resolution)`, as in timm; any input of at least 16x16 then runs
(windows are zero-padded at the bottom/right edge). `set_input_size()` re-samples the biases.

Weights: timm's (`timm/efficientvit_m*.r224_in1k`) and the official checkpoints
(`blocks1..3`, `.c`/`.l` names, some 1x1 convs stored Linear-shaped) both load through
`checkpoint_filter_fn`.
"""
import re
import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs
from timm.models._input import update_model_input_size

from ..layers import MetaFormerBlock, Stage
from ..layers.attention_bias import resize_attention_biases
from ..layers.cascaded_group_attention import LocalWindowAttention
from ..layers.conv_bn import BNLinearHead, ConvBNStem, ConvFFNPatchMerging, conv_ffn_block, fuse_modules
from ._base import HierarchicalBackbone, build_zoo_model
from ._dense import backbone_state
from ._registry import register_model

__all__ = ["EfficientVitCGA", "EfficientVitBlock", "EfficientVitMacro", "checkpoint_filter_fn"]

PATCH_SIZE = 16


def stage_resolutions(img_size: int, num_stages: int) -> list[int]:
    """Feature-map side of each stage for a square `img_size` image (stem /16, then /2 per stage, ceil)."""
    res = [img_size // PATCH_SIZE]
    for _ in range(num_stages - 1):
        res.append((res[-1] - 1) // 2 + 1)
    return res


class EfficientVitBlock(nn.Module):
    """Sandwich: `conv_ffn0` (DW conv + FFN) -> `attn` (local-window CGA) -> `conv_ffn1` (DW conv + FFN)."""

    def __init__(
            self,
            dim: int,
            key_dim: int,
            num_heads: int = 8,
            attn_ratio: float = 4.0,
            resolution: int = 14,
            window_resolution: int = 7,
            kernels: Sequence[int] = (5, 5, 5, 5),
            drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_ffn0 = conv_ffn_block(dim, bn_weight_init=0.0, drop_path=drop_path)
        self.attn = MetaFormerBlock(
            dim,
            token_mixer=LocalWindowAttention(
                dim, key_dim, num_heads, attn_ratio=attn_ratio, resolution=resolution,
                window_resolution=window_resolution, kernels=kernels),
            mlp=None,
            norm_layer=nn.Identity,
            drop_path=drop_path,
            channels_first=True,
        )
        self.conv_ffn1 = conv_ffn_block(dim, bn_weight_init=0.0, drop_path=drop_path)

    def set_input_size(self, resolution: int) -> None:
        self.attn.token_mixer.set_input_size(resolution)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_ffn1(self.attn(self.conv_ffn0(x)))


class EfficientVitMacro(HierarchicalBackbone):
    """What EfficientViT and SHViT share around their blocks: /16 ConvBN stem, BN-Linear head, `fuse()`.

    Inputs of any size from 16x16 up run (the stem and downsamples round up), so the base's
    divisibility rule (by the last stage's /64) does not apply.
    """

    min_input_size = PATCH_SIZE

    def init_contract(self, **kwargs: Any) -> None:
        super().init_contract(**kwargs)
        self.input_divisor = 1  # the stem and downsamples round up: no divisibility rule

    def check_img_size(self, height: int, width: int) -> None:
        if height < PATCH_SIZE or width < PATCH_SIZE:
            raise ValueError(
                f"{type(self).__name__} needs images of at least {PATCH_SIZE}x{PATCH_SIZE} "
                f"(one stem patch), got {height}x{width}")

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        self.head_hidden_size = self.head.hidden_size  # 'catavgmax' pooling doubles it

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """As the base; when trailing stages go, the head (sized for the last stage) goes too."""
        num_stages = len(self.stages)
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if len(self.stages) < num_stages:
            self.num_features = self.feature_info[len(self.stages) - 1]["num_chs"]
            self.head.in_features = self.num_features
            self.reset_classifier(0, "")
        return take_indices

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """With a distillation head: return (class, distillation) logits in training (for a distillation loss)."""
        self.head.distilled_training = enable

    @torch.no_grad()
    def fuse(self) -> "EfficientVitMacro":
        """Fold every BatchNorm into its conv / linear, in place (eval outputs unchanged)."""
        return fuse_modules(self)


class EfficientVitCGA(EfficientVitMacro):
    """EfficientViT (MSRA) on the zoo's hierarchical base: ConvBN stem -> 3 stages -> BN-Linear head.

    Args:
        img_size: nominal input size; its shorter side fixes the attention-bias windows.
        in_chans: input channels.
        num_classes: classes (0: pooled features).
        embed_dim: channels per stage.
        key_dim: query/key channels per head, per stage.
        depth: blocks per stage.
        num_heads: heads per stage (value dim = embed_dim / num_heads).
        window_size: attention window per stage.
        kernels: depthwise query kernel per head.
        global_pool: head pooling ('avg', 'max', 'avgmax', 'catavgmax', or '' with num_classes=0).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear over blocks (0 in the official models).
        distillation: add the official second (distillation) BN-Linear head (off, like timm).
    """

    no_weight_decay_keys = ("attention_biases",)

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: Sequence[int] = (64, 128, 192),
            key_dim: Sequence[int] = (16, 16, 16),
            depth: Sequence[int] = (1, 2, 3),
            num_heads: Sequence[int] = (4, 4, 4),
            window_size: Sequence[int] = (7, 7, 7),
            kernels: Sequence[int] = (5, 5, 5, 5),
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            distillation: bool = False,
    ) -> None:
        super().__init__()
        num_stages = len(embed_dim)
        for name, val in (("key_dim", key_dim), ("depth", depth), ("num_heads", num_heads),
                          ("window_size", window_size)):
            if len(val) != num_stages:
                raise ValueError(f"{name} needs one entry per stage ({num_stages}), got {tuple(val)}")
        self.img_size = min(to_2tuple(img_size))
        if self.img_size < PATCH_SIZE:
            raise ValueError(f"img_size must be at least {PATCH_SIZE} (the stem's stride), got {img_size}")
        resolutions = stage_resolutions(self.img_size, num_stages)
        n_blocks = sum(depth)
        dpr = [drop_path_rate * j / max(n_blocks - 1, 1) for j in range(n_blocks)]

        self.stem = ConvBNStem(in_chans, embed_dim[0])
        stages = []
        for i in range(num_stages):
            attn_ratio = embed_dim[i] / (key_dim[i] * num_heads[i])
            blocks = [
                EfficientVitBlock(
                    embed_dim[i], key_dim[i], num_heads[i], attn_ratio, resolutions[i], window_size[i], kernels,
                    drop_path=dpr[sum(depth[:i]) + j])
                for j in range(depth[i])
            ]
            down = ConvFFNPatchMerging(embed_dim[i - 1], embed_dim[i]) if i > 0 else None
            stages.append(Stage(blocks, down))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self.head = BNLinearHead(embed_dim[-1], num_classes, global_pool, drop_rate, distillation)
        self.init_contract(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, dims=embed_dim,
            reductions=[PATCH_SIZE * 2 ** i for i in range(num_stages)],
            head_hidden_size=self.head.hidden_size,
        )

    def set_input_size(self, img_size: int | tuple[int, int] | None = None) -> None:
        """Rebuild the attention-bias windows for a new nominal image size (biases re-sampled bicubically)."""
        if img_size is not None:
            size = min(to_2tuple(img_size))
            if size < PATCH_SIZE:
                raise ValueError(f"img_size must be at least {PATCH_SIZE}, got {img_size}")
            self.img_size = size
        for stage, res in zip(self.stages, stage_resolutions(self.img_size, len(self.stages))):
            for block in stage.blocks:
                block.set_input_size(res)
        if img_size is not None:
            update_model_input_size(self, to_2tuple(img_size))


# ---- checkpoints ----------------------------------------------------------------------------
def official_stage_key(key: str) -> str:
    """Official `blocks{s}.{n}.*` (downsample parts first in stages 2, 3) -> timm `stages.{s-1}.*`."""
    m = re.match(r"blocks(\d+)\.(\d+)\.(.*)", key)
    if m is None:
        return key
    stage, n, rest = int(m[1]) - 1, int(m[2]), m[3]
    if stage == 0:
        return f"stages.0.blocks.{n}.{rest}"
    if n < 3:
        return f"stages.{stage}.downsample.__{n}.{rest}"  # placeholder, named by the family filter
    return f"stages.{stage}.blocks.{n - 3}.{rest}"


def adapt_tensor(key: str, value: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Reconcile a checkpoint tensor with the model's: 1x1 conv <-> Linear layout, bias-table size.

    Other mismatches pass through unchanged: a classifier for another class count is dropped by
    timm's pretrained loader afterwards, and `load_state_dict` names anything else.
    """
    if target is None or value.shape == target.shape:
        return value
    if value.ndim == 2 and target.ndim == 4 and target.shape[2:] == (1, 1) and value.shape == target.shape[:2]:
        return value[:, :, None, None]
    if value.ndim == 4 and target.ndim == 2 and value.shape[2:] == (1, 1) and value.shape[:2] == target.shape:
        return value[:, :, 0, 0]
    if key.endswith("attention_biases") and value.ndim == 2 and value.shape[0] == target.shape[0]:
        return resize_attention_biases(value, int(round(target.shape[1] ** 0.5)))
    return value  # e.g. a classifier for other classes: timm's loader drops it, load_state_dict reports the rest


def drop_distillation_head(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official `head_dist.*` weights: kept for a model built with `distillation=True`, else dropped (warned)."""
    dist = [k for k in state_dict if k.startswith("head_dist.")]
    if dist and not any(k.startswith("head.dist.") for k in model.state_dict()):
        warnings.warn("dropping the checkpoint's distillation head (head_dist.*): logits come from `head` alone; "
                      "create the model with distillation=True to keep it")
        state_dict = {k: v for k, v in state_dict.items() if k not in dist}
    return state_dict


_OFFICIAL_TO_TIMM = [
    (r"^patch_embed\.(\d+)\.", lambda m: f"patch_embed.conv{int(m[1]) // 2 + 1}."),
    (r"\.downsample\.__0\.", ".downsample.res1."),
    (r"\.downsample\.__1\.", ".downsample.patchmerge."),
    (r"\.downsample\.__2\.", ".downsample.res2."),
    (r"\.c\.", ".conv."),
    (r"^head\.l\.", "head.linear."),
]

_TIMM_TO_OURS = [
    (r"^patch_embed\.", "stem."),
    (r"\.downsample\.res1\.0\.m\.", ".downsample.local0.token_mixer."),
    (r"\.downsample\.res1\.1\.m\.pw(\d)\.", r".downsample.local0.mlp.fc\1."),
    (r"\.downsample\.res2\.0\.m\.", ".downsample.local1.token_mixer."),
    (r"\.downsample\.res2\.1\.m\.pw(\d)\.", r".downsample.local1.mlp.fc\1."),
    (r"\.downsample\.patchmerge\.", ".downsample.merge."),
    (r"\.dw(\d)\.m\.", r".conv_ffn\1.token_mixer."),
    (r"\.ffn(\d)\.m\.pw(\d)\.", r".conv_ffn\1.mlp.fc\2."),
    (r"\.mixer\.m\.attn\.attention_biases$", ".attn.token_mixer.cga.attn_bias.attention_biases"),
    (r"\.mixer\.m\.attn\.", ".attn.token_mixer.cga."),
    (r"^head\.bn\.", "head.norm."),
    (r"^head\.linear\.", "head.fc."),
    (r"^head_dist\.bn\.", "head.dist.norm."),
    (r"^head_dist\.l(inear)?\.", "head.dist.fc."),
]


def rename_key(key: str, rules: list) -> str:
    """Apply `(regex, replacement)` rules in order."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm (`stages.*`, `patch_embed.convN`) or official (`blocks1..3`, `.c`, `.l`) weights -> ours; also
    the backbone of an official downstream (mmdet) checkpoint, `backbone.*` under `state_dict`."""
    state_dict = backbone_state(state_dict)  # a file's container; a detector's `backbone.*`
    if any(k.startswith("blocks1.") for k in state_dict):  # official layout: to timm's first
        state_dict = drop_distillation_head(state_dict, model)
        state_dict = {rename_key(official_stage_key(k), _OFFICIAL_TO_TIMM): v for k, v in state_dict.items()}
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.endswith("attention_bias_idxs"):
            continue
        k = rename_key(k, _TIMM_TO_OURS)
        out[k] = adapt_tensor(k, v, target.get(k))
    return out


# ---- registry ----------------------------------------------------------------------------
def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> EfficientVitCGA:
    return build_zoo_model(
        EfficientVitCGA, variant, pretrained, filter_fn=checkpoint_filter_fn,
        default_out_indices=(0, 1, 2), **kwargs)


def _cfg(timm_tag: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "hf_hub_id": f"timm/{timm_tag}",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (4, 4),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv", "classifier": "head.fc",
        "license": "mit", "paper_ids": "arXiv:2305.07027",
        "origin_url": "https://github.com/microsoft/Cream/tree/main/EfficientViT",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    f"vitzoo_efficientvit_m{i}.r224_in1k": _cfg(f"efficientvit_m{i}.r224_in1k") for i in range(6)
})

# (embed_dim, depth, num_heads, kernels), from the official build.py (timm's are identical)
_VARIANTS = {
    "m0": ((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
    "m1": ((128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
    "m2": ((128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
    "m3": ((128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
    "m4": ((128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
    "m5": ((192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
}


def _variant(name: str, pretrained: bool, kwargs: dict[str, Any]) -> EfficientVitCGA:
    embed_dim, depth, num_heads, kernels = _VARIANTS[name]
    args = dict(img_size=224, embed_dim=embed_dim, depth=depth, num_heads=num_heads, window_size=(7, 7, 7),
                kernels=kernels)
    return _create(f"vitzoo_efficientvit_{name}", pretrained, **dict(args, **kwargs))


@register_model
def vitzoo_efficientvit_m0(pretrained: bool = False, **kwargs: Any) -> EfficientVitCGA:
    return _variant("m0", pretrained, kwargs)


@register_model
def vitzoo_efficientvit_m1(pretrained: bool = False, **kwargs: Any) -> EfficientVitCGA:
    return _variant("m1", pretrained, kwargs)


@register_model
def vitzoo_efficientvit_m2(pretrained: bool = False, **kwargs: Any) -> EfficientVitCGA:
    return _variant("m2", pretrained, kwargs)


@register_model
def vitzoo_efficientvit_m3(pretrained: bool = False, **kwargs: Any) -> EfficientVitCGA:
    return _variant("m3", pretrained, kwargs)


@register_model
def vitzoo_efficientvit_m4(pretrained: bool = False, **kwargs: Any) -> EfficientVitCGA:
    return _variant("m4", pretrained, kwargs)


@register_model
def vitzoo_efficientvit_m5(pretrained: bool = False, **kwargs: Any) -> EfficientVitCGA:
    return _variant("m5", pretrained, kwargs)
