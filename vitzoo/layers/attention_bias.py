"""LeViT-style attention bias: one learned scalar per head and per |dy|, |dx| offset in a window.

`AttentionBiasTable(num_heads, resolution)()` returns the `[heads, N, N]` bias
`attention_biases[:, attention_bias_idxs]` for a `resolution x resolution` window (N = res^2).

In eval mode without autograd, the gathered bias is cached. The cache is the classic source of
stale outputs (an EMA copy or `load_state_dict` into an eval-mode model leaves the old bias in
use), so an entry is only reused when all of these are unchanged: the parameter object and its
storage, its in-place version counter (bumped by `copy_`, `lerp_`, `load_state_dict`, optimiser
steps), its device and dtype, and the index buffer. `train()`, `_apply()` (`.to()`, `.half()`),
`load_state_dict` and `set_resolution` also drop it. Writes through `.data` bypass the version
counter: call `clear_cache()` after those. With autograd on, or in training, nothing is cached.
Under TorchScript and FX tracing the cache is bypassed (plain gather; same values).
"""
import itertools
import weakref
from typing import Any, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import resize_rel_pos_bias_table_levit

__all__ = ["AttentionBiasTable", "attention_bias_index", "resize_attention_biases"]


def _fx_symbolic_tracing() -> bool:
    is_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    return bool(is_tracing()) if is_tracing is not None else False


def attention_bias_index(resolution: int) -> Tuple[torch.Tensor, int]:
    """`[N, N]` index of each (query, key) pair's offset (|dy|, |dx|), numbered in first-seen order.

    Also returns the number of distinct offsets (resolution^2).
    """
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    return torch.tensor(idxs, dtype=torch.long).view(n, n), len(offsets)


def resize_attention_biases(biases: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resample a `[heads, res0^2]` bias table to `[heads, resolution^2]` (bicubic, as LeViT/timm)."""
    heads = biases.shape[0]
    if biases.shape[1] == resolution * resolution:
        return biases
    return resize_rel_pos_bias_table_levit(biases.T, (resolution * resolution, heads)).T.contiguous()


class AttentionBiasTable(nn.Module):
    """Learned relative-offset attention bias of a square window, with a safe eval-time cache."""

    __jit_ignored_attributes__ = ["_cache"]  # python-only (weakref); TorchScript gathers every call

    def __init__(self, num_heads: int, resolution: int) -> None:
        super().__init__()
        if resolution < 1:
            raise ValueError(f"attention window resolution must be >= 1, got {resolution}")
        self.num_heads = num_heads
        self.resolution = resolution
        idxs, num_offsets = attention_bias_index(resolution)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, num_offsets))
        self.register_buffer("attention_bias_idxs", idxs.to(self.attention_biases.device), persistent=False)
        self._cache: Optional[Tuple[Tuple[Any, ...], torch.Tensor, weakref.ref]] = None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.attention_biases)
        self.clear_cache()

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Recompute the offset index (garbage after `to_empty()`; timm's name for this step)."""
        idxs, _ = attention_bias_index(self.resolution)
        self.attention_bias_idxs.copy_(idxs)
        self.clear_cache()

    # ---- cache ----------------------------------------------------------------------------
    def clear_cache(self) -> None:
        self._cache = None

    def _cache_key(self) -> Tuple[Any, ...]:
        p, idx = self.attention_biases, self.attention_bias_idxs
        return (p._version, p.data_ptr(), p.device, p.dtype, idx._version, idx.data_ptr(), idx.shape)

    def _can_cache(self) -> bool:
        if self.training or torch.is_grad_enabled():
            return False
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        if _fx_symbolic_tracing():
            return False
        p = self.attention_biases
        return p.device.type != "meta" and not p.is_inference()  # inference tensors have no version counter

    def forward(self) -> torch.Tensor:
        """`[heads, N, N]` bias for the window."""
        if not torch.jit.is_scripting():  # the cache (weakref, version counter) is python-only
            if self._can_cache():
                return self._cached_bias()
        return self.attention_biases[:, self.attention_bias_idxs]

    def _cached_bias(self) -> torch.Tensor:
        key = self._cache_key()
        cached = self._cache
        if cached is not None and cached[0] == key and cached[2]() is self.attention_biases:
            return cached[1]
        bias = self.attention_biases[:, self.attention_bias_idxs]
        self._cache = (key, bias, weakref.ref(self.attention_biases))
        return bias

    def train(self, mode: bool = True) -> "AttentionBiasTable":
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "AttentionBiasTable":
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # weakrefs don't pickle / deepcopy, and a copy must rebuild anyway
        return state

    # ---- resolution -----------------------------------------------------------------------
    @torch.no_grad()
    def set_resolution(self, resolution: int) -> None:
        """Resample the table to a new window resolution and rebuild the index (drops the cache)."""
        if resolution < 1:
            raise ValueError(f"attention window resolution must be >= 1, got {resolution}")
        if resolution == self.resolution:
            return
        old = self.attention_biases
        self.attention_biases = nn.Parameter(resize_attention_biases(old.detach(), resolution),
                                             requires_grad=old.requires_grad)
        idxs, _ = attention_bias_index(resolution)
        self.register_buffer("attention_bias_idxs", idxs.to(old.device), persistent=False)
        self.resolution = resolution
        self.clear_cache()

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, resolution={self.resolution}"
