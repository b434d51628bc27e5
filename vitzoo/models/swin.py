"""Swin Transformer (v1): a MetaFormer whose token mixer is shifted-window attention.

`Swin Transformer: Hierarchical Vision Transformer using Shifted Windows` (Liu et al., 2021),
https://arxiv.org/abs/2103.14030, official code https://github.com/microsoft/Swin-Transformer.

Layout: stem (patch embed, conv 4x4/4 + LayerNorm, NHWC out) -> 4 stages
(`vitzoo.layers.Stage`: PatchMerging downsample except in stage 0, then MetaFormer blocks whose
mixer is `ShiftedWindowAttention`, every second block shifted by half a window) -> LayerNorm ->
ClassifierHead. Loads timm's `swin_*` weights and the official checkpoints through
`checkpoint_filter_fn`, and gives timm 1.0.31's outputs for them.

Input sizes:
* At `img_size` (224 or 384 for the registered variants; any other `img_size=` can be given at
  creation): timm 1.0.31's rule, which is also the official classification model's. Each stage's
  window is clamped to its feature map where the map is no larger than the window (that side then
  has no shift); otherwise a map that is not a multiple of the window is rolled, then zero-padded
  to one, with the shift masks built for the padded map. Odd maps are padded by PatchMerging.
  So e.g. `img_size=256` with window 7 works (maps 64, 32, 16, 8 are padded to 70, 35, 21, 14),
  and `img_size=192` too (48, 24, 12 padded to 49, 28, 14; the last 6x6 map gets a 6x6 window).
* Any other image of at least 32x32 (default, `strict_img_size=True` models): the official
  detection / segmentation backbone's rule (Swin-Transformer-Object-Detection
  `mmdet/models/backbones/swin_transformer.py`, same code in the segmentation repo): the image is
  zero-padded at the bottom / right to a multiple of the patch size, every block pads its map to
  window multiples *before* rolling it (window as built, shift window // 2 in every second block,
  never clamped), the shift mask is built for the padded map, and the result is cropped back.
  Stage i of an H x W image is ceil(H / 4 / 2^i) x ceil(W / 4 / 2^i). Where every map is a
  multiple of the window and larger than it (e.g. 448x672), this equals timm's model built with
  that `img_size`.
* `dynamic_img_size=True` (or `strict_img_size=False`): timm's rule at every input whose height and
  width are multiples of the patch size (4), as timm's twin built that way; windows keep their
  construction-time size (clamped for `img_size`), maps are padded, masks are built per size.
* `set_input_size(img_size=..., window_size=..., window_ratio=...)` re-targets a built model
  (the bias tables are interpolated), as timm's does.
Other sizes raise a ValueError that names the rule.

Features: `features_only=True` returns NHWC maps like timm's Swin (NCHW with `feature_cls='getter'`),
with timm's `feature_info` (modules `layers.i`), and loads the `state_dict()` of timm's
`features_only` Swin. `feature_norms=True` adds the official dense backbone's per-output norms
(`norm0..norm3`), so the `backbone.*` of its checkpoints (e.g. `mask_rcnn_swin_tiny_patch4_window7_1x.pth`,
`upernet_swin_tiny_patch4_window7_512x512.pth`) loads and gives its feature maps.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, Mlp, PatchEmbed, calculate_drop_path_rates, resample_patch_embed, \
    resize_rel_pos_bias_table, to_2tuple
from timm.models import generate_default_cfgs
from timm.models._input import update_model_input_size

from ..layers import MetaFormerBlock, Stage
from ..layers.patch_merging import PatchMerging
from ..layers.window import clamp_window_to_map
from ..layers.window_attention import ShiftedWindowAttention
from ._base import HierarchicalBackbone, ZooFeatureGetterNet, _is_tracing, build_zoo_model
from ._dense import FeatureNormsMixin, backbone_state, take_feature_norms
from ._init import init_linear_layernorm
from ._registry import register_model

__all__ = ["SwinTransformer", "checkpoint_filter_fn"]

WindowSpec = int | tuple[int, int] | Sequence[int | tuple[int, int]]


def _stage_windows(window_size: WindowSpec, num_stages: int) -> tuple[tuple[int, int], ...]:
    """One (h, w) window per stage from an int, an (h, w) pair, or one int/pair per stage."""
    if isinstance(window_size, int):
        window_size = (window_size,) * num_stages
    elif len(window_size) == 2 and all(isinstance(w, int) for w in window_size):  # one (h, w) for all
        window_size = (tuple(window_size),) * num_stages
    if len(window_size) != num_stages:
        raise ValueError(f"window_size needs one entry per stage ({num_stages}), got {window_size}")
    windows = tuple(to_2tuple(w) for w in window_size)
    if any(w < 1 for ws in windows for w in ws):
        raise ValueError(f"window sizes must be positive, got {windows}")
    return windows


def _stage_feat_sizes(grid: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
    """Feature map size of each stage: the patch grid, halved (rounding up) per PatchMerging."""
    return [tuple(-(-g // 2 ** i) for g in grid) for i in range(num_stages)]


def swin_block(
        dim: int,
        num_heads: int,
        window_size: tuple[int, int],
        shift_size: tuple[int, int],
        dense_shift_size: tuple[int, int] | None = None,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
) -> MetaFormerBlock:
    """The Swin block: the generic MetaFormer block with a shifted-window attention mixer."""
    return MetaFormerBlock(
        dim,
        token_mixer=ShiftedWindowAttention(
            dim, num_heads, window_size, shift_size, head_dim=head_dim, qkv_bias=qkv_bias,
            attn_drop=attn_drop, proj_drop=proj_drop, dense_shift_size=dense_shift_size),
        mlp=Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop),
        norm_layer=norm_layer,
        drop_path=drop_path,
    )


def _dense_shift(window: tuple[int, int], shifted: bool) -> tuple[int, int]:
    """The official dense backbone's shift: window // 2 in every second block, never clamped."""
    return (window[0] // 2, window[1] // 2) if shifted else (0, 0)


class SwinFeatures(ZooFeatureGetterNet):
    """`features_only` Swin: NHWC maps by default, as timm's Swin FeatureListNet returns them."""

    def __init__(self, model: nn.Module, out_indices: Any = 4, output_fmt: str = "NHWC", **kwargs: Any) -> None:
        super().__init__(model, out_indices=out_indices, output_fmt=output_fmt, **kwargs)


class SwinTransformer(FeatureNormsMixin, HierarchicalBackbone):
    """Swin Transformer v1 on the zoo's hierarchical base (NHWC stages).

    Args mirror timm's `SwinTransformer`: img_size, patch_size, in_chans, num_classes,
    global_pool, embed_dim, depths, num_heads, head_dim, window_size (int, (h, w), or one per
    stage), always_partition, strict_img_size, dynamic_img_size, mlp_ratio, qkv_bias, drop_rate,
    proj_drop_rate, attn_drop_rate, drop_path_rate, norm_layer, act_layer; and `feature_norms`
    (a LayerNorm per stage output in `forward_intermediates` / `features_only`, the official
    dense backbone's `norm0..norm3`).
    """

    output_fmt = "NHWC"
    features_fmt = "NHWC"  # timm's Swin features are NHWC
    no_weight_decay_keys = ("relative_position_bias_table",)
    min_input_size = 32
    __jit_unused_properties__ = ["layers"]

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            head_dim: int | None = None,
            window_size: WindowSpec = 7,
            always_partition: bool = False,
            strict_img_size: bool = True,
            dynamic_img_size: bool = False,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            act_layer: Callable[[], nn.Module] = nn.GELU,
            feature_norms: bool = False,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(f"num_heads needs one entry per stage ({num_stages}), got {num_heads}")
        self.strict_img_size = strict_img_size and not dynamic_img_size
        self.dynamic_img_size = not self.strict_img_size
        self.always_partition = always_partition
        dims = [int(embed_dim * 2 ** i) for i in range(num_stages)]

        # sizes are checked by check_img_size; the stem pads to the patch size (the dense rule)
        self.stem = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=dims[0],
            norm_layer=norm_layer, strict_img_size=False, dynamic_img_pad=True, output_fmt="NHWC")
        self._dense_rule = False
        grid = tuple(self.stem.grid_size)
        windows = _stage_windows(window_size, num_stages)
        # set_input_size() scales these with the patch grid
        self._ref_windows, self._ref_grid = windows, grid

        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        for i, feat in enumerate(_stage_feat_sizes(grid, num_stages)):
            win, shift = clamp_window_to_map(feat, windows[i], tuple(w // 2 for w in windows[i]), always_partition)
            blocks = [
                swin_block(
                    dims[i], num_heads[i], win, shift if j % 2 else (0, 0), _dense_shift(win, j % 2 == 1),
                    head_dim=head_dim,
                    mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                    drop_path=dpr[i][j], norm_layer=norm_layer, act_layer=act_layer)
                for j in range(depths[i])
            ]
            down = PatchMerging(dims[i - 1], dims[i], norm_layer=norm_layer) if i else None
            stages.append(Stage(blocks, downsample=down))
        self.stages = nn.Sequential(*stages)
        self.norm = norm_layer(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC")
        self.init_feature_norms(feature_norms, dims, norm_layer)
        self.init_contract(
            in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, dims=dims,
            reductions=[patch_size * 2 ** i for i in range(num_stages)])
        for i, info in enumerate(self.feature_info):
            info["module"] = f"layers.{i}"  # timm's Swin names its stages `layers`
        # what the image size must be a multiple of: nothing (the stem pads) unless timm's dynamic rule
        self.input_divisor = 1 if self.strict_img_size else max(self.stem.patch_size)
        self.apply(init_linear_layernorm)

    @torch.jit.ignore
    def timm_feature_view(self) -> nn.Module:
        """timm's module names, for feature_cls 'list' / 'dict' / 'hook' (and their state dict keys)."""
        return _TimmNamedSwin(self)

    @property
    def layers(self) -> nn.Sequential:
        """The stages under timm's name, so `feature_info` module names resolve (`get_submodule('layers.0')`)."""
        return self.stages

    @torch.no_grad()
    def _init_family_weights(self) -> None:
        """`init_weights()`: each window mixer's bias table (trunc_normal 0.02) and its offset index (a
        non-persistent buffer, garbage after `to_empty()`) for its current window; Linear/LayerNorm as built."""
        from ..layers.window import relative_position_index
        from timm.layers import trunc_normal_
        for m in self.modules():
            if isinstance(m, ShiftedWindowAttention):
                trunc_normal_(m.relative_position_bias_table, std=0.02)
                idx = m.relative_position_index
                idx.copy_(relative_position_index(*m.window_size, device=idx.device))
                m._masks.clear()
        super()._init_family_weights()

    # ---- input sizes ------------------------------------------------------------------------
    def check_img_size(self, height: int, width: int) -> None:
        name = type(self).__name__
        if self.strict_img_size:
            if height < self.min_input_size or width < self.min_input_size:
                m = self.min_input_size
                raise ValueError(f"{name} needs images of at least {m}x{m}, got {height}x{width}")
            return
        ph, pw = self.stem.patch_size
        if height < ph or width < pw or height % ph or width % pw:
            raise ValueError(
                f"{name} with dynamic_img_size needs image height and width that are positive multiples "
                f"of the patch size {ph}x{pw}, got {height}x{width}")

    def scripted_input_rule(self, x: torch.Tensor) -> None:
        """The window rule for this input size: the built rule at `img_size` (and always with
        `dynamic_img_size`), the dense rule otherwise; sets every window mixer's `dense_rule` when it
        changes. Eager runs it from `check_input`, a TorchScript copy from the base's forward."""
        img_size = self.stem.img_size
        dense = False
        if self.strict_img_size and img_size is not None:
            dense = int(x.shape[-2]) != img_size[0] or int(x.shape[-1]) != img_size[1]
        if dense != self._dense_rule:
            for stage in self.stages:
                for blk in stage.blocks:
                    blk.token_mixer.dense_rule = dense
            self._dense_rule = dense

    def check_input(self, x: torch.Tensor) -> None:
        """The base's checks, then the window rule for this input size: the base's forward_features and
        forward_intermediates (features_only too) call this first, so both run under the right rule
        (not while FX traces: sizes unknown)."""
        super().check_input(x)
        if not _is_tracing():
            self.scripted_input_rule(x)

    @torch.jit.ignore
    def set_input_size(
            self,
            img_size: int | tuple[int, int] | None = None,
            patch_size: int | tuple[int, int] | None = None,
            window_size: WindowSpec | None = None,
            window_ratio: int | Sequence[int] | None = None,
            always_partition: bool | None = None,
    ) -> None:
        """Re-target the model to a new image size / window size, as timm's `set_input_size`.

        Without `window_size`/`window_ratio` every stage's window is scaled with the patch grid
        (so calling it at the current size changes nothing); `window_ratio` sets each window to
        the patch grid divided by the ratio. Bias tables are interpolated to the new windows.
        """
        num_stages = len(self.stages)
        if window_size is not None:
            windows = _stage_windows(window_size, num_stages)
        if window_ratio is not None and window_size is None:
            ratios = (window_ratio,) * num_stages if isinstance(window_ratio, int) else tuple(window_ratio)
            if len(ratios) != num_stages or any(r < 1 for r in ratios):
                raise ValueError(f"window_ratio needs one positive int or one per stage, got {window_ratio}")
        if img_size is not None or patch_size is not None:
            self.stem.set_input_size(img_size=img_size, patch_size=patch_size)
        if patch_size is not None:
            for i, info in enumerate(self.feature_info):
                info["reduction"] = max(self.stem.patch_size) * 2 ** i
            self.input_divisor = 1 if self.strict_img_size else max(self.stem.patch_size)
        grid = tuple(self.stem.grid_size)
        if window_size is None and window_ratio is not None:
            windows = tuple((max(1, grid[0] // r), max(1, grid[1] // r)) for r in ratios)
        elif window_size is None:
            windows = tuple(
                tuple(max(1, w * g // r) for w, g, r in zip(ws, grid, self._ref_grid)) for ws in self._ref_windows)
        if window_size is not None or window_ratio is not None:
            self._ref_windows, self._ref_grid = windows, grid
        if always_partition is not None:
            self.always_partition = always_partition
        for i, (stage, feat) in enumerate(zip(self.stages, _stage_feat_sizes(grid, num_stages))):
            shift = tuple(w // 2 for w in windows[i])
            win, shift = clamp_window_to_map(feat, windows[i], shift, self.always_partition)
            for j, blk in enumerate(stage.blocks):
                blk.token_mixer.set_window_size(win, shift if j % 2 else (0, 0), _dense_shift(win, j % 2 == 1))
        update_model_input_size(
            self, self.stem.img_size, patch_size=patch_size, window_size=windows, always_partition=always_partition)

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """As the base, and the head (sized for the last stage) goes too when stages are cut, like timm."""
        num_stages = len(self.stages)
        take = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        self._ref_windows = self._ref_windows[:len(self.stages)]
        if len(self.stages) < num_stages:
            self.head = ClassifierHead(self.num_features, 0, pool_type="", input_fmt="NHWC")
            self.num_classes, self.global_pool = 0, ""
        return take


def _rename(key: str, official: bool) -> str:
    """timm / official key -> ours."""
    if official:
        # official: downsample at the END of stage i; ours/timm's at the START of stage i+1
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
    # `patch_embed` / `layers_i`: timm's features_only FeatureListNet flattens `layers` into `layers_i`
    # (and the feature wrapper's key hook may hand `patch_embed` over split as `patch.embed`)
    key = re.sub(r"^patch[._]embed\.", "stem.", key)
    key = re.sub(r"^layers[._](\d+)\.", r"stages.\1.", key)
    return key.replace(".attn.", ".token_mixer.")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SwinTransformer) -> dict[str, torch.Tensor]:
    """Map a timm or official (microsoft/Swin-Transformer) Swin state dict onto this model.

    * timm: `patch_embed.*` -> `stem.*`, `layers.i.*` -> `stages.i.*`, `.attn.` -> `.token_mixer.`.
    * official: as timm's, plus the downsample of stage i moves to the start of stage i+1 and
      `head.weight/bias` -> `head.fc.weight/bias`. PatchMerging's channel order (x0, x1, x2, x3)
      is the same in both layouts, so its weights are used as they are.
    * buffers `attn_mask` / `relative_position_index` are dropped (rebuilt here);
      `absolute_pos_embed` (ape=True) is not supported and raises.
    * a patch-embed kernel of another size is resampled, and bias tables whose window differs
      from the model's are interpolated (timm's `resize_rel_pos_bias_table`).
    * timm's `features_only` state dict (`layers_i.*`, FeatureListNet's flattened names) as timm's.
    * official detection / segmentation checkpoints (Swin-Transformer-Object-Detection, saved by
      mmdet / mmseg): the `backbone.` keys in the official layout, with the per-output norms
      `norm{i}` -> `feature_norms.{i}` (the model needs `feature_norms=True`).
    """
    state_dict = backbone_state(state_dict)
    if any(k.startswith("stages.") for k in state_dict):
        return state_dict  # already ours
    state_dict = take_feature_norms(state_dict, r"^norm(\d+)\.", model)
    official = "layers.0.downsample.reduction.weight" in state_dict
    out = {}
    for k, v in state_dict.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            continue
        if "absolute_pos_embed" in k:
            raise ValueError("checkpoint has absolute_pos_embed (ape=True), which vitzoo's Swin does not support")
        k = _rename(k, official)
        if k == "stem.proj.weight" and v.shape[-2:] != model.stem.proj.weight.shape[-2:]:
            v = resample_patch_embed(
                v, list(model.stem.proj.weight.shape[-2:]), interpolation="bicubic", antialias=True)
        if k.endswith("relative_position_bias_table"):
            mixer = model.get_submodule(k.rsplit(".", 1)[0])
            target = mixer.relative_position_bias_table
            if v.shape != target.shape or mixer.window_size[0] != mixer.window_size[1]:
                v = resize_rel_pos_bias_table(v, new_window_size=mixer.window_size, new_bias_shape=target.shape)
        out[k] = v
    return out


class _TimmNamedSwin(nn.Module):
    """A Swin's modules under the names timm's Swin gives them (`patch_embed`, `layers`, `norm`), with
    its `feature_info`: what timm's list / dict / hook feature wrappers walk and its fx wrapper traces."""

    def __init__(self, model: SwinTransformer) -> None:
        super().__init__()
        self.patch_embed, self.layers, self.norm = model.stem, model.stages, model.norm
        self.feature_info = model.feature_info

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """For `feature_cls='fx'`, which traces it (built window rule, as timm's fx Swin)."""
        return self.norm(self.layers(self.patch_embed(x)))


def _create_swin(variant: str, pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    if kwargs.get("features_only") and "feature_cls" not in kwargs:
        kwargs["feature_cls"] = SwinFeatures  # NHWC, as timm's Swin; feature_cls='getter' gives NCHW
    return build_zoo_model(SwinTransformer, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj", "classifier": "head.fc", "license": "mit", **kwargs,
    }


_REL = "https://github.com/SwinTransformer/storage/releases/download"
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
_22K = dict(num_classes=21841)


def _timm(name: str, url: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """A cfg for timm's weights `name` (`model.tag`), with the official checkpoint as url."""
    return f"vitzoo_{name}", _cfg(hf_hub_id=f"timm/{name}", url=url, **kwargs)


# order matters: the first tag of each model is its default (same order as timm)
default_cfgs = generate_default_cfgs(dict([
    _timm("swin_small_patch4_window7_224.ms_in22k_ft_in1k",
          f"{_REL}/v1.0.8/swin_small_patch4_window7_224_22kto1k_finetune.pth"),
    _timm("swin_base_patch4_window7_224.ms_in22k_ft_in1k", f"{_REL}/v1.0.0/swin_base_patch4_window7_224_22kto1k.pth"),
    _timm("swin_base_patch4_window12_384.ms_in22k_ft_in1k",
          f"{_REL}/v1.0.0/swin_base_patch4_window12_384_22kto1k.pth", **_384),
    _timm("swin_large_patch4_window7_224.ms_in22k_ft_in1k", f"{_REL}/v1.0.0/swin_large_patch4_window7_224_22kto1k.pth"),
    _timm("swin_large_patch4_window12_384.ms_in22k_ft_in1k",
          f"{_REL}/v1.0.0/swin_large_patch4_window12_384_22kto1k.pth", **_384),
    _timm("swin_tiny_patch4_window7_224.ms_in1k", f"{_REL}/v1.0.0/swin_tiny_patch4_window7_224.pth"),
    _timm("swin_small_patch4_window7_224.ms_in1k", f"{_REL}/v1.0.0/swin_small_patch4_window7_224.pth"),
    _timm("swin_base_patch4_window7_224.ms_in1k", f"{_REL}/v1.0.0/swin_base_patch4_window7_224.pth"),
    _timm("swin_base_patch4_window12_384.ms_in1k", f"{_REL}/v1.0.0/swin_base_patch4_window12_384.pth", **_384),
    _timm("swin_tiny_patch4_window7_224.ms_in22k_ft_in1k",
          f"{_REL}/v1.0.8/swin_tiny_patch4_window7_224_22kto1k_finetune.pth"),
    _timm("swin_tiny_patch4_window7_224.ms_in22k", f"{_REL}/v1.0.8/swin_tiny_patch4_window7_224_22k.pth", **_22K),
    _timm("swin_small_patch4_window7_224.ms_in22k", f"{_REL}/v1.0.8/swin_small_patch4_window7_224_22k.pth", **_22K),
    _timm("swin_base_patch4_window7_224.ms_in22k", f"{_REL}/v1.0.0/swin_base_patch4_window7_224_22k.pth", **_22K),
    _timm("swin_base_patch4_window12_384.ms_in22k",
          f"{_REL}/v1.0.0/swin_base_patch4_window12_384_22k.pth", **_384, **_22K),
    _timm("swin_large_patch4_window7_224.ms_in22k", f"{_REL}/v1.0.0/swin_large_patch4_window7_224_22k.pth", **_22K),
    _timm("swin_large_patch4_window12_384.ms_in22k",
          f"{_REL}/v1.0.0/swin_large_patch4_window12_384_22k.pth", **_384, **_22K),
    # no released weights at these settings (timm has no such models): architecture only
    ("vitzoo_swin_tiny_patch4_window12_384", _cfg(**_384)),
    ("vitzoo_swin_small_patch4_window12_384", _cfg(**_384)),
]))

_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))


def _variant(name: str, size: dict[str, Any], window: int, pretrained: bool, kwargs: dict) -> SwinTransformer:
    """img_size comes from the cfg's input_size (timm fills it in for fixed-size models)."""
    args = dict(patch_size=4, window_size=window, **size)
    return _create_swin(name, pretrained=pretrained, **dict(args, **kwargs))


@register_model
def vitzoo_swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-T, 224x224, window 7 (28.3M)."""
    return _variant("vitzoo_swin_tiny_patch4_window7_224", _TINY, 7, pretrained, kwargs)


@register_model
def vitzoo_swin_small_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-S, 224x224, window 7 (49.6M)."""
    return _variant("vitzoo_swin_small_patch4_window7_224", _SMALL, 7, pretrained, kwargs)


@register_model
def vitzoo_swin_base_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-B, 224x224, window 7 (87.8M)."""
    return _variant("vitzoo_swin_base_patch4_window7_224", _BASE, 7, pretrained, kwargs)


@register_model
def vitzoo_swin_large_patch4_window7_224(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-L, 224x224, window 7 (196.5M)."""
    return _variant("vitzoo_swin_large_patch4_window7_224", _LARGE, 7, pretrained, kwargs)


@register_model
def vitzoo_swin_tiny_patch4_window12_384(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-T, 384x384, window 12 (no released weights)."""
    return _variant("vitzoo_swin_tiny_patch4_window12_384", _TINY, 12, pretrained, kwargs)


@register_model
def vitzoo_swin_small_patch4_window12_384(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-S, 384x384, window 12 (no released weights)."""
    return _variant("vitzoo_swin_small_patch4_window12_384", _SMALL, 12, pretrained, kwargs)


@register_model
def vitzoo_swin_base_patch4_window12_384(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-B, 384x384, window 12."""
    return _variant("vitzoo_swin_base_patch4_window12_384", _BASE, 12, pretrained, kwargs)


@register_model
def vitzoo_swin_large_patch4_window12_384(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin-L, 384x384, window 12."""
    return _variant("vitzoo_swin_large_patch4_window12_384", _LARGE, 12, pretrained, kwargs)
