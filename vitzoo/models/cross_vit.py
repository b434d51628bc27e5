"""CrossViT: two ViT branches (small and large patches) that exchange CLS tokens by cross-attention.

Paper: "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification"
(ICCV 2021, https://arxiv.org/abs/2103.14899). Official code: https://github.com/IBM/CrossViT;
timm has the family (timm/models/crossvit.py) and its weights, which load here unchanged in
value. Names follow timm, which renamed the official `*_224` / `*_384` models to the input they
take, `*_240` / `*_408`: the small-patch branch (12 px) sees the 240 (408) image, the large-patch
branch (16 px) that image resized bicubically to 224 (384).

Layout: per branch, patch embed (a conv, or the 3-conv "dagger" stem) -> CLS + abs pos embed;
then multi-scale blocks, each = the branches' own ViT blocks (the shared `vit_block`) followed
by the fusion: every branch's CLS token, projected to the other branch's width, attends to the
other branch's patch tokens (`vitzoo.layers.cross_attention`) and is projected back; then a
LayerNorm and a classifier per branch, the logits averaged.

EViT token reorganisation (off by default; not in the official code): `token_reorg_locs` gives,
per branch, block indices within each multi-scale block, e.g. `((), (1,))` = the second ViT
block of the large-patch branch in every multi-scale block. Those blocks keep the
`ceil(keep_rate * n)` patch tokens their CLS token attends to most and (with `fuse_token`) fuse
the rest into one token, exactly EViT's rule (vitzoo.layers.token_reorg). The cross-attention
fusion then attends over the other branch's remaining tokens; the heads read the CLS tokens.
`keep_rate=1.0` is exactly the model without reorganisation; `set_keep_rate` is the hook the
training script's `--keep-rate-warmup` drives.
"""
import re
from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import calculate_drop_path_rates, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from vitzoo.layers.cross_attention import CrossAttentionBlock
from vitzoo.layers.token_reorg import check_keep_rate, check_reorg_locs, set_keep_rate, token_reorg_for
from vitzoo.layers.vit_block import vit_block

from ._base import ZooModel, build_zoo_model
from ._init import init_linear_layernorm
from ._registry import register_model

__all__ = ["CrossViT", "MultiScaleBlock", "checkpoint_filter_fn"]


def _layer_norm(dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=1e-6)


