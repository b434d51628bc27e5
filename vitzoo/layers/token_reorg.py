"""EViT token reorganisation: keep the image tokens the CLS token attends to, fuse the rest.

Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations" (ICLR 2022, github.com/youweiliang/evit). In a reorganising block the step runs
after the attention residual and before the MLP, so the MLP and every later block see fewer
tokens. With `n` image tokens (everything after the CLS token, a previously fused token
included) the block keeps `ceil(keep_rate * n)` of them, ordered by descending CLS attention
(averaged over heads); when fusion is on, the others become one extra token at the end, their sum
weighted by their (unnormalised) CLS attention. When that count is `n` nothing changes, as in
the official code.

Models without a CLS token (vanilla SpectFormer) rank with `rank_by="mean"`, a documented
generalisation, not the official EViT: a token's score is the attention it receives averaged over
heads and over all query tokens (the scores of all tokens sum to 1, as the CLS attention does);
every token is an image token, the `ceil` rule and the fusion (weighted by that score) are the
same, and no CLS token is carried.

`ReorgViTBlock` is the ViT block with this step; `vitzoo.layers.vit_block(..., token_reorg=...)`
builds it, so any family built from the shared ViT block can switch EViT on per block.
`keep_rate_at` is the official keep-rate warm-up (cosine from 1 down to the target).
"""
import math
from typing import Iterable, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import register_notrace_module

from .metaformer_block import MetaFormerBlock

__all__ = [
    "TokenReorg", "ReorgViTBlock", "RANK_MODES", "token_reorg_for", "check_reorg_locs", "check_keep_rate",
    "set_keep_rate", "keep_rate_at",
]

#: how tokens are ranked: "cls" = attention of the CLS token (EViT); "mean" = mean attention received (no CLS)
RANK_MODES = ("cls", "mean")


def check_keep_rate(keep_rate: float) -> float:
    """`keep_rate` as a float in (0, 1], else a ValueError naming it."""
    keep_rate = float(keep_rate)
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    return keep_rate


def _check_rank_by(rank_by: str) -> str:
    if rank_by not in RANK_MODES:
        raise ValueError(f"rank_by must be one of {RANK_MODES}, got {rank_by!r}")
    return rank_by


class TokenReorg(nn.Module):
    """`[B, 1 + n, C]` tokens and the CLS attention `[B, 1 + n]` -> `[B, 1 + k (+1 fused), C]`.

    With `rank_by="mean"` (models without a CLS token): `[B, n, C]` tokens and the mean attention
    each receives `[B, n]` -> `[B, k (+1 fused), C]`.

    Holds no parameters, so adding it to a block leaves the block's state dict unchanged.
    `keep_rate` is the rate in use (the training schedule moves it), `target_keep_rate` the one
    the model was built with.
    """

    def __init__(self, keep_rate: float = 0.7, fuse_token: bool = True, rank_by: str = "cls") -> None:
        super().__init__()
        self.target_keep_rate = check_keep_rate(keep_rate)
        self.keep_rate = self.target_keep_rate
        self.fuse_token = bool(fuse_token)
        self.rank_by = _check_rank_by(rank_by)
        #: tokens carried through unranked in front: the CLS token, or none
        self.num_prefix_tokens = 1 if rank_by == "cls" else 0

    def extra_repr(self) -> str:
        return f"keep_rate={self.keep_rate}, fuse_token={self.fuse_token}, rank_by={self.rank_by!r}"

    def num_kept(self, num_image_tokens: int) -> int:
        """How many image tokens survive: `ceil(keep_rate * n)`, all of them when keep_rate is 1."""
        if self.keep_rate >= 1.0:
            return num_image_tokens
        return math.ceil(self.keep_rate * num_image_tokens)

    def drops(self, num_tokens: int) -> bool:
        """True when a sequence of `num_tokens` (CLS included, if any) would be reorganised."""
        n = num_tokens - self.num_prefix_tokens
        return self.num_kept(n) < n

    @torch.jit.unused
    def _check_attn(self, x: torch.Tensor, cls_attn: torch.Tensor) -> None:
        B, N, _ = x.shape
        if tuple(cls_attn.shape) != (B, N):
            name = "cls_attn" if self.rank_by == "cls" else "token scores (rank_by='mean')"
            raise ValueError(f"{name} must have shape {(B, N)} for tokens of shape {tuple(x.shape)}, "
                             f"got {tuple(cls_attn.shape)}")

    def forward(self, x: torch.Tensor, cls_attn: torch.Tensor) -> torch.Tensor:
        """`cls_attn`: the ranking scores of every token, `[B, N]` (CLS attention, or mean attention received)."""
        return self.forward_with_index(x, cls_attn)[0]

    def forward_with_index(self, x: torch.Tensor, cls_attn: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The reorganised tokens and which image tokens were kept: `[B, keep]` indices into `x[:, prefix:]`
        in output order (None when nothing is dropped). Dense feature maps put tokens back with it."""
        B, N, C = x.shape
        if not torch.jit.is_scripting():
            self._check_attn(x, cls_attn)
        p = self.num_prefix_tokens
        keep = self.num_kept(N - p)
        if keep >= N - p:
            return x, None
        image_tokens, image_attn = x[:, p:], cls_attn[:, p:]
        idx = image_attn.topk(keep, dim=1, largest=True, sorted=True).indices  # [B, keep]
        kept = image_tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, C))
        parts = [x[:, :p], kept]
        if self.fuse_token:
            dropped_weight = image_attn.scatter(1, idx, 0.0)  # attention of the tokens not kept
            parts.append((image_tokens * dropped_weight.unsqueeze(-1)).sum(dim=1, keepdim=True))
        return torch.cat(parts, dim=1), idx


@register_notrace_module  # how many tokens survive depends on the token count: an FX leaf, like timm's
class ReorgViTBlock(MetaFormerBlock):
    """The ViT block with EViT's step between the attention residual and the MLP.

    The token mixer must provide `forward_with_cls_attn` (ranking by CLS attention) or
    `forward_with_token_scores` (`rank_by="mean"`); vitzoo.layers.attention.Attention has both.
    When the reorganisation would keep every token (keep rate 1.0) the block runs the plain
    attention path and is exactly the ViT block.
    """

    def __init__(self, *args, token_reorg: TokenReorg, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        needed = "forward_with_cls_attn" if token_reorg.rank_by == "cls" else "forward_with_token_scores"
        if not hasattr(self.token_mixer, needed):
            raise TypeError(f"token reorganisation (rank_by={token_reorg.rank_by!r}) needs a token mixer with "
                            f"{needed}, got {type(self.token_mixer).__name__}")
        self.token_reorg = token_reorg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tracked(x)[0]

    def forward_tracked(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """`(out, kept, at_reorg)`: the block output, the kept image-token indices (None: nothing dropped)
        and every token's value at the reorganisation (what a dropped token last was)."""
        if not self.token_reorg.drops(x.shape[1]):
            return self.forward_mlp(self.forward_mixer(x)), None, x  # the plain ViT block (no super() in TorchScript)
        if self.token_reorg.rank_by == "cls":
            out, cls_attn = self.token_mixer.forward_with_cls_attn(self.norm1(x))
        else:
            out, cls_attn = self.token_mixer.forward_with_token_scores(self.norm1(x), "mean")
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(out))
        reorg, kept = self.token_reorg.forward_with_index(x, cls_attn)
        return self.forward_mlp(reorg), kept, x


