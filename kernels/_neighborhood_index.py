"""NATTEN 0.17 neighbourhood index rules along one axis (stated in ``neighborhood.py``'s doc).

Shared by the reference, the Triton launcher (bias reduction) and the tests: for query ``i`` of
an axis of length ``L``, kernel ``k`` and dilation ``d``, the keys are
``g + (s + t) * d`` and their bias indices ``(s + t) - c + k - 1`` (``t = 0..k-1``), with
``g = i % d``, ``c = i // d``, ``n = ceil((L - g) / d)`` and ``s = clamp(c - k // 2, 0, n - k)``.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["window_start", "neighbor_index", "rpb_index"]


def window_start(i: int, length: int, kernel_size: int, dilation: int = 1) -> int:
    """First key of query ``i``'s window, as a map position (NATTEN 0.17 rule, see module doc)."""
    g, c = i % dilation, i // dilation
    n_g = (length - g + dilation - 1) // dilation
    s = min(max(c - kernel_size // 2, 0), n_g - kernel_size)
    return g + s * dilation


def _axis_tables(length: int, kernel_size: int, dilation: int) -> Tuple[Tensor, Tensor]:
    """``(keys, bias)``: both ``[length, kernel_size]`` long, key positions and rpb indices."""
    i = torch.arange(length)
    g, c = i % dilation, i // dilation
    n_g = torch.div(length - g + dilation - 1, dilation, rounding_mode="floor")
    s = torch.minimum((c - kernel_size // 2).clamp(min=0), n_g - kernel_size)
    t = torch.arange(kernel_size)
    keys = g[:, None] + (s[:, None] + t) * dilation
    bias = s[:, None] + t - c[:, None] + kernel_size - 1
    return keys, bias


def neighbor_index(length: int, kernel_size: int, dilation: int = 1) -> Tensor:
    """``[length, kernel_size]`` map positions of each query's keys along one axis."""
    return _axis_tables(length, kernel_size, dilation)[0]


def rpb_index(length: int, kernel_size: int, dilation: int = 1) -> Tensor:
    """``[length, kernel_size]`` index into the ``2k-1`` bias entries for each (query, key)."""
    return _axis_tables(length, kernel_size, dilation)[1]
