"""SpectFormer: spectral gating layers first, multi-head attention layers after.

Paper: "SpectFormer: Frequency and Attention is what you need in a Vision Transformer"
(Patro, Namboodiri, Agneeswaran; https://arxiv.org/abs/2304.06446). Official code:
https://github.com/badripatro/SpectFormers (`vanilla_architecture/spectformer.py`,
`hierarchical_architecture/spectformer.py`). Every block is a `vitzoo.layers.MetaFormerBlock`;
the spectral token mixer is `vitzoo.layers.spectral_gating.SpectralGating` (rfft2 -> learnable
complex filter `complex_weight[h, w, C, 2]` -> irfft2).

Vanilla (DeiT-like, `SpectFormer`): 16x16 patch embedding + absolute position embedding (no CLS
token) -> `alpha = 4` spectral blocks -> attention blocks -> LayerNorm -> mean of the tokens ->
Linear. The official spectral block is GFNet's single-residual block
`x + MLP(LN(Filter(LN(x))))`; as a MetaFormer block its token mixer is `filter -> norm -> MLP`
(`SpectralMlpMixer`) and it has no separate MLP branch. Attention blocks are the shared ViT block.

Hierarchical (`SpectFormerH`, the WaveViT layout): conv stem (7x7/2 + two 3x3, BN-ReLU, then a
3x3/2 conv + LayerNorm) -> 4 stages on NHWC maps, spectral blocks in stages 1-2 and attention
blocks in stages 3-4, each with a depthwise-conv MLP (PVTv2's) -> a class-attention block on
[mean token, tokens] -> LayerNorm -> Linear on the class token + 0.5 x max over tokens of an
auxiliary Linear (token-labelling head). Between stages: LayerNorm -> 3x3/2 conv -> LayerNorm
(`ConvNormDownsample`; the LayerNorm the official model applies at the end of stage i opens
stage i+1 here - same computation).

Where this differs from the official code, and why:
* Head counts (vanilla). The official attention block hard-codes 6 heads ("4 for tiny, 6 for
  small and 12 for base"), so T (dim 256) and B (dim 512) crash in the qkv reshape. Here:
  T 4 heads, XS 6, S 6, B 8 (head dim 64 everywhere; XS/S keep the official 6). Heads add no
  parameters, so the official parameter counts are unchanged. SpectFormer-H uses the official
  heads (they divide the widths).
* Training (hierarchical). The official forward in train mode applies token-labelling "mix token"
  (and crashes on `np.int`, removed from NumPy) and returns a tuple for a token-labelling loss.
  Here forward is the same in train and eval mode (the official eval output
  `head(cls) + 0.5 * max(aux_head(tokens))`), so any classification loss trains it; MixToken
  belongs in a training script.
* Other input sizes (timm has no SpectFormer and the official code no dense-prediction backbone,
  so these rules are ours). Both models take any image size: the vanilla patch embed zero-pads the
  image right/bottom to a multiple of 16 (timm ViT's `dynamic_img_pad`; map ceil(H/16) x ceil(W/16)),
  SpectFormer-H's strided convs round up (map ceil(H/4) ... ceil(H/32)); the spectral filters are
  bicubically resized to each grid (align_corners=True, the official fine-tuning rule) and the
  vanilla position embedding bicubically resampled, on the fly. At the built size nothing is padded
  or resized. `checkpoint_filter_fn` applies the same resizing to checkpoints of another size.
* fp16/bf16: the FFT runs in float32 and is cast back (the official mixer returns float32).
* EViT token reorganisation (off by default; not in the official code): `token_reorg_locs`
  switches the shared ViT block's `token_reorg` on for those attention blocks (indices >=
  `num_spectral_layers`: the spectral filters need the full grid). With no CLS token, tokens are
  ranked by the mean attention they receive (`TokenReorg(rank_by="mean")`, see
  vitzoo.layers.token_reorg) and the dropped ones fused into one extra token; the mean-pooling
  head takes any token count. `keep_rate=1.0` is exactly the model without reorganisation;
  `set_keep_rate` is the hook the training script's `--keep-rate-warmup` drives.

Names: `vitzoo_` + the official names - vanilla `--arch` spectformer-ti/-xs/-s/-b ->
`vitzoo_spectformer_{ti,xs,s,b}`; the hierarchical code registers `spectformer_s/_b/_l`, which
would collide with the vanilla names, so they are `vitzoo_spectformer_h_{s,b,l}` (the README's
SpectFormer-H-S/B/L). No checkpoint URL is published in the official repository, so `default_cfgs`
carry no `url`; `pretrained=True` takes a checkpoint via `pretrained_cfg_overlay=dict(file=...)`.
"""
import math
import re
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, Mlp, PatchEmbed, register_notrace_function, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs
from torch.utils.checkpoint import checkpoint