def token_reorg_for(
        index: int,
        locs: Iterable[int] | None,
        keep_rate: float = 0.7,
        fuse_token: bool = True,
        rank_by: str = "cls",
) -> TokenReorg | None:
    """The reorganisation for block `index` when it is one of `locs` (official: 3, 6, 9), else None."""
    if not locs or index not in tuple(locs):
        return None
    return TokenReorg(keep_rate, fuse_token, rank_by)


def check_reorg_locs(locs: Iterable[int] | None, depth: int, first: int = 0, why: str = "") -> tuple[int, ...]:
    """Validate block indices for token reorganisation: each in `first..depth-1` (`why` explains `first`)."""
    items = () if locs is None or isinstance(locs, (int, str)) else tuple(locs)
    if isinstance(locs, (int, str)) or not all(hasattr(i, "__index__") for i in items):
        raise TypeError(f"token_reorg_locs must be a sequence of block indices, got {locs!r}")
    locs = tuple(i.__index__() for i in items)
    bad = [i for i in locs if not 0 <= i < depth]
    if bad:
        raise ValueError(f"token_reorg_locs {bad} are outside the model's blocks 0..{depth - 1}")
    bad = [i for i in locs if i < first]
    if bad:
        raise ValueError(f"token_reorg_locs {bad} must be >= {first}{': ' + why if why else ''}")
    return locs


def set_keep_rate(module: nn.Module, rate: float | None) -> None:
    """Set the keep rate of every TokenReorg in `module`; None restores each one's target rate."""
    for m in module.modules():
        if isinstance(m, TokenReorg):
            m.keep_rate = m.target_keep_rate if rate is None else check_keep_rate(rate)


def keep_rate_at(epoch: float, target: float, start: float = 10, end: float = 110) -> float:
    """The official keep-rate warm-up: 1.0 before `start`, cosine down to `target` at `end`.

    `epoch` may be fractional (`epoch + step / steps_per_epoch`): the official code updates the
    rate every iteration, which is this function at that fractional epoch. Official defaults:
    shrink_start_epoch 10, shrink_epochs 100 (so end = 110).
    """
    target = check_keep_rate(target)
    if end < start:
        raise ValueError(f"end ({end}) must not come before start ({start})")
    if epoch < start:
        return 1.0
    if epoch >= end:
        return target
    progress = (epoch - start) / (end - start)
    return target + (1.0 - target) * 0.5 * (1.0 + math.cos(math.pi * progress))
