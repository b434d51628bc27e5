"""Multi-head self-attention over a token sequence: the ViT token mixer.

Parameter names follow timm's ViT (`qkv`, `proj`) so DeiT/ViT weights load without renaming.
`forward_with_cls_attn` also returns how much the first (CLS) token attends to every token,
which EViT's token reorganisation ranks tokens by; `forward_with_token_scores(x, "mean")` returns
the mean attention each token receives instead (for models without a CLS token).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """`[B, N, C] -> [B, N, C]` multi-head self-attention (SDPA path)."""

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            qk_scale: float | None = None,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # unpacked: TorchScript types unbind's result as a list
        return q, k, v

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        B, _, N, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, -1)))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention of `forward`, callable by subclasses (TorchScript compiles no `super()` calls)."""
        q, k, v = self._qkv(x)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        return self._out(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)

    def forward_with_cls_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Output and the CLS token's attention to all tokens, averaged over heads: `[B, N]`."""
        return self.forward_with_token_scores(x, "cls")

    def forward_with_token_scores(self, x: torch.Tensor, mode: str = "cls") -> tuple[torch.Tensor, torch.Tensor]:
        """Output and a per-token ranking score `[B, N]` read off the attention map.

        `mode="cls"`: the first (CLS) token's attention to every token, averaged over heads (EViT).
        `mode="mean"`: the attention every token receives, averaged over heads and all query tokens
        (for models without a CLS token). Either way the scores of a row sum to 1.
        """
        if mode != "cls" and mode != "mean":
            raise ValueError("token score mode must be 'cls' or 'mean', got '" + mode + "'")
        q, k, v = self._qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        scores = attn[:, :, 0].mean(dim=1) if mode == "cls" else attn.mean(dim=1).mean(dim=1)
        out = self.attn_drop(attn) @ v
        return self._out(out), scores