from vitzoo.layers import ConvNormDownsample, MetaFormerBlock, Stage
from vitzoo.layers.attention import Attention
from vitzoo.layers.spectral_gating import SpectralGating, resize_spectral_filter
from vitzoo.layers.token_reorg import check_keep_rate, check_reorg_locs, set_keep_rate, token_reorg_for
from vitzoo.layers.vit_block import vit_block

from ._base import HierarchicalBackbone, IsotropicBackbone, TokenHead, _is_tracing, build_zoo_model
from ._init import init_linear_layernorm
from ._registry import register_model

__all__ = ["SpectFormer", "SpectFormerH", "SpectralMlpMixer", "checkpoint_filter_fn"]

NormFactory = Callable[[int], nn.Module]


# ---- blocks ----------------------------------------------------------------------------------

class SpectralMlpMixer(nn.Module):
    """`filter -> norm -> MLP`: the residual branch of the vanilla (GFNet-style) spectral block."""

    def __init__(self, dim: int, grid_size: Sequence[int], mlp_ratio: float = 4.0, proj_drop: float = 0.0,
                 norm_layer: NormFactory = nn.LayerNorm, act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.filter = SpectralGating(dim, grid_size)
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(self.filter(x)))


def spectral_block(dim: int, grid_size: Sequence[int], mlp_ratio: float = 4.0, proj_drop: float = 0.0,
                   drop_path: float = 0.0, norm_layer: NormFactory = nn.LayerNorm) -> MetaFormerBlock:
    """The vanilla spectral block `x + MLP(LN(Filter(LN(x))))`; names `norm1`, `token_mixer.{filter,norm,mlp}`."""
    mixer = SpectralMlpMixer(dim, grid_size, mlp_ratio, proj_drop, norm_layer)
    return MetaFormerBlock(dim, token_mixer=mixer, mlp=None, norm_layer=norm_layer, drop_path=drop_path)


