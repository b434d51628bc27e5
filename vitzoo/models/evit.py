"""EViT: DeiT whose attention blocks drop (and fuse) the image tokens the CLS token ignores.

Paper: "Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations" (ICLR 2022, https://arxiv.org/abs/2202.07800). Official code and weights:
https://github.com/youweiliang/evit (evit.py, helpers.py).

The model is DeiT built from the shared ViT block; blocks `token_reorg_locs` (official drop_loc
3, 6, 9, 0-based) get `vitzoo.layers.token_reorg.TokenReorg`, which holds no parameters, so DeiT
checkpoints (timm's and the official EViT ones) load unchanged and `keep_rate=1.0` is exactly
DeiT. Official defaults: base_keep_rate 0.7, drop_loc (3, 6, 9); token fusion is a flag there
(the released models and the training/eval commands use `--fuse_token`), on by default here.

Training: the official keep-rate warm-up is `vitzoo.layers.token_reorg.keep_rate_at`; call
`model.set_keep_rate(keep_rate_at(epoch + step / steps, model.target_keep_rate))` each step and
`model.set_keep_rate(None)` (back to the target) to evaluate.
"""
import re
from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed, calculate_drop_path_rates, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs

from vitzoo.layers.token_reorg import check_reorg_locs, set_keep_rate, token_reorg_for
from vitzoo.layers.vit_block import vit_block

from ._base import IsotropicBackbone, TokenHead, build_zoo_model
from ._init import init_linear_layernorm
from ._registry import register_model

__all__ = ["EViT", "checkpoint_filter_fn"]


class EViT(IsotropicBackbone):
    """DeiT (patch embed -> CLS + abs pos embed -> ViT blocks -> norm -> CLS head) with EViT blocks.

    Args:
        keep_rate: fraction of image tokens each reorganising block keeps (official 0.7; 1.0 = DeiT).
        fuse_token: fuse the dropped tokens into one token weighted by their CLS attention.
        token_reorg_locs: 0-based indices of the reorganising blocks (official (3, 6, 9)).
        drop_rate: dropout before the classifier; pos_drop_rate: after the position embedding;
        proj_drop_rate / attn_drop_rate: in the blocks; drop_path_rate: stochastic depth (linear decay).
        dynamic_img_size, dynamic_img_pad: timm ViT's options of these names, both on by default here:
            the position embedding is resampled (bicubic) for every input whose patch grid differs from
            `img_size`'s, and the image is zero-padded right/bottom to a multiple of the patch size, so
            any image size works (a feature map of ceil(H / 16) x ceil(W / 16)); at `img_size` nothing
            is resampled or padded. dynamic_img_pad=False: multiples of 16 only; dynamic_img_size=False:
            only `img_size` images, as timm's default DeiT.
    """

    no_weight_decay_keys = ("cls_token", "pos_embed")

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            keep_rate: float = 0.7,
            fuse_token: bool = True,
            token_reorg_locs: Sequence[int] | None = (3, 6, 9),
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            dynamic_img_size: bool = True,
            dynamic_img_pad: bool = True,
    ) -> None:
        super().__init__()
        img_size = to_2tuple(img_size)
        locs = check_reorg_locs(token_reorg_locs, depth)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=not dynamic_img_size,
                                      dynamic_img_pad=dynamic_img_size and dynamic_img_pad)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        norm_layer = lambda d: nn.LayerNorm(d, eps=1e-6)  # noqa: E731
        self.blocks = nn.Sequential(*[
            vit_block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=dpr[i], proj_drop=proj_drop_rate,
                      attn_drop=attn_drop_rate, norm_layer=norm_layer,
                      token_reorg=token_reorg_for(i, locs, keep_rate, fuse_token))
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.head = TokenHead(embed_dim, num_classes, global_pool, num_prefix_tokens=1, drop_rate=drop_rate)
        self.token_reorg_locs = locs
        self.target_keep_rate = float(keep_rate)
        self.fuse_token = bool(fuse_token)
        self.init_contract(in_chans=in_chans, num_classes=num_classes, global_pool=global_pool,
                           embed_dim=embed_dim, num_prefix_tokens=1, reduction=patch_size,
                           fixed_input_size=img_size, dynamic_img_size=dynamic_img_size,
                           dynamic_img_pad=dynamic_img_pad)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_linear_layernorm)

    def set_keep_rate(self, rate: float | None) -> None:
        """Keep rate of every reorganising block (the warm-up schedule sets it); None: back to the target."""
        set_keep_rate(self, rate)


# ---- checkpoints ---------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: dict[str, Any], model: EViT) -> dict[str, torch.Tensor]:
    """timm DeiT/ViT or official EViT (`{'model': ...}`, timm-0.4 ViT keys) weights -> ours.

    `blocks.i.attn.*` -> `blocks.i.token_mixer.*`, `head.*` -> `head.fc.*`; the position
    embedding is resampled when the checkpoint's grid differs from the model's.
    """
    state_dict = state_dict.get("model", state_dict)
    out = {}
    for k, v in state_dict.items():
        if k.startswith(("dist_token", "head_dist")):
            raise ValueError("distilled DeiT checkpoints (dist_token/head_dist) are not supported by EViT")
        k = re.sub(r"^blocks\.(\d+)\.attn\.", r"blocks.\1.token_mixer.", k)
        k = re.sub(r"^head\.", "head.fc.", k)
        if k == "pos_embed" and v.shape != model.pos_embed.shape:
            v = resample_abs_pos_embed(v, list(model.patch_embed.grid_size), num_prefix_tokens=1)
        out[k] = v
    return out


