"""SHViT: single-head vision transformer with a memory-efficient macro design, S1..S4.

Paper: `SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design` (CVPR 2024,
https://arxiv.org/abs/2401.16456); official code: ysj9909/SHViT. timm's module is `shvit`
(this module's name differs on purpose).

EfficientViT's macro design (4-conv /16 stem, 3 stages at /16, /32, /64, the shared
`ConvFFNPatchMerging` downsample, BN-Linear head) with a simpler block:
- type 'i' (first stage): a MetaFormer block with a depthwise-conv mixer and a Conv-BN FFN;
- type 's' (later stages): a depthwise-conv residual, then a MetaFormer block whose mixer is
  single-head attention over a partial set of channels (`SingleHeadAttention`) and a Conv-BN FFN.
Global attention without position bias: any input of at least 16x16 runs. `fuse()` folds every
BatchNorm into its conv / linear, and the 's' blocks' DW-conv residual into its conv.

Weights: timm's (`timm/shvit_s*.in1k`) and the official checkpoints (`blocks1..3`, `.l` head,
1x1 convs possibly Linear-shaped) load through `checkpoint_filter_fn`.
"""
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import GroupNorm1
from timm.models import generate_default_cfgs

from ..layers import MetaFormerBlock, Stage
from ..layers.conv_bn import (
    BNLinearHead, ConvBNMlp, ConvBNStem, ConvFFNPatchMerging, conv_ffn_block, fold_residual_into_dw_conv, fuse_modules,
)
from ..layers.single_head_attention import SingleHeadAttention
from ._base import build_zoo_model
from ._dense import backbone_state
from ._registry import register_model
from .efficientvit_cga import EfficientVitMacro, official_stage_key, rename_key, adapt_tensor, drop_distillation_head

__all__ = ["SingleHeadVit", "SingleHeadBlock", "checkpoint_filter_fn"]

PATCH_SIZE = 16


class SingleHeadBlock(nn.Module):
    """'i': `local` = DW conv + FFN. 's': `local` = DW conv, then `attn` = single-head attention + FFN."""

    def __init__(
            self,
            dim: int,
            qk_dim: int,
            pdim: int,
            block_type: str = "s",
            norm_layer: Callable[[int], nn.Module] = GroupNorm1,
            act_layer: Callable[[], nn.Module] = nn.ReLU,
            drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if block_type not in ("i", "s"):
            raise ValueError(f"block type must be 'i' (conv only) or 's' (single-head attention), got {block_type!r}")
        self.block_type = block_type
        has_attn = block_type == "s"
        self.local = conv_ffn_block(dim, bn_weight_init=0.0, drop_path=drop_path, act_layer=act_layer,
                                    with_mlp=not has_attn)
        self.attn = MetaFormerBlock(
            dim,
            token_mixer=SingleHeadAttention(dim, qk_dim, pdim, norm_layer=norm_layer, act_layer=act_layer),
            mlp=ConvBNMlp(dim, 2 * dim, act_layer),
            norm_layer=nn.Identity,
            drop_path=drop_path,
            channels_first=True,
        ) if has_attn else nn.Identity()

    @torch.no_grad()
    def fuse(self) -> "SingleHeadBlock":
        """Fold BNs; in 's' blocks also the DW-conv residual (`x + dw(x)`) into one conv, as the official fuse."""
        fuse_modules(self)
        local = self.local
        plain_residual = all(isinstance(m, nn.Identity) for m in (
            local.norm1, local.drop_path1, local.layer_scale1, local.res_scale1))
        if not local.has_mlp and plain_residual and isinstance(local.token_mixer, nn.Conv2d):
            self.local = fold_residual_into_dw_conv(local.token_mixer)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.local(x))


