"""MetaFormer family: PoolFormer (v1, v2), ConvFormer and CAFormer on the zoo's MetaFormer block.

The block is fixed (norm -> token mixer -> residual -> norm -> MLP -> residual); the families
differ only in the token mixer each stage uses and in norms/scales:

* PoolFormer v1 (https://arxiv.org/abs/2111.11418): Pooling mixer, GroupNorm1, GELU MLP with
  bias, layer scale, no stem/downsample norm.
* PoolFormerV2 / ConvFormer / CAFormer (https://arxiv.org/abs/2210.13452): Pooling / SepConv /
  SepConv-then-attention mixers, bias-free norms, StarReLU MLP without bias, residual scale in
  stages 2-3; ConvFormer and CAFormer classify through an MLP head.

Stages run NCHW (like timm); CAFormer's attention stages flatten to tokens `[B, N, C]` after
their downsample and fold back to NCHW at the end, so every stage outputs NCHW. Input sizes:
timm's - any image of at least 3x3 (the 7x7/4 stem, padding 2), the strided convs rounding as
convs do (250x333 -> 62x83, 31x42, 16x21, 8x11); `features_only` gives timm's layout and
feature_info and loads the state dict of timm's `features_only` twin. Weights: timm's
hub checkpoints, the official sail-sg/poolformer (v1) and sail-sg/metaformer (v2, ConvFormer,
CAFormer) layouts all load through `checkpoint_filter_fn`, and so does the backbone of a
sail-sg/poolformer detection / segmentation checkpoint (v1 with `feature_norms=True`).
"""
import re
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import GroupNorm1, LayerNorm2d, Mlp, calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs
from timm.models._manipulate import checkpoint_seq

from vitzoo.layers import ConvNormDownsample, MetaFormerBlock, Stage
from vitzoo.layers.metaformer_attention import MetaFormerAttention
from vitzoo.layers.mlp_head import MetaFormerHead
from vitzoo.layers.norms import GroupNorm1NoBias, LayerNorm2dNoBias, LayerNormNoBias
from vitzoo.layers.pooling_mixer import Pooling
from vitzoo.layers.sep_conv_mixer import SepConv, StarReLU

from ._base import HierarchicalBackbone, build_zoo_model
from ._dense import FeatureNormsMixin, backbone_state, take_feature_norms
from ._registry import register_model

__all__ = ["MetaFormer", "checkpoint_filter_fn"]

NormFactory = Callable[[int], nn.Module]
#: the token mixers a stage can use; each declares the layout it runs in (`input_fmt`)
TOKEN_MIXERS: dict[str, type[nn.Module]] = {"pooling": Pooling, "sepconv": SepConv, "attention": MetaFormerAttention}


def _per_stage(value: Any, num_stages: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} has {len(value)} entries for {num_stages} stages")
        return list(value)
    return [value] * num_stages