class GridAttention(Attention):
    """Multi-head self-attention over all positions of an NHWC map (names `qkv`, `proj`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        return self.attend(x.reshape(B, H * W, C)).reshape(B, H, W, C)


class DwConvMlp(nn.Module):
    """NHWC `fc1 -> 3x3 depthwise conv -> GELU -> fc2` (PVTv2's MLP, the official `PVT2FFN`)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(self.act(x))


class ConvBnStem(nn.Module):
    """SpectFormer-H stem: `7x7/2 -> 3x3 -> 3x3` conv-BN-ReLU, `3x3/2` conv, LayerNorm; NCHW in, NHWC out (/4)."""

    def __init__(self, in_chans: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            k, s = (7, 2) if i == 0 else (3, 1)
            layers += [nn.Conv2d(in_chans if i == 0 else hidden_dim, hidden_dim, k, s, k // 2, bias=False),
                       nn.BatchNorm2d(hidden_dim), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden_dim, out_dim, 3, 2, 1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.conv(x)).permute(0, 2, 3, 1))


class ClassAttention(nn.Module):
    """Attention of one class token (the first) to all tokens: `[B, 1+N, C] -> [B, 1, C]`."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.q(x[:, :1]).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(B, 1, C))


class ClassAttentionBlock(nn.Module):
    """`cls += CA(norm1([cls, tokens]))`, `cls += MLP(norm2(cls))`; returns `[cls, tokens]`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_layer: NormFactory) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ClassAttention(dim, num_heads)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.attn(self.norm1(x))
        cls = cls + self.mlp(self.norm2(cls))
        return torch.cat([cls, x[:, 1:]], dim=1)


class ClassAttentionHead(nn.Module):
    """SpectFormer-H head on an NHWC map: class attention from the mean token, norm, fc (+ aux fc).

    `pool_type='token'`: logits `fc(cls) + 0.5 * max_n aux_fc(token_n)` (the official eval output;
    without the auxiliary head, `fc(cls)`); pre-logits are the normed class token.
    `pool_type=''`: the map is returned unchanged (no pooling, no classifier).
    """

    def __init__(self, dim: int, num_classes: int, num_heads: int, mlp_ratio: float, norm_layer: NormFactory,
                 pool_type: str = "token", aux_head: bool = True, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = dim
        self.pool_type = self._check_pool(pool_type)
        self.use_aux = aux_head
        self.block = ClassAttentionBlock(dim, num_heads, mlp_ratio, norm_layer)
        self.norm = norm_layer(dim)
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes)

    @staticmethod
    def _check_pool(pool_type: str) -> str:
        if pool_type not in ("token", ""):
            raise ValueError(f"SpectFormer-H pools with its class-attention token: global_pool must be 'token' "
                             f"or '', got {pool_type!r}")
        return pool_type

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is not None:
            self.pool_type = self._check_pool(pool_type)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()
        #: a plain bool for forward: TorchScript does not evaluate isinstance on a submodule like Python
        self.has_aux_fc = self.use_aux and num_classes > 0
        self.aux_fc = nn.Linear(self.in_features, num_classes) if self.has_aux_fc else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool_type == "":
            return x
        tokens = x.flatten(1, 2)
        x = self.norm(self.block(torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)))
        cls = self.drop(x[:, 0])
        if pre_logits:
            return cls
        out = self.fc(cls)
        if self.has_aux_fc:
            out = out + 0.5 * self.aux_fc(x[:, 1:]).max(dim=1)[0]
        return out


@register_notrace_function  # resamples only when the grid differs from the built one: an FX leaf
def pos_embed_for_grid(pos_embed: torch.Tensor, grid_h: int, grid_w: int, built_h: int, built_w: int) -> torch.Tensor:
    """The `[1, H*W, C]` position embedding for a `grid_h x grid_w` grid (bicubic resample if not built for it)."""
    if grid_h == built_h and grid_w == built_w:
        return pos_embed
    return resample_abs_pos_embed(pos_embed, [grid_h, grid_w], [built_h, built_w], num_prefix_tokens=0,
                                  interpolation="bicubic", antialias=False)


