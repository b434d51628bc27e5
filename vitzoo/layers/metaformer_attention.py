"""CAFormer's attention token mixer: the zoo's self-attention with MetaFormer's conventions.

MetaFormer fixes the head width (32) rather than the head count, and its qkv and output
projections have no bias. Everything else is vitzoo.layers.attention.Attention.
"""
import torch.nn as nn

from .attention import Attention

__all__ = ["MetaFormerAttention"]


class MetaFormerAttention(Attention):
    """`[B, N, C] -> [B, N, C]` self-attention with `C // head_dim` heads and bias-free projections."""

    input_fmt = "NLC"

    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        if dim % head_dim:
            raise ValueError(f"dim {dim} must be a multiple of head_dim {head_dim}")
        super().__init__(dim, num_heads=dim // head_dim, qkv_bias=False, attn_drop=attn_drop, proj_drop=proj_drop)
        self.proj = nn.Linear(dim, dim, bias=False)