class TokenStage(Stage):
    """A Stage whose blocks run on tokens `[B, H*W, C]`: NCHW in, NCHW out (CAFormer's attention stages)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.transpose(1, 2).reshape(B, C, H, W)


class MetaFormer(FeatureNormsMixin, HierarchicalBackbone):
    """stem (conv 7x7/4) -> 4 stages of MetaFormer blocks (conv 3x3/2 downsample between) -> head.

    Args:
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier).
        global_pool: head pooling ('avg', 'max', ...).
        depths: blocks per stage.
        dims: channels per stage.
        token_mixers: per stage (or one for all), one of 'pooling', 'sepconv', 'attention'.
        mlp_act: activation of the block MLP (StarReLU for v2/ConvFormer/CAFormer, GELU for v1).
        mlp_bias: bias in the block MLP.
        mlp_ratio: block MLP hidden width / dim.
        drop_path_rate: stochastic depth, increasing stage by stage.
        proj_drop_rate: dropout in MLPs and the attention projection.
        drop_rate: head dropout: before the MLP head's hidden layer (timm) or before its last linear
            (official, `official_head=True`); before the classifier in a plain linear head.
        layer_scale_init_values: per stage (or one): layer-scale init, None for no layer scale.
        res_scale_init_values: per stage (or one): residual-scale init, None for none.
        downsample_norm: norm after the stem conv and before each downsample conv (None: none).
        norm_layers: per stage (or one): the blocks' norm (NCHW norms; token norms for attention stages).
        output_norm: norm on the pooled features in the head.
        use_mlp_head: classify through an MLP hidden layer (ConvFormer/CAFormer).
        head_mlp_ratio: hidden width of the MLP head / dims[-1].
        official_head: the official code's head computation instead of timm's (see `set_official_head`);
            the checkpoint filter switches it on when it loads an official sail-sg file, off for timm's.
        feature_norms: PoolFormer v1 only: one GroupNorm(1, C) per stage output in `forward_intermediates`
            / `features_only`, the `norm0/2/4/6` of sail-sg/poolformer's detection / segmentation
            backbone (`fork_feat=True`), so its mmdet / mmseg checkpoints load.
    """

    output_fmt = "NCHW"

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            depths: Sequence[int] = (2, 2, 6, 2),
            dims: Sequence[int] = (64, 128, 320, 512),
            token_mixers: str | Sequence[str] = "pooling",
            mlp_act: Callable[[], nn.Module] = StarReLU,
            mlp_bias: bool = False,
            mlp_ratio: float = 4.0,
            drop_path_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_rate: float = 0.0,
            layer_scale_init_values: float | None | Sequence[float | None] = None,
            res_scale_init_values: float | None | Sequence[float | None] = (None, None, 1.0, 1.0),
            downsample_norm: NormFactory | None = LayerNorm2dNoBias,
            norm_layers: NormFactory | Sequence[NormFactory] = LayerNorm2dNoBias,
            output_norm: NormFactory = LayerNorm2d,
            use_mlp_head: bool = True,
            head_mlp_ratio: float = 4.0,
            official_head: bool = False,
            feature_norms: bool = False,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise ValueError(f"depths and dims must have the same length, got {len(depths)} and {len(dims)}")
        token_mixers = _per_stage(token_mixers, num_stages, "token_mixers")
        for kind in token_mixers:
            if kind not in TOKEN_MIXERS:
                raise ValueError(f"unknown token mixer {kind!r}; choose from {tuple(TOKEN_MIXERS)}")
        norm_layers = _per_stage(norm_layers, num_stages, "norm_layers")
        ls_inits = _per_stage(layer_scale_init_values, num_stages, "layer_scale_init_values")
        rs_inits = _per_stage(res_scale_init_values, num_stages, "res_scale_init_values")
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)

        self.drop_rate = drop_rate
        self.stem = ConvNormDownsample(in_chans, dims[0], kernel_size=7, stride=4, padding=2,
                                       post_norm=downsample_norm)
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            down = None if i == 0 else ConvNormDownsample(
                dims[i - 1], dim, kernel_size=3, stride=2, padding=1, pre_norm=downsample_norm)
            tokens = TOKEN_MIXERS[token_mixers[i]].input_fmt == "NLC"  # attention runs on [B, N, C]
            blocks = [
                MetaFormerBlock(
                    dim,
                    token_mixer=self._make_mixer(token_mixers[i], dim, proj_drop_rate),
                    mlp=Mlp(dim, int(mlp_ratio * dim), act_layer=mlp_act, bias=mlp_bias,
                            drop=proj_drop_rate, use_conv=not tokens),
                    norm_layer=norm_layers[i],
                    drop_path=dp_rates[i][j],
                    layer_scale_init_value=ls_inits[i],
                    res_scale_init_value=rs_inits[i],
                    channels_first=not tokens,
                )
                for j in range(depth)
            ]
            stages.append((TokenStage if tokens else Stage)(blocks, down))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # MetaFormer normalises after pooling, in the head
        #: PoolFormer v1 (GroupNorm blocks with bias, no MLP head): the official head norms the map first
        self._v1_head = not use_mlp_head and norm_layers[0] is GroupNorm1
        if feature_norms and not self._v1_head:
            raise ValueError("feature_norms=True: only PoolFormer v1 has an official dense backbone with "
                             "per-output norms (sail-sg/poolformer detection/segmentation)")
        self.init_feature_norms(feature_norms, dims, lambda d: GroupNorm1(d, eps=1e-5))

        hidden = int(head_mlp_ratio * dims[-1]) if use_mlp_head else None
        self.head = MetaFormerHead(dims[-1], num_classes, pool_type=global_pool, hidden_size=hidden,
                                   drop_rate=drop_rate, norm_layer=output_norm)
        self.init_contract(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, dims=dims,
            reductions=[2 ** (i + 2) for i in range(num_stages)], head_hidden_size=hidden,
        )
        # timm's rule: the strided convs round up, so any image works that the 7x7/4 stem (padding 2)
        # takes - at least 3x3 (e.g. 250x333 -> maps of 62x83, 31x42, 16x21, 8x11, as timm's)
        self.input_divisor = 1
        self.min_input_size = 3
        if not self.head.norm.weight.is_meta:  # nothing to initialise on 'meta' (and it is slow there)
            self._init_family_weights()
        self.official_head = False
        self.set_official_head(official_head)

    @torch.no_grad()
    def set_official_head(self, enable: bool = True) -> None:
        """Switch between timm's head computation (default, what timm's weights were converted for)
        and the official code's (sail-sg/poolformer, sail-sg/metaformer), keeping the weights.

        PoolFormer v1 official: GroupNorm(1, eps 1e-5) on the last feature map (`self.norm`), then
        average, then fc; timm: average, then LayerNorm (eps 1e-6). ConvFormer/CAFormer official:
        the MLP head's LayerNorm has eps 1e-5 (timm: 1e-6) and the head dropout (`drop_rate`, the
        official `head_dropout`) sits between the hidden layer's norm and the last linear
        (sail-sg/metaformer `MlpHead`: fc1 -> act -> norm -> head_dropout -> fc2); timm's sits before
        the hidden layer. PoolFormer v2: the two agree (no MLP head).
        """
        enable = bool(enable)
        if enable == self.official_head:
            return
        if self._v1_head:
            src = self.head.norm if enable else self.norm
            if isinstance(src, nn.Identity):
                raise ValueError("set_official_head needs the final norm, which pruning removed")
            dst = GroupNorm1(self.num_features, eps=1e-5) if enable else LayerNorm2d(self.num_features)
            dst = dst.to(device=src.weight.device, dtype=src.weight.dtype)
            if not src.weight.is_meta:
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
            self.norm, self.head.norm = (dst, nn.Identity()) if enable else (nn.Identity(), dst)
        elif self.head.hidden_size and isinstance(self.head.pre_logits, nn.Sequential):
            self.head.pre_logits.norm.eps = 1e-5 if enable else 1e-6
            self.head.drop_after_hidden = enable
        self.official_head = enable

    def _init_family_weights(self) -> None:
        self.apply(self._init_weights)

    @staticmethod
    def _make_mixer(kind: str, dim: int, proj_drop: float) -> nn.Module:
        if kind == "pooling":
            return Pooling(pool_size=3)
        if kind == "sepconv":
            return SepConv(dim)
        return MetaFormerAttention(dim, head_dim=32, proj_drop=proj_drop)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---- checkpoint conversion -------------------------------------------------------------------

# timm's layout differs from ours only in the stem/downsample norm names and the MLP head.
_TIMM_RULES = (
    (r"^stem\.norm\.", "stem.post_norm."),
    (r"^stages\.(\d+)\.downsample\.norm\.", r"stages.\1.downsample.pre_norm."),
    (r"^head\.fc\.fc1\.", "head.pre_logits.fc1."),
    (r"^head\.fc\.norm\.", "head.pre_logits.norm."),
    (r"^head\.fc\.fc2\.", "head.fc."),
)

# sail-sg/metaformer (PoolFormerV2, ConvFormer, CAFormer): first matching rule wins.
_METAFORMER_RULES = (
    (r"^downsample_layers\.0\.", "stem."),
    (r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^norm\.", "head.norm."),
    (r"^head\.fc1\.", "head.pre_logits.fc1."),
    (r"^head\.norm\.", "head.pre_logits.norm."),
    (r"^head\.fc2\.", "head.fc."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
)


def _poolformer_v1_key(k: str) -> str:
    """sail-sg/poolformer: `network.{2i}` are stage i's blocks, `network.{2i-1}` its downsample."""
    k = re.sub(r"layer_scale_(\d)$", r"layer_scale\1.scale", k)
    m = re.match(r"^network\.(\d+)\.(.*)$", k)
    if m:
        idx, rest = int(m.group(1)), m.group(2)
        if idx % 2 == 0:
            return f"stages.{idx // 2}.blocks.{rest}"
        return f"stages.{(idx + 1) // 2}.downsample.{rest.replace('proj.', 'conv.', 1)}"
    k = re.sub(r"^patch_embed\.proj\.", "stem.conv.", k)
    k = re.sub(r"^norm\.", "head.norm.", k)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", k)


