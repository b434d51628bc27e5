"""One stage of a hierarchical backbone: an optional downsample, then a run of blocks."""

from typing import Iterable

import torch
import torch.nn as nn
from timm.models._manipulate import checkpoint_seq


class Stage(nn.Module):
    """`downsample -> blocks`, with gradient checkpointing over the blocks when enabled.

    Every hierarchical family uses this one container, so the base model can toggle
    checkpointing, slice stages and name feature modules (`stages.i`) the same way everywhere.
    """

    def __init__(self, blocks: Iterable[nn.Module], downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)
