"""Weight init shared by the transformer families (ViT/DeiT, Swin, NAT/DiNAT, CrossViT, SpectFormer)."""
import torch.nn as nn
from timm.layers import trunc_normal_


def init_linear_layernorm(module: nn.Module) -> None:
    """Linear: trunc_normal(std=0.02) weights, zero bias; LayerNorm: (1, 0); convs keep PyTorch's.

    The official init of every family above. Skipped on 'meta' tensors (nothing to fill).
    """
    if isinstance(module, nn.Linear) and not module.weight.is_meta:
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.weight is not None and not module.weight.is_meta:
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