_OFFICIAL_TAG = re.compile(r"^evit_(fuse|nofuse)_kr(\d+)_in1k$")
_DEIT_TAG = "deit_fb_in1k"


def _create_evit(variant: str, pretrained: bool = False, **kwargs: Any) -> EViT:
    """The tag says what the weights were trained as, and sets the keep rate that goes with them.

    `deit_fb_in1k` (the default) is timm's DeiT: with `pretrained=True` it runs at keep rate 1.0
    (exactly DeiT) unless `keep_rate=` is given (EViT's own recipe fine-tunes from these weights
    at 0.7). `evit_{fuse,nofuse}_kr{NN}_in1k` are the official EViT-DeiT-S checkpoints, trained at
    keep rate NN/100, with or without token fusion; they are not directly downloadable.
    """
    tag = kwargs.get("pretrained_cfg")
    tag = tag if isinstance(tag, str) else None
    match = _OFFICIAL_TAG.match(tag) if tag else None
    if match:  # an official EViT checkpoint was trained at this keep rate / fusion setting
        kwargs.setdefault("fuse_token", match.group(1) == "fuse")
        kwargs.setdefault("keep_rate", int(match.group(2)) / 100)
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        if pretrained and not overlay.get("file"):
            file_id = _OFFICIAL_DEIT_S[tag[len("evit_"):-len("_in1k")]]
            raise ValueError(
                f"{variant}.{tag} is an official EViT checkpoint that has no direct download: fetch it from "
                f"https://drive.google.com/file/d/{file_id}/view and pass pretrained_cfg_overlay=dict(file=PATH)")
    elif pretrained and tag in (None, _DEIT_TAG):
        kwargs.setdefault("keep_rate", 1.0)
    return build_zoo_model(EViT, variant, pretrained, filter_fn=checkpoint_filter_fn, default_out_indices=3, **kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head.fc", "license": "apache-2.0",
        "paper_ids": "arXiv:2202.07800", "origin_url": "https://github.com/youweiliang/evit",
        **kwargs,
    }


# Official EViT-DeiT-S checkpoints (README model zoo): Google Drive file ids. Drive serves a page,
# not the file, so these tags have no URL: download by hand, then pass
# pretrained_cfg_overlay=dict(file=path); the tag sets the keep rate and fusion they were trained with.
_OFFICIAL_DEIT_S = {
    "fuse_kr90": "1CmROmlLV-7nyYY-Bhph8_5ut3wFwqvny",
    "fuse_kr80": "1BTJyIe0zVK3zYXz3BzIlSC4YZCnZu7cJ",
    "fuse_kr70": "1FfvdEBss9f8gexjqEY8vOSUQe_8qwYuL",
    "fuse_kr60": "1D1m067jDbyG0g2UjyBMaJ4NTT2Ad8vrv",
    "fuse_kr50": "1-nyxAlRWjD2icbgj3Y3YWcCmYj9sTgfD",
    "nofuse_kr90": "1tSaPLged8ED2RTiN5ttSmeTNIw1aNNwV",
    "nofuse_kr80": "1zdFbHk-gOw_Wiid5_Z8NFcBa1HMI-JF-",
    "nofuse_kr70": "1VCZGphW34rFWZDXOoF7XO4EJfRLZ-YB8",
    "nofuse_kr60": "1okYcKryyD6FFPG9v5r40R28SRNfVZ5X0",
    "nofuse_kr50": "1qsPeLN5ytLO8pM7lUuj5bi6pyMhjiSJO",
}
_DEIT_NOTE = ("timm's DeiT weights; pretrained=True runs them at keep_rate=1.0 (exactly DeiT) unless keep_rate= "
              "is given",)

default_cfgs = generate_default_cfgs({
    f"vitzoo_evit_deit_tiny_patch16_224.{_DEIT_TAG}": _cfg(hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k",
                                                           notes=_DEIT_NOTE),
    f"vitzoo_evit_deit_small_patch16_224.{_DEIT_TAG}": _cfg(hf_hub_id="timm/deit_small_patch16_224.fb_in1k",
                                                            notes=_DEIT_NOTE),
    **{
        f"vitzoo_evit_deit_small_patch16_224.evit_{name}_in1k": _cfg(
            notes=(f"Official EViT checkpoint (keep rate 0.{name[-2:]}, {name.split('_')[0]}), no direct download: "
                   f"https://drive.google.com/file/d/{file_id}/view ; pass pretrained_cfg_overlay=dict(file=path)",))
        for name, file_id in _OFFICIAL_DEIT_S.items()
    },
    f"vitzoo_evit_deit_base_patch16_224.{_DEIT_TAG}": _cfg(hf_hub_id="timm/deit_base_patch16_224.fb_in1k",
                                                           notes=_DEIT_NOTE),
})


@register_model
def vitzoo_evit_deit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> EViT:
    """EViT on DeiT-Ti (192 wide, 3 heads); keep_rate=1.0 is exactly DeiT-Ti."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_evit("vitzoo_evit_deit_tiny_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def vitzoo_evit_deit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> EViT:
    """EViT on DeiT-S (384 wide, 6 heads), the official repo's `deit_small_patch16_shrink_base`."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_evit("vitzoo_evit_deit_small_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def vitzoo_evit_deit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> EViT:
    """EViT on DeiT-B (768 wide, 12 heads), the official repo's `deit_base_patch16_shrink_base`."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_evit("vitzoo_evit_deit_base_patch16_224", pretrained, **dict(model_args, **kwargs))