def _linear_rates(rate: float, n: int) -> list[float]:
    """`torch.linspace(0, rate, n)` as floats (stochastic-depth decay rule), without a tensor (meta-safe)."""
    return [rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def _init_h_weights(module: nn.Module) -> None:
    """Official SpectFormer-H init: `init_linear_layernorm`, plus convs normal(0, sqrt(2 / fan_out))."""
    init_linear_layernorm(module)
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---- models ----------------------------------------------------------------------------------

class SpectFormer(IsotropicBackbone):
    """Vanilla SpectFormer: `num_spectral_layers` spectral blocks, then attention blocks, mean-pooled head.

    Args (beyond timm's usual): `num_spectral_layers` is the paper's alpha (official: 4);
    `proj_drop_rate` is the official `drop` (position-embedding, MLP and projection dropout);
    `drop_rate` is the official `dropcls` (dropout before the classifier).
    EViT token reorganisation (off by default): `token_reorg_locs` are 0-based indices of
    attention blocks (>= `num_spectral_layers`) that keep `ceil(keep_rate * n)` of their `n`
    tokens, ranked by mean attention received, and with `fuse_token` fuse the rest into one token.
    """

    no_weight_decay_keys = ("pos_embed",)

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 6,
            num_spectral_layers: int = 4,
            mlp_ratio: float = 4.0,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_layer: NormFactory | None = None,
            token_reorg_locs: Sequence[int] | None = None,
            keep_rate: float = 0.7,
            fuse_token: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= num_spectral_layers <= depth:
            raise ValueError(f"num_spectral_layers must be in [0, depth={depth}], got {num_spectral_layers}")
        locs = check_reorg_locs(token_reorg_locs, depth, first=num_spectral_layers,
                                why=f"blocks 0..{num_spectral_layers - 1} are spectral layers, which need the "
                                    f"full token grid; reorganise in attention blocks only")
        self.token_reorg_locs = locs
        self.target_keep_rate = check_keep_rate(keep_rate)
        self.fuse_token = bool(fuse_token)
        if global_pool not in ("avg", ""):
            raise ValueError(f"SpectFormer has no class token: global_pool must be 'avg' or '', got {global_pool!r}")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        self.num_spectral_layers = num_spectral_layers
        self.patch_embed = PatchEmbed(to_2tuple(img_size), patch_size, in_chans, embed_dim, strict_img_size=False,
                                      dynamic_img_pad=True)
        grid = self.patch_embed.grid_size
        self.cls_token = None
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dim))
        self.pos_drop = nn.Dropout(proj_drop_rate)
        dpr = _linear_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            spectral_block(embed_dim, grid, mlp_ratio, proj_drop_rate, dpr[i], norm_layer)
            if i < num_spectral_layers else
            vit_block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], proj_drop=proj_drop_rate,
                      attn_drop=attn_drop_rate, norm_layer=norm_layer,
                      token_reorg=token_reorg_for(i, locs, keep_rate, fuse_token, rank_by="mean"))
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)
        self.head = TokenHead(embed_dim, num_classes, global_pool, num_prefix_tokens=0, drop_rate=drop_rate)
        self.init_contract(in_chans=in_chans, num_classes=num_classes, global_pool=global_pool,
                           embed_dim=embed_dim, num_prefix_tokens=0, reduction=patch_size,
                           dynamic_img_size=True, dynamic_img_pad=True)
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_linear_layernorm)

    def set_keep_rate(self, rate: float | None) -> None:
        """Keep rate of every reorganising block (the warm-up schedule sets it); None: back to the target."""
        set_keep_rate(self, rate)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens + position embedding (resampled when the grid is not the built one)."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        grid_h, grid_w = self.token_grid(x)
        x = self.patch_embed(x)
        built = self.patch_embed.grid_size
        pos = pos_embed_for_grid(self.pos_embed, grid_h, grid_w, built[0], built[1])
        if not torch.jit.is_scripting() and not _is_tracing():
            self._set_token_grid((grid_h, grid_w))
        return self.pos_drop(x + pos)

    @torch.jit.unused
    def _set_token_grid(self, grid: tuple[int, int]) -> None:
        """Tell the spectral mixers the grid of the NLC tokens (used by `forward_intermediates`)."""
        for blk in self.blocks:
            mixer = getattr(blk, "token_mixer", None)
            if isinstance(mixer, SpectralMlpMixer):
                mixer.filter.token_grid = grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spectral blocks on the `[B, H, W, C]` token map, attention blocks on `[B, N, C]` tokens.

        Per token both layouts compute the same; the map carries the grid to the spectral filters
        without state, so TorchScript and FX see plain tensor code.
        """
        grid_h, grid_w = self.token_grid(x)
        x = self.embed(x)
        x = x.reshape(x.shape[0], grid_h, grid_w, x.shape[-1])
        for i, blk in enumerate(self.blocks):
            if i == self.num_spectral_layers:
                x = x.flatten(1, 2)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if self.num_spectral_layers >= len(self.blocks):  # only spectral blocks (all, or pruned before attention)
            x = x.flatten(1, 2)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here so FX's autowrap (which patches the root forward's module) sees pos_embed_for_grid
        return self.forward_head(self.forward_features(x))


class SpectFormerH(HierarchicalBackbone):
    """Hierarchical SpectFormer (SpectFormer-H): spectral stages 1-2, attention stages 3-4, class-attention head.

    `aux_head` keeps the official token-labelling auxiliary classifier (in the official model and its
    parameter count); `num_spectral_stages` is the number of leading spectral stages (official: 2).
    """

    output_fmt = "NHWC"

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            stem_hidden_dim: int = 32,
            embed_dims: Sequence[int] = (64, 128, 320, 448),
            depths: Sequence[int] = (3, 4, 6, 3),
            num_heads: Sequence[int] = (2, 4, 10, 14),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            num_spectral_stages: int = 2,
            aux_head: bool = True,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_layer: NormFactory | None = None,
    ) -> None:
        super().__init__()
        if not len(embed_dims) == len(depths) == len(num_heads) == len(mlp_ratios):
            raise ValueError("embed_dims, depths, num_heads and mlp_ratios must have one entry per stage")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        img_size = to_2tuple(img_size)
        self.stem = ConvBnStem(in_chans, stem_hidden_dim, embed_dims[0])
        dpr = _linear_rates(drop_path_rate, sum(depths))
        stages, cur = [], 0
        for i, (dim, depth, heads, ratio) in enumerate(zip(embed_dims, depths, num_heads, mlp_ratios)):
            stride = 4 * 2 ** i
            grid = (img_size[0] // stride, img_size[1] // stride)
            blocks = [
                MetaFormerBlock(
                    dim,
                    token_mixer=SpectralGating(dim, grid) if i < num_spectral_stages else GridAttention(
                        dim, heads, qkv_bias=True),
                    mlp=DwConvMlp(dim, int(dim * ratio)),
                    norm_layer=norm_layer,
                    drop_path=dpr[cur + j],
                )
                for j in range(depth)
            ]
            down = None if i == 0 else ConvNormDownsample(
                embed_dims[i - 1], dim, kernel_size=3, stride=2, padding=1, pre_norm=norm_layer,
                post_norm=nn.LayerNorm, layout="NHWC")
            stages.append(Stage(blocks, down))
            cur += depth
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # the last LayerNorm follows the class-attention block, in the head
        self.head = ClassAttentionHead(embed_dims[-1], num_classes, num_heads[-1], mlp_ratios[-1], norm_layer,
                                       pool_type=global_pool, aux_head=aux_head, drop_rate=drop_rate)
        self.init_contract(in_chans=in_chans, num_classes=num_classes, global_pool=global_pool, dims=embed_dims,
                           reductions=[4 * 2 ** i for i in range(len(embed_dims))])
        self.input_divisor = 1  # the strided convs round up: any size from `min_input_size` on
        self._init_family_weights()

    def _init_family_weights(self) -> None:
        self.apply(_init_h_weights)

    def _prune_head(self) -> None:
        """A pruned SpectFormer-H has a plain pooling head: the class-attention block and its norm are sized
        for (and only fed by) the last stage and would take no gradient in a feature extractor."""
        self.head = ClassifierHead(self.num_features, 0, pool_type="", input_fmt="NHWC")
        self.num_classes, self.global_pool, self.head_hidden_size = 0, "", self.num_features


# ---- official checkpoints --------------------------------------------------------------------

def _unwrap(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def _vanilla_key(key: str, spectral: set[str]) -> str:
    m = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    if m:
        i, rest = m.groups()
        if i in spectral and re.match(r"^(filter|norm2|mlp)\.", rest):
            rest = "token_mixer." + rest.replace("norm2.", "norm.", 1)
        elif rest.startswith("attn."):
            rest = "token_mixer." + rest[len("attn."):]
        return f"blocks.{i}.{rest}"
    return re.sub(r"^head\.", "head.fc.", key)


def _h_key(key: str) -> str:
    m = re.match(r"^block(\d)\.(\d+)\.(.*)$", key)
    if m:
        s, j, rest = m.groups()
        rest = rest.replace("attn.", "token_mixer.", 1).replace("mlp.dwconv.dwconv.", "mlp.dwconv.", 1)
        return f"stages.{int(s) - 1}.blocks.{j}.{rest}"
    m = re.match(r"^patch_embed(\d)\.(.*)$", key)
    if m:
        s, rest = int(m.group(1)), m.group(2)
        if s == 1:
            return "stem." + rest
        return f"stages.{s - 1}.downsample." + rest.replace("proj.", "conv.").replace("norm.", "post_norm.")
    m = re.match(r"^norm(\d)\.(.*)$", key)
    if m:
        return f"stages.{m.group(1)}.downsample.pre_norm.{m.group(2)}"  # norm_i closes stage i; ours opens i+1
    for old, new in (("post_network.0.", "head.block."), ("aux_head.", "head.aux_fc."), ("head.", "head.fc.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _resize_to_model(out: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize spectral filters / the position embedding of a checkpoint trained at another size."""
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for k, v in out.items():
        if k not in shapes or v.shape == shapes[k]:
            continue
        if k.endswith("complex_weight"):
            out[k] = resize_spectral_filter(v, shapes[k][:2])
        elif k == "pos_embed":
            old = int(math.isqrt(v.shape[1]))
            out[k] = resample_abs_pos_embed(v, list(model.patch_embed.grid_size), [old, old], num_prefix_tokens=0,
                                            interpolation="bicubic", antialias=False)
    return out


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official SpectFormer keys -> ours (a state dict already in our layout is only resized).

    Vanilla: `blocks.i.filter.*` / `norm2` / `mlp` of spectral blocks -> `blocks.i.token_mixer.{filter,norm,mlp}`;
    `blocks.i.attn.*` -> `blocks.i.token_mixer.*`; `head` -> `head.fc`.
    Hierarchical: `patch_embed1` -> `stem`; `patch_embed{i+1}.{proj,norm}` -> `stages.i.downsample.{conv,post_norm}`;
    `norm{i}` (i < 4) -> `stages.i.downsample.pre_norm`; `block{s}.j` -> `stages.{s-1}.blocks.j` with
    `attn.{q,kv}` concatenated into `token_mixer.qkv` and `mlp.dwconv.dwconv` -> `mlp.dwconv`;
    `post_network.0` -> `head.block`; `norm4` -> `head.norm`; `head` / `aux_head` -> `head.fc` / `head.aux_fc`.
    Filters (and the vanilla position embedding) of another input size are resized to the model's.
    """
    state_dict = _unwrap(state_dict)
    ours = set(model.state_dict().keys())
    if set(state_dict) <= ours:
        return _resize_to_model(dict(state_dict), model)
    out: dict[str, torch.Tensor] = {}
    if isinstance(model, SpectFormerH):
        for k, v in state_dict.items():
            if k == f"norm{len(model.stages)}.weight" or k == f"norm{len(model.stages)}.bias":
                out["head.norm." + k.rsplit(".", 1)[1]] = v
            elif re.search(r"\.attn\.kv\.(weight|bias)$", k) and k.startswith("block"):
                q = state_dict[k.replace(".attn.kv.", ".attn.q.")]
                out[_h_key(k).replace(".token_mixer.kv.", ".token_mixer.qkv.")] = torch.cat([q, v], dim=0)
            elif re.search(r"\.attn\.q\.(weight|bias)$", k) and k.startswith("block"):
                continue
            else:
                out[_h_key(k)] = v
    else:
        spectral = {m.group(1) for k in state_dict for m in [re.match(r"^blocks\.(\d+)\.filter\.", k)] if m}
        out = {_vanilla_key(k, spectral): v for k, v in state_dict.items()}
    return _resize_to_model(out, model)


# ---- registry --------------------------------------------------------------------------------

def _create(cls: type, variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Build `variant`; `pretrained=True` needs a checkpoint given with `pretrained_cfg_overlay=dict(file=...)`."""
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not any(overlay.get(k) for k in ("file", "url", "hf_hub_id", "state_dict")):
        raise ValueError(
            f"{variant}: the official SpectFormer repository publishes no checkpoint URL; pass an official (or our) "
            f"checkpoint with pretrained_cfg_overlay=dict(file='path/to/checkpoint.pth')")
    out = 3 if cls is SpectFormer else (0, 1, 2, 3)
    return build_zoo_model(cls, variant, pretrained, filter_fn=checkpoint_filter_fn, default_out_indices=out,
                           **dict(model_args, **kwargs))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head.fc",
        "paper_ids": "arXiv:2304.06446", "origin_url": "https://github.com/badripatro/SpectFormers",
        **kwargs,
    }


