"""The ViT/DeiT transformer block: a MetaFormer block whose token mixer is self-attention."""

from typing import Callable

import torch.nn as nn
from timm.layers import Mlp

from .attention import Attention
from .metaformer_block import MetaFormerBlock
from .token_reorg import ReorgViTBlock, TokenReorg


def vit_block(
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        token_reorg: TokenReorg | None = None,
) -> MetaFormerBlock:
    """`norm1 -> Attention -> (+) -> norm2 -> Mlp -> (+)`, names `token_mixer.qkv`, `mlp.fc1`, ...

    `token_reorg` (optional, see vitzoo.layers.token_reorg) makes it an EViT block: the tokens are
    reorganised between the attention residual and the MLP. It adds no parameters. Tokens are ranked
    by CLS attention, or with `TokenReorg(rank_by="mean")` by mean attention received (no CLS token).
    """
    block_cls, extra = (MetaFormerBlock, {}) if token_reorg is None else (ReorgViTBlock, dict(token_reorg=token_reorg))
    return block_cls(
        dim,
        token_mixer=Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop),
        mlp=Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop),
        norm_layer=norm_layer,
        drop_path=drop_path,
        layer_scale_init_value=init_values,
        **extra,
    )