class BranchPatchEmbed(nn.Module):
    """Image -> `[B, N, C]` patch tokens: one conv, or the 'dagger' 3-conv stem (`multi_conv`)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, multi_conv: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        if not multi_conv:
            self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
            return
        if patch_size not in (12, 16):
            raise ValueError(f"the multi-conv (dagger) stem exists for patch sizes 12 and 16, got {patch_size}")
        s2, p2 = (3, 0) if patch_size == 12 else (2, 1)
        s3 = 1 if patch_size == 12 else 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 4, 7, stride=4, padding=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dim // 4, embed_dim // 2, 3, stride=s2, padding=p2),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dim // 2, embed_dim, 3, stride=s3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _proj(dim_in: int, dim_out: int) -> nn.Sequential:
    """LayerNorm -> GELU -> Linear, the CLS-token width change between branches."""
    return nn.Sequential(_layer_norm(dim_in), nn.GELU(), nn.Linear(dim_in, dim_out))


class MultiScaleBlock(nn.Module):
    """Each branch's ViT blocks, then CLS-token fusion across branches (branch b's CLS queries b+1's patches).

    `depth` is (blocks of branch 0, blocks of branch 1, ..., fusion depth); with fusion depth 0,
    as in every released model, each fusion is one cross-attention block. `token_reorg_locs`
    (optional, one sequence per branch) makes those blocks of each branch EViT blocks.
    """

    def __init__(
            self,
            dims: Sequence[int],
            depth: Sequence[int],
            num_heads: Sequence[int],
            mlp_ratio: Sequence[float],
            qkv_bias: bool = True,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: Sequence[float] = (0.0,),
            token_reorg_locs: Sequence[Sequence[int]] | None = None,
            keep_rate: float = 0.7,
            fuse_token: bool = True,
    ) -> None:
        super().__init__()
        nb = self.num_branches = len(dims)
        locs = token_reorg_locs or ((),) * nb
        self.blocks = nn.ModuleList([
            nn.Sequential(*[
                vit_block(dims[b], num_heads[b], mlp_ratio[b], qkv_bias, drop_path=drop_path[i],
                          proj_drop=proj_drop, attn_drop=attn_drop, norm_layer=_layer_norm,
                          token_reorg=token_reorg_for(i, locs[b], keep_rate, fuse_token))
                for i in range(depth[b])
            ])
            for b in range(nb)
        ])
        self.projs = nn.ModuleList([_proj(dims[b], dims[(b + 1) % nb]) for b in range(nb)])

        def fusion_block(b: int) -> nn.Module:
            other = (b + 1) % nb
            return CrossAttentionBlock(dims[other], num_heads[other], qkv_bias=qkv_bias, proj_drop=proj_drop,
                                       attn_drop=attn_drop, drop_path=drop_path[-1], norm_layer=_layer_norm)

        self.fusion = nn.ModuleList([
            fusion_block(b) if depth[-1] == 0 else nn.Sequential(*[fusion_block(b) for _ in range(depth[-1])])
            for b in range(nb)
        ])
        self.revert_projs = nn.ModuleList([_proj(dims[(b + 1) % nb], dims[b]) for b in range(nb)])

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        # module lists are iterated with enumerate/zip only: TorchScript cannot index them by a variable
        ys: List[torch.Tensor] = []
        for b, blocks in enumerate(self.blocks):
            ys.append(blocks(xs[b]))
        outs: List[torch.Tensor] = []
        for b, (proj, fusion, revert_proj) in enumerate(zip(self.projs, self.fusion, self.revert_projs)):
            other = ys[(b + 1) % self.num_branches]
            cls = fusion(torch.cat((proj(ys[b][:, :1]), other[:, 1:]), dim=1))
            outs.append(torch.cat((revert_proj(cls), ys[b][:, 1:]), dim=1))
        return outs


class BranchHeads(nn.Module):
    """Pool each branch ('token': CLS, 'avg': mean of patches), classify each, average the logits."""

    def __init__(self, dims: Sequence[int], num_classes: int, pool_type: str = "token", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.pool_type = self._check_pool(pool_type)
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes)

    @staticmethod
    def _check_pool(pool_type: str) -> str:
        if pool_type not in ("token", "avg"):
            raise ValueError(f"CrossViT's global_pool must be 'token' or 'avg', got {pool_type!r}")
        return pool_type

    def _make_fc(self, num_classes: int) -> nn.ModuleList:
        return nn.ModuleList([nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity() for d in self.dims])

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type:
            self.pool_type = self._check_pool(pool_type)
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes)

    def forward(self, xs: List[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        pooled = [self.drop(x[:, 1:].mean(dim=1) if self.pool_type == "avg" else x[:, 0]) for x in xs]
        if pre_logits or self.num_classes == 0:
            return torch.cat(pooled, dim=1)
        logits: List[torch.Tensor] = []
        for b, fc in enumerate(self.fc):
            logits.append(fc(pooled[b]))
        return torch.stack(logits).mean(dim=0)


@register_notrace_function  # branches on the input's shape: an FX leaf (public name: FX autowraps no `_name`)
def scale_branch_image(x: torch.Tensor, size: Tuple[int, int], crop: bool) -> torch.Tensor:
    """The branch's view of the image: unchanged at the branch's size, else centre-cropped (`crop`,
    when the image is at least that large) or bicubically resized to it - timm's rule, so any input
    size works and every branch always sees its built size (its position-embedding grid)."""
    H, W = x.shape[-2], x.shape[-1]
    if H == size[0] and W == size[1]:
        return x
    if crop and size[0] <= H and size[1] <= W:
        top, left = int(round((H - size[0]) / 2.0)), int(round((W - size[1]) / 2.0))
        return x[:, :, top:top + size[0], left:left + size[1]]
    return F.interpolate(x, size=[size[0], size[1]], mode="bicubic", align_corners=False)


class CrossViT(ZooModel):
    """Two-branch CrossViT (timm's `CrossVit`, same parameter names but `token_mixer` / `head.fc`).

    Args:
        img_size: the size the branches are built for; branch b sees the image resized (or, with
            `crop_scale`, centre-cropped) to `img_size * img_scale[b]`, whatever the input size (timm's
            rule: any input of at least 1x1 works; features always have the built grids).
        img_scale: per branch, the factor its view of the image is resized by (timm: (1, 224/240)).
        patch_size, embed_dim, num_heads: per branch.
        depth: per multi-scale block, (branch-0 blocks, branch-1 blocks, fusion depth).
        mlp_ratio: per branch (the last entry, the fusion's, is unused as in the official code).
        multi_conv: the 3-conv 'dagger' patch stem; crop_scale: crop instead of resize.
        token_reorg_locs: EViT token reorganisation (off by default): one sequence per branch of
            0-based block indices within every multi-scale block, e.g. `((), (1,))`; each index must
            exist in that branch in every multi-scale block. keep_rate / fuse_token: as in EViT.

    `forward_features` returns one `[B, 1 + N_b, C_b]` tensor per branch. Intermediates are the
    patch tokens of each branch after each multi-scale block, indexed branch-major (index
    b * num_blocks + i), as timm does; once tokens were dropped they come back as NLC.
    """

    no_weight_decay_keys = ("cls_token_*", "pos_embed_*")

    def __init__(
            self,
            img_size: int | tuple[int, int] = 240,
            img_scale: Sequence[float] = (1.0, 224 / 240),
            patch_size: Sequence[int] = (12, 16),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            embed_dim: Sequence[int] = (192, 384),
            depth: Sequence[Sequence[int]] = ((1, 4, 0),) * 3,
            num_heads: Sequence[int] = (6, 6),
            mlp_ratio: Sequence[float] = (4.0, 4.0, 1.0),
            multi_conv: bool = False,
            crop_scale: bool = False,
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            token_reorg_locs: Sequence[Sequence[int] | None] | None = None,
            keep_rate: float = 0.7,
            fuse_token: bool = True,
    ) -> None:
        super().__init__()
        if not (len(patch_size) == len(embed_dim) == len(num_heads) == len(img_scale) == 2):
            raise ValueError("CrossViT has two branches: patch_size, embed_dim, num_heads and img_scale need 2 entries")
        if any(len(cfg) != 3 for cfg in depth):
            raise ValueError(f"each depth entry is (branch-0 blocks, branch-1 blocks, fusion depth), got {depth}")
        reorg_locs = _check_branch_reorg_locs(token_reorg_locs, depth, len(embed_dim))
        self.token_reorg_locs = reorg_locs
        self.target_keep_rate = check_keep_rate(keep_rate)
        self.fuse_token = bool(fuse_token)
        self.img_size = tuple(to_2tuple(img_size))
        self.img_size_scaled = [(int(self.img_size[0] * scale), int(self.img_size[1] * scale)) for scale in img_scale]
        self.crop_scale = crop_scale
        self.num_branches = 2
        self.embed_dim = tuple(embed_dim)
        self.patch_size = tuple(patch_size)
        grids = [(h // p, w // p) for (h, w), p in zip(self.img_size_scaled, patch_size)]
        self.grid_sizes = grids

        self.patch_embed = nn.ModuleList([
            BranchPatchEmbed(p, in_chans, d, multi_conv) for p, d in zip(patch_size, embed_dim)])
        for b, ((gh, gw), d) in enumerate(zip(grids, embed_dim)):
            setattr(self, f"cls_token_{b}", nn.Parameter(torch.zeros(1, 1, d)))
            setattr(self, f"pos_embed_{b}", nn.Parameter(torch.zeros(1, 1 + gh * gw, d)))
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = calculate_drop_path_rates(drop_path_rate, sum(sum(cfg[-2:]) for cfg in depth))
        blocks, start = [], 0
        for cfg in depth:
            n = max(cfg[:-1]) + cfg[-1]
            blocks.append(MultiScaleBlock(embed_dim, cfg, num_heads, mlp_ratio, qkv_bias, proj_drop_rate,
                                          attn_drop_rate, drop_path=dpr[start:start + n],
                                          token_reorg_locs=reorg_locs, keep_rate=keep_rate, fuse_token=fuse_token))
            start += n
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.ModuleList([_layer_norm(d) for d in embed_dim])
        self.head = BranchHeads(embed_dim, num_classes, global_pool, drop_rate)

        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = sum(embed_dim)
        self.num_feature_blocks = len(depth)
        self.feature_info = [
            dict(num_chs=embed_dim[b], reduction=round(patch_size[b] / img_scale[b]), module=f"blocks.{i}")
            for b in range(self.num_branches) for i in range(self.num_feature_blocks)
        ]
        self.grad_checkpointing = False

        self._init_family_weights()

    def _init_family_weights(self) -> None:
        for b in range(self.num_branches):
            trunc_normal_(getattr(self, f"pos_embed_{b}"), std=0.02)
            trunc_normal_(getattr(self, f"cls_token_{b}"), std=0.02)
        self.apply(init_linear_layernorm)

    def set_keep_rate(self, rate: float | None) -> None:
        """Keep rate of every reorganising block (the warm-up schedule sets it); None: back to the target."""
        set_keep_rate(self, rate)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def _embed(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not torch.jit.is_scripting():
            self.check_input(x)
        xs: List[torch.Tensor] = []
        for b, patch_embed in enumerate(self.patch_embed):
            t = patch_embed(scale_branch_image(x, self.img_size_scaled[b], self.crop_scale))
            # two branches (checked at build); named explicitly for TorchScript (no getattr by name)
            cls = self.cls_token_0 if b == 0 else self.cls_token_1
            pos = self.pos_embed_0 if b == 0 else self.pos_embed_1
            xs.append(self.pos_drop(torch.cat((cls.expand(t.shape[0], -1, -1), t), dim=1) + pos))
        return xs

    def _run_block(self, blk: nn.Module, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(blk, xs, use_reentrant=False)
        return blk(xs)

    def forward_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        xs = self._embed(x)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                xs = checkpoint(blk, xs, use_reentrant=False)
            else:
                xs = blk(xs)
        out: List[torch.Tensor] = []
        for b, norm in enumerate(self.norm):
            out.append(norm(xs[b]))
        return out

    def forward_head(self, xs: List[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        return self.head(xs, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Patch tokens of each branch after each multi-scale block, branch-major, as NCHW/NHWC maps or NLC."""
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        nblk = self.num_feature_blocks
        take_indices, _ = feature_take_indices(self.num_branches * nblk, indices)
        last_block = max(i % nblk for i in take_indices)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[:last_block + 1]
        per_branch: list[list[torch.Tensor]] = [[] for _ in range(self.num_branches)]
        xs = self._embed(x)
        for i, blk in enumerate(blocks):
            xs = self._run_block(blk, xs)
            for b in range(self.num_branches):
                if b * nblk + i in take_indices:
                    per_branch[b].append((self.norm[b](xs[b]) if norm else xs[b])[:, 1:])
        intermediates = []
        for b, feats in enumerate(per_branch):
            gh, gw = self.grid_sizes[b]
            for t in feats:
                if output_fmt != "NLC" and t.shape[1] == gh * gw:  # tokens dropped: NLC
                    t = t.reshape(t.shape[0], gh, gw, -1)
                    t = t.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else t
                intermediates.append(t)
        if intermediates_only:
            return intermediates
        return [n(t) for n, t in zip(self.norm, xs)], intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the multi-scale blocks after the last one any index needs (and the norms/head if asked)."""
        nblk = self.num_feature_blocks
        take_indices, _ = feature_take_indices(self.num_branches * nblk, indices)
        self.blocks = self.blocks[:max(i % nblk for i in take_indices) + 1]
        if prune_norm:
            self.norm = nn.ModuleList([nn.Identity() for _ in range(self.num_branches)])
        if prune_head:
            self.reset_classifier(0)
        return take_indices


def _check_branch_reorg_locs(
        spec: Sequence[Sequence[int] | None] | None,
        depth: Sequence[Sequence[int]],
        num_branches: int,
) -> tuple[tuple[int, ...], ...]:
    """Per-branch reorganising block indices, each valid in that branch of every multi-scale block."""
    if spec is None:
        return ((),) * num_branches
    if isinstance(spec, (int, str)) or len(spec) != num_branches or any(
            isinstance(s, (int, str)) for s in spec):
        raise ValueError(f"token_reorg_locs is per branch: {num_branches} sequences of block indices "
                         f"(e.g. ((), (1,)) for the second block of branch 1), got {spec!r}")
    out = []
    for b, locs in enumerate(spec):
        blocks = min(cfg[b] for cfg in depth)
        try:
            out.append(check_reorg_locs(locs, blocks))
        except ValueError as e:
            raise ValueError(f"branch {b} has {blocks} ViT block(s) per multi-scale block: {e}") from None
    return tuple(out)


# ---- checkpoints ---------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: dict[str, Any], model: CrossViT) -> dict[str, torch.Tensor]:
    """timm (`pos_embed_0`) or official IBM (`pos_embed.0`, maybe under 'model') weights -> ours.

    Branch ViT blocks' `attn.*` -> `token_mixer.*` (the fusion blocks keep `attn`), `head.i` -> `head.fc.i`.
    """
    state_dict = state_dict.get("model", state_dict)
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^(pos_embed|cls_token)\.(\d+)$", r"\1_\2", k)
        k = re.sub(r"^(blocks\.\d+\.blocks\.\d+\.\d+)\.attn\.", r"\1.token_mixer.", k)
        k = re.sub(r"^head\.(\d+)\.", r"head.fc.\1.", k)
        out[k] = v
    return out


def _create_crossvit(variant: str, pretrained: bool = False, **kwargs: Any) -> CrossViT:
    num_blocks = len(kwargs.get("depth", ((1, 4, 0),) * 3))
    return build_zoo_model(CrossViT, variant, pretrained, filter_fn=checkpoint_filter_fn,
                           default_out_indices=(num_blocks - 1, 2 * num_blocks - 1), **kwargs)


def _cfg(variant: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "hf_hub_id": f"timm/{variant}.in1k",
        "num_classes": 1000, "input_size": (3, 240, 240), "pool_size": None, "crop_pct": 0.875,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "fixed_input_size": True,
        "first_conv": ("patch_embed.0.proj", "patch_embed.1.proj"),
        "classifier": ("head.fc.0", "head.fc.1"),
        "license": "apache-2.0", "paper_ids": "arXiv:2103.14899", "origin_url": "https://github.com/IBM/CrossViT",
        **kwargs,
    }


_DAGGER_CONV = dict(first_conv=("patch_embed.0.proj.0", "patch_embed.1.proj.0"))

default_cfgs = generate_default_cfgs({
    "vitzoo_crossvit_tiny_240.in1k": _cfg("crossvit_tiny_240"),
    "vitzoo_crossvit_small_240.in1k": _cfg("crossvit_small_240"),
    "vitzoo_crossvit_base_240.in1k": _cfg("crossvit_base_240"),
    "vitzoo_crossvit_9_240.in1k": _cfg("crossvit_9_240"),
    "vitzoo_crossvit_15_240.in1k": _cfg("crossvit_15_240"),
    "vitzoo_crossvit_18_240.in1k": _cfg("crossvit_18_240"),
    "vitzoo_crossvit_9_dagger_240.in1k": _cfg("crossvit_9_dagger_240", **_DAGGER_CONV),
    "vitzoo_crossvit_15_dagger_240.in1k": _cfg("crossvit_15_dagger_240", **_DAGGER_CONV),
    "vitzoo_crossvit_15_dagger_408.in1k": _cfg(
        "crossvit_15_dagger_408", input_size=(3, 408, 408), crop_pct=1.0, **_DAGGER_CONV),
    "vitzoo_crossvit_18_dagger_240.in1k": _cfg("crossvit_18_dagger_240", **_DAGGER_CONV),
    "vitzoo_crossvit_18_dagger_408.in1k": _cfg(
        "crossvit_18_dagger_408", input_size=(3, 408, 408), crop_pct=1.0, **_DAGGER_CONV),
})


def _args(dims: tuple[int, int], blocks: int, heads: int, mlp: float, multi_conv: bool = False,
          size: int = 240) -> dict[str, Any]:
    """Config of a released model: widths, large-branch blocks per multi-scale block (x3), heads, MLP ratio."""
    return dict(img_size=size, img_scale=(1.0, (224 / 240) if size == 240 else (384 / 408)), patch_size=(12, 16),
                embed_dim=dims, depth=((1, blocks, 0),) * 3, num_heads=(heads, heads), mlp_ratio=(mlp, mlp, 1.0),
                multi_conv=multi_conv)


@register_model
def vitzoo_crossvit_tiny_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_tiny_240", pretrained, **dict(_args((96, 192), 4, 3, 4.0), **kwargs))


@register_model
def vitzoo_crossvit_small_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_small_240", pretrained, **dict(_args((192, 384), 4, 6, 4.0), **kwargs))


@register_model
def vitzoo_crossvit_base_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_base_240", pretrained, **dict(_args((384, 768), 4, 12, 4.0), **kwargs))


@register_model
def vitzoo_crossvit_9_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_9_240", pretrained, **dict(_args((128, 256), 3, 4, 3.0), **kwargs))


@register_model
def vitzoo_crossvit_15_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_15_240", pretrained, **dict(_args((192, 384), 5, 6, 3.0), **kwargs))


@register_model
def vitzoo_crossvit_18_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_18_240", pretrained, **dict(_args((224, 448), 6, 7, 3.0), **kwargs))


@register_model
def vitzoo_crossvit_9_dagger_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_9_dagger_240", pretrained,
                            **dict(_args((128, 256), 3, 4, 3.0, multi_conv=True), **kwargs))


@register_model
def vitzoo_crossvit_15_dagger_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_15_dagger_240", pretrained,
                            **dict(_args((192, 384), 5, 6, 3.0, multi_conv=True), **kwargs))


@register_model
def vitzoo_crossvit_15_dagger_408(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_15_dagger_408", pretrained,
                            **dict(_args((192, 384), 5, 6, 3.0, multi_conv=True, size=408), **kwargs))


@register_model
def vitzoo_crossvit_18_dagger_240(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_18_dagger_240", pretrained,
                            **dict(_args((224, 448), 6, 7, 3.0, multi_conv=True), **kwargs))


@register_model
def vitzoo_crossvit_18_dagger_408(pretrained: bool = False, **kwargs: Any) -> CrossViT:
    return _create_crossvit("vitzoo_crossvit_18_dagger_408", pretrained,
                            **dict(_args((224, 448), 6, 7, 3.0, multi_conv=True, size=408), **kwargs))