_H = dict(crop_pct=0.96, first_conv="stem.conv.0", classifier=("head.fc", "head.aux_fc"), pool_size=(7, 7))

# No checkpoint is linked from the official repository (README model zoos list results only).
default_cfgs = generate_default_cfgs({
    "vitzoo_spectformer_ti": _cfg(),
    "vitzoo_spectformer_xs": _cfg(),
    "vitzoo_spectformer_s": _cfg(),
    "vitzoo_spectformer_b": _cfg(),
    "vitzoo_spectformer_h_s": _cfg(**_H),
    "vitzoo_spectformer_h_b": _cfg(**_H),
    "vitzoo_spectformer_h_l": _cfg(**_H),
})

# Vanilla variants: official `--arch` spectformer-ti / -xs / -s / -b (vanilla_architecture/main_spectformer.py),
# alpha = 4, patch 16, mlp_ratio 4, LayerNorm eps 1e-6. Heads: see the module docstring (official: 6, fixed).
_VANILLA = dict(patch_size=16, num_spectral_layers=4, mlp_ratio=4.0)
# Hierarchical variants: official spectformer_s / _b / _l (hierarchical_architecture/spectformer.py).
_H_S = dict(stem_hidden_dim=32, embed_dims=(64, 128, 320, 448), num_heads=(2, 4, 10, 14), mlp_ratios=(8, 8, 4, 4),
            depths=(3, 4, 6, 3))