def _apply_rules(k: str, rules: Sequence[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, k)
        if n:
            return new
    return k


def _take_poolformer_dense_norms(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """sail-sg/poolformer's dense backbone norms `norm{0,2,4,6}` (named by their `network` index) ->
    `feature_norms.{0..3}`. Its RetinaNet runs (`FORK_LAST3=1`) keep `norm0` an Identity, so a file
    without it gets an Identity first norm here too, as that backbone computes."""
    rx = re.compile(r"^norm(\d+)\.")
    idx = {int(m.group(1)) for k in state_dict for m in [rx.match(k)] if m}
    if not idx:
        return state_dict
    state_dict = {rx.sub(lambda m: f"norm{int(m.group(1)) // 2}.", k, count=1): v for k, v in state_dict.items()}
    state_dict = take_feature_norms(state_dict, r"^norm(\d+)\.", model)
    if 0 not in idx and not isinstance(model.feature_norms[0], nn.Identity):
        model.feature_norms[0] = nn.Identity()
    return state_dict


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's or the official (sail-sg/poolformer, sail-sg/metaformer) state dict -> ours.

    Official checkpoints are channels-last (Linear pointwise / MLP weights `[out, in]`); they are
    reshaped to our 1x1-conv shapes `[out, in, 1, 1]` where the element counts agree. The backbone
    of a sail-sg/poolformer mmdet / mmseg checkpoint (`backbone.*`, per-output norms `norm0/2/4/6`)
    loads into a PoolFormer v1 built with `feature_norms=True`.
    """
    state_dict = backbone_state(state_dict)  # a file's container; a detector's `backbone.*`
    official = None  # which head computation the weights were trained with (None: ours, keep the model's)
    if "network.0.0.mlp.fc1.weight" in state_dict:
        # a dense backbone (no `norm`/`head`: norms per output instead) leaves the head as it is
        rename, official = _poolformer_v1_key, (True if "norm.weight" in state_dict else None)
        state_dict = _take_poolformer_dense_norms(state_dict, model)
    elif "downsample_layers.0.conv.weight" in state_dict:
        rename, official = (lambda k: _apply_rules(k, _METAFORMER_RULES)), True  # noqa: E731
    else:  # timm's layout, or already ours (the timm rules leave our names alone)
        rename = lambda k: _apply_rules(k, _TIMM_RULES)  # noqa: E731
        if getattr(model, "_v1_head", False) and ("norm.weight" in state_dict or "head.norm.weight" in state_dict):
            official = "norm.weight" in state_dict  # v1: timm's keys (head.norm) or ours in official mode (norm)
        elif "head.fc.fc1.weight" in state_dict:
            official = False  # timm's MLP head
    if official is not None and hasattr(model, "set_official_head"):
        model.set_official_head(official)
    v1_map_norm = getattr(model, "_v1_head", False) and getattr(model, "official_head", False)

    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        k = rename(k)
        if v1_map_norm and k.startswith("head.norm."):  # the official v1 norm runs on the map: ours is `norm`
            k = k[len("head."):]
        ref = target.get(k)
        if ref is not None and v.shape != ref.shape and v.numel() == ref.numel():
            v = v.reshape(ref.shape)
        out[k] = v
    return out


# ---- factory, configs, entrypoints ---------------------------------------------------------


def _create_metaformer(variant: str, pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    num_stages = len(kwargs.get("depths", (2, 2, 6, 2)))
    return build_zoo_model(
        MetaFormer, variant, pretrained, filter_fn=checkpoint_filter_fn,
        default_out_indices=tuple(range(num_stages)), **kwargs,
    )


def _cfg(timm_tag: str, **kwargs: Any) -> dict[str, Any]:
    """Config of one pretrained tag; `timm_tag` is timm's `model.tag`, the weights' hub id under timm/."""
    return {
        "hf_hub_id": f"timm/{timm_tag}",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 1.0, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "head.fc",
        "license": "apache-2.0",
        **kwargs,
    }


def _mlp_head_cfgs(name: str) -> dict[str, dict[str, Any]]:
    """The five timm tags every ConvFormer/CAFormer size has (224/384, in1k/in22k-ft, in22k)."""
    r384 = dict(input_size=(3, 384, 384), pool_size=(12, 12))
    return {
        f"vitzoo_{name}.sail_in1k": _cfg(f"{name}.sail_in1k"),
        f"vitzoo_{name}.sail_in1k_384": _cfg(f"{name}.sail_in1k_384", **r384),
        f"vitzoo_{name}.sail_in22k_ft_in1k": _cfg(f"{name}.sail_in22k_ft_in1k"),
        f"vitzoo_{name}.sail_in22k_ft_in1k_384": _cfg(f"{name}.sail_in22k_ft_in1k_384", **r384),
        f"vitzoo_{name}.sail_in22k": _cfg(f"{name}.sail_in22k", num_classes=21841),
    }


default_cfgs = generate_default_cfgs({
    "vitzoo_poolformer_s12.sail_in1k": _cfg("poolformer_s12.sail_in1k", crop_pct=0.9),
    "vitzoo_poolformer_s24.sail_in1k": _cfg("poolformer_s24.sail_in1k", crop_pct=0.9),
    "vitzoo_poolformer_s36.sail_in1k": _cfg("poolformer_s36.sail_in1k", crop_pct=0.9),
    "vitzoo_poolformer_m36.sail_in1k": _cfg("poolformer_m36.sail_in1k", crop_pct=0.95),
    "vitzoo_poolformer_m48.sail_in1k": _cfg("poolformer_m48.sail_in1k", crop_pct=0.95),
    **{f"vitzoo_poolformerv2_{s}.sail_in1k": _cfg(f"poolformerv2_{s}.sail_in1k")
       for s in ("s12", "s24", "s36", "m36", "m48")},
    **{k: v for fam in ("convformer", "caformer") for size in ("s18", "s36", "m36", "b36")
       for k, v in _mlp_head_cfgs(f"{fam}_{size}").items()},
})

_POOL_SIZES = {  # name: (depths, dims)
    "s12": ((2, 2, 6, 2), (64, 128, 320, 512)),
    "s24": ((4, 4, 12, 4), (64, 128, 320, 512)),
    "s36": ((6, 6, 18, 6), (64, 128, 320, 512)),
    "m36": ((6, 6, 18, 6), (96, 192, 384, 768)),
    "m48": ((8, 8, 24, 8), (96, 192, 384, 768)),
}
_FORMER_SIZES = {
    "s18": ((3, 3, 9, 3), (64, 128, 320, 512)),
    "s36": ((3, 12, 18, 3), (64, 128, 320, 512)),
    "m36": ((3, 12, 18, 3), (96, 192, 384, 576)),
    "b36": ((3, 12, 18, 3), (128, 256, 512, 768)),
}


def _poolformer_v1(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    depths, dims = _POOL_SIZES[size]
    model_kwargs = dict(
        depths=depths, dims=dims, token_mixers="pooling", downsample_norm=None,
        mlp_act=nn.GELU, mlp_bias=True, norm_layers=GroupNorm1,
        layer_scale_init_values=1e-5 if size in ("s12", "s24") else 1e-6,
        res_scale_init_values=None, use_mlp_head=False,
    )
    return _create_metaformer(f"vitzoo_poolformer_{size}", pretrained, **dict(model_kwargs, **kwargs))


def _poolformer_v2(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    depths, dims = _POOL_SIZES[size]
    model_kwargs = dict(depths=depths, dims=dims, token_mixers="pooling",
                        norm_layers=GroupNorm1NoBias, use_mlp_head=False)
    return _create_metaformer(f"vitzoo_poolformerv2_{size}", pretrained, **dict(model_kwargs, **kwargs))


def _convformer(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    depths, dims = _FORMER_SIZES[size]
    model_kwargs = dict(depths=depths, dims=dims, token_mixers="sepconv", norm_layers=LayerNorm2dNoBias)
    return _create_metaformer(f"vitzoo_convformer_{size}", pretrained, **dict(model_kwargs, **kwargs))


def _caformer(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    depths, dims = _FORMER_SIZES[size]
    model_kwargs = dict(
        depths=depths, dims=dims, token_mixers=("sepconv", "sepconv", "attention", "attention"),
        norm_layers=(LayerNorm2dNoBias, LayerNorm2dNoBias, LayerNormNoBias, LayerNormNoBias),
    )
    return _create_metaformer(f"vitzoo_caformer_{size}", pretrained, **dict(model_kwargs, **kwargs))


@register_model
def vitzoo_poolformer_s12(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v1("s12", pretrained, **kwargs)


@register_model
def vitzoo_poolformer_s24(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v1("s24", pretrained, **kwargs)


@register_model
def vitzoo_poolformer_s36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v1("s36", pretrained, **kwargs)


@register_model
def vitzoo_poolformer_m36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v1("m36", pretrained, **kwargs)


@register_model
def vitzoo_poolformer_m48(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v1("m48", pretrained, **kwargs)


@register_model
def vitzoo_poolformerv2_s12(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v2("s12", pretrained, **kwargs)


@register_model
def vitzoo_poolformerv2_s24(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v2("s24", pretrained, **kwargs)


@register_model
def vitzoo_poolformerv2_s36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v2("s36", pretrained, **kwargs)


@register_model
def vitzoo_poolformerv2_m36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v2("m36", pretrained, **kwargs)


@register_model
def vitzoo_poolformerv2_m48(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _poolformer_v2("m48", pretrained, **kwargs)


@register_model
def vitzoo_convformer_s18(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _convformer("s18", pretrained, **kwargs)


@register_model
def vitzoo_convformer_s36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _convformer("s36", pretrained, **kwargs)


@register_model
def vitzoo_convformer_m36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _convformer("m36", pretrained, **kwargs)


@register_model
def vitzoo_convformer_b36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _convformer("b36", pretrained, **kwargs)


@register_model
def vitzoo_caformer_s18(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _caformer("s18", pretrained, **kwargs)


@register_model
def vitzoo_caformer_s36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _caformer("s36", pretrained, **kwargs)


@register_model
def vitzoo_caformer_m36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _caformer("m36", pretrained, **kwargs)


@register_model
def vitzoo_caformer_b36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _caformer("b36", pretrained, **kwargs)
