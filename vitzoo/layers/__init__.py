"""Building blocks shared by the zoo's families: the MetaFormer block and its token mixers,
stems and downsamplers, heads, and the EViT token reorganisation."""
from .attention import Attention
from .conv_bn import BNLinear, ConvBN, fuse_modules
from .cross_attention import CrossAttention, CrossAttentionBlock
from .downsample import ConvNormDownsample, ConvStem
from .metaformer_attention import MetaFormerAttention
from .metaformer_block import MetaFormerBlock, Scale
from .mlp_head import MetaFormerHead, SquaredReLU
from .neighborhood_attention import NeighborhoodAttention2D
from .norms import GroupNorm1NoBias, LayerNorm2dNoBias, LayerNormNoBias
from .patch_merging import PatchMerging
from .pooling_mixer import Pooling
from .routing_attention import AttentionLePE, BiLevelRoutingAttention
from .sep_conv_mixer import SepConv, StarReLU
from .spectral_gating import SpectralGating
from .stage import Stage
from .token_reorg import ReorgViTBlock, TokenReorg, keep_rate_at
from .vit_block import vit_block
from .window_attention import ShiftedWindowAttention, window_attention

__all__ = [
    "Attention", "AttentionLePE", "BiLevelRoutingAttention", "BNLinear", "ConvBN", "ConvNormDownsample",
    "ConvStem", "CrossAttention",
    "CrossAttentionBlock", "GroupNorm1NoBias", "LayerNorm2dNoBias", "LayerNormNoBias",
    "MetaFormerAttention", "MetaFormerBlock", "MetaFormerHead", "NeighborhoodAttention2D",
    "PatchMerging", "Pooling", "ReorgViTBlock", "Scale", "SepConv", "ShiftedWindowAttention",
    "SpectralGating", "SquaredReLU", "Stage", "StarReLU", "TokenReorg", "fuse_modules",
    "keep_rate_at", "vit_block", "window_attention",
]