_H_B = dict(stem_hidden_dim=64, embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), mlp_ratios=(8, 8, 4, 4),
            depths=(3, 4, 12, 3))
_H_L = dict(stem_hidden_dim=64, embed_dims=(96, 192, 384, 512), num_heads=(3, 6, 12, 16), mlp_ratios=(8, 8, 4, 4),
            depths=(3, 6, 18, 3))


@register_model
def vitzoo_spectformer_ti(pretrained: bool = False, **kwargs: Any) -> SpectFormer:
    """SpectFormer-T (official arch `spectformer-ti`): dim 256, depth 12, 4 heads."""
    args = dict(_VANILLA, embed_dim=256, depth=12, num_heads=4)
    return _create(SpectFormer, "vitzoo_spectformer_ti", pretrained, args, **kwargs)


@register_model
def vitzoo_spectformer_xs(pretrained: bool = False, **kwargs: Any) -> SpectFormer:
    """SpectFormer-XS: dim 384, depth 12, 6 heads."""
    args = dict(_VANILLA, embed_dim=384, depth=12, num_heads=6)
    return _create(SpectFormer, "vitzoo_spectformer_xs", pretrained, args, **kwargs)


@register_model
def vitzoo_spectformer_s(pretrained: bool = False, **kwargs: Any) -> SpectFormer:
    """SpectFormer-S: dim 384, depth 19, 6 heads."""
    args = dict(_VANILLA, embed_dim=384, depth=19, num_heads=6)
    return _create(SpectFormer, "vitzoo_spectformer_s", pretrained, args, **kwargs)