class SingleHeadVit(EfficientVitMacro):
    """SHViT on the zoo's hierarchical base: ConvBN stem -> 3 stages -> BN-Linear head.

    Args:
        in_chans: input channels.
        num_classes: classes (0: pooled features).
        embed_dim: channels per stage.
        partial_dim: attended channels per stage.
        qk_dim: query/key channels per stage.
        depth: blocks per stage.
        types: block type per stage, 'i' (conv) or 's' (single-head attention).
        global_pool: head pooling ('avg', 'max', 'avgmax', 'catavgmax', or '' with num_classes=0).
        drop_rate: dropout before the classifier (after the head's BatchNorm).
        drop_path_rate: stochastic depth, linear over blocks (0 in the official models).
        distillation: add the official second (distillation) BN-Linear head (off, like timm).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            embed_dim: Sequence[int] = (128, 256, 384),
            partial_dim: Sequence[int] = (32, 64, 96),
            qk_dim: Sequence[int] = (16, 16, 16),
            depth: Sequence[int] = (1, 2, 3),
            types: Sequence[str] = ("s", "s", "s"),
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_layer: Callable[[int], nn.Module] = GroupNorm1,
            act_layer: Callable[[], nn.Module] = nn.ReLU,
            distillation: bool = False,
    ) -> None:
        super().__init__()
        num_stages = len(embed_dim)
        for name, val in (("partial_dim", partial_dim), ("qk_dim", qk_dim), ("depth", depth), ("types", types)):
            if len(val) != num_stages:
                raise ValueError(f"{name} needs one entry per stage ({num_stages}), got {tuple(val)}")
        n_blocks = sum(depth)
        dpr = [drop_path_rate * j / max(n_blocks - 1, 1) for j in range(n_blocks)]

        self.stem = ConvBNStem(in_chans, embed_dim[0], act_layer)
        stages = []
        for i in range(num_stages):
            blocks = [
                SingleHeadBlock(embed_dim[i], qk_dim[i], partial_dim[i], types[i], norm_layer, act_layer,
                                drop_path=dpr[sum(depth[:i]) + j])
                for j in range(depth[i])
            ]
            prev = embed_dim[i - 1] if i > 0 else embed_dim[0]
            down = ConvFFNPatchMerging(prev, embed_dim[i], act_layer) if prev != embed_dim[i] else None
            stages.append(Stage(blocks, down))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()
        self.head = BNLinearHead(embed_dim[-1], num_classes, global_pool, drop_rate, distillation)
        self.init_contract(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, dims=embed_dim,
            reductions=[PATCH_SIZE * 2 ** i for i in range(num_stages)],
            head_hidden_size=self.head.hidden_size,
        )


# ---- checkpoints ----------------------------------------------------------------------------
_OFFICIAL_TO_TIMM = [  # official downsample parts: blocks{s}.0.{0,1}, .1, .2.{0,1} -> timm downsample.0..4
    (r"\.downsample\.__0\.(\d)\.", lambda m: f".downsample.{int(m[1])}."),
    (r"\.downsample\.__1\.", ".downsample.2."),
    (r"\.downsample\.__2\.(\d)\.", lambda m: f".downsample.{int(m[1]) + 3}."),
]

_TIMM_TO_OURS = [
    (r"^patch_embed\.(\d)\.", lambda m: f"stem.conv{int(m[1]) // 2 + 1}."),
    (r"\.downsample\.0\.m\.", ".downsample.local0.token_mixer."),
    (r"\.downsample\.1\.m\.pw(\d)\.", r".downsample.local0.mlp.fc\1."),
    (r"\.downsample\.2\.", ".downsample.merge."),
    (r"\.downsample\.3\.m\.", ".downsample.local1.token_mixer."),
    (r"\.downsample\.4\.m\.pw(\d)\.", r".downsample.local1.mlp.fc\1."),
    (r"\.conv\.m\.", ".local.token_mixer."),
    (r"\.mixer\.m\.", ".attn.token_mixer."),
    (r"\.ffn\.m\.pw(\d)\.", r".__ffn.fc\1."),  # 'i' blocks: local.mlp, 's' blocks: attn.mlp (below)
    (r"\.c\.", ".conv."),
    (r"^head\.bn\.", "head.norm."),
    (r"^head\.l\.", "head.fc."),
    (r"^head_dist\.bn\.", "head.dist.norm."),
    (r"^head_dist\.l\.", "head.dist.fc."),
]


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm (`stages.*`, `patch_embed.N.c`) or official (`blocks1..3`) weights -> ours; also the backbone
    of an official downstream (mmdet) checkpoint, `backbone.*` under `state_dict`."""
    state_dict = backbone_state(state_dict)  # a file's container; a detector's `backbone.*`
    if any(k.startswith("blocks1.") for k in state_dict):  # official layout: to timm's first
        state_dict = drop_distillation_head(state_dict, model)
        state_dict = {rename_key(official_stage_key(k), _OFFICIAL_TO_TIMM): v for k, v in state_dict.items()}
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        k = rename_key(k, _TIMM_TO_OURS)
        if ".__ffn." in k:
            block = k.split(".__ffn.")[0]
            k = k.replace(".__ffn.", ".attn.mlp." if f"{block}.attn.mlp.fc1.conv.weight" in target else ".local.mlp.")
        out[k] = adapt_tensor(k, v, target.get(k))
    return out