@register_model
def vitzoo_spectformer_b(pretrained: bool = False, **kwargs: Any) -> SpectFormer:
    """SpectFormer-B: dim 512, depth 19, 8 heads."""
    args = dict(_VANILLA, embed_dim=512, depth=19, num_heads=8)
    return _create(SpectFormer, "vitzoo_spectformer_b", pretrained, args, **kwargs)


@register_model
def vitzoo_spectformer_h_s(pretrained: bool = False, **kwargs: Any) -> SpectFormerH:
    """SpectFormer-H-S (official `spectformer_s` of the hierarchical code)."""
    return _create(SpectFormerH, "vitzoo_spectformer_h_s", pretrained, _H_S, **kwargs)


@register_model
def vitzoo_spectformer_h_b(pretrained: bool = False, **kwargs: Any) -> SpectFormerH:
    """SpectFormer-H-B (official `spectformer_b` of the hierarchical code)."""
    return _create(SpectFormerH, "vitzoo_spectformer_h_b", pretrained, _H_B, **kwargs)


@register_model
def vitzoo_spectformer_h_l(pretrained: bool = False, **kwargs: Any) -> SpectFormerH:
    """SpectFormer-H-L (official `spectformer_l` of the hierarchical code)."""
    return _create(SpectFormerH, "vitzoo_spectformer_h_l", pretrained, _H_L, **kwargs)