# ---- registry ----------------------------------------------------------------------------
def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SingleHeadVit:
    return build_zoo_model(
        SingleHeadVit, variant, pretrained, filter_fn=checkpoint_filter_fn,
        default_out_indices=(0, 1, 2), **kwargs)


def _cfg(timm_tag: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "hf_hub_id": f"timm/{timm_tag}",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (4, 4),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv", "classifier": "head.fc",
        "license": "mit", "paper_ids": "arXiv:2401.16456",
        "paper_name": "SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design",
        "origin_url": "https://github.com/ysj9909/SHViT",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vitzoo_shvit_s1.in1k": _cfg("shvit_s1.in1k"),
    "vitzoo_shvit_s2.in1k": _cfg("shvit_s2.in1k"),
    "vitzoo_shvit_s3.in1k": _cfg("shvit_s3.in1k"),
    "vitzoo_shvit_s4.in1k": _cfg("shvit_s4.in1k", input_size=(3, 256, 256)),
})

# (embed_dim, depth, partial_dim), from the official model/build.py (timm's are identical)
_VARIANTS = {
    "s1": ((128, 224, 320), (2, 4, 5), (32, 48, 68)),
    "s2": ((128, 308, 448), (2, 4, 5), (32, 66, 96)),
    "s3": ((192, 352, 448), (3, 5, 5), (48, 75, 96)),
    "s4": ((224, 336, 448), (4, 7, 6), (48, 72, 96)),
}


def _variant(name: str, pretrained: bool, kwargs: dict[str, Any]) -> SingleHeadVit:
    embed_dim, depth, partial_dim = _VARIANTS[name]
    args = dict(embed_dim=embed_dim, depth=depth, partial_dim=partial_dim, types=("i", "s", "s"))
    return _create(f"vitzoo_shvit_{name}", pretrained, **dict(args, **kwargs))


@register_model
def vitzoo_shvit_s1(pretrained: bool = False, **kwargs: Any) -> SingleHeadVit:
    return _variant("s1", pretrained, kwargs)


@register_model
def vitzoo_shvit_s2(pretrained: bool = False, **kwargs: Any) -> SingleHeadVit:
    return _variant("s2", pretrained, kwargs)


@register_model
def vitzoo_shvit_s3(pretrained: bool = False, **kwargs: Any) -> SingleHeadVit:
    return _variant("s3", pretrained, kwargs)


@register_model
def vitzoo_shvit_s4(pretrained: bool = False, **kwargs: Any) -> SingleHeadVit:
    return _variant("s4", pretrained, kwargs)
