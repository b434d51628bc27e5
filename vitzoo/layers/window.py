"""Window helpers for Swin-style local attention on NHWC maps.

Small functions, no modules: split a map into non-overlapping windows and back, build the
shifted-window attention mask (one `(ws_h*ws_w) x (ws_h*ws_w)` mask per window, never a mask over
the whole map), the relative-position index into a `(2*ws_h-1)*(2*ws_w-1)` bias table, and the
per-stage window/shift rule timm applies when a feature map is smaller than the window.
Every function used in a forward pass is TorchScript-compatible (no postponed annotations here).
"""
from typing import Optional, Tuple, Union

import torch

__all__ = [
    "window_partition", "window_reverse", "relative_position_index", "relative_position_bias",
    "shifted_window_mask", "clamp_window_to_map", "SHIFT_MASK_VALUE",
]

#: value added to the logits of token pairs from different regions of a shifted window
#: (the official and timm value; not -inf, so a row never becomes all-masked)
SHIFT_MASK_VALUE = -100.0


def window_partition(x: torch.Tensor, window_size: Tuple[int, int]) -> torch.Tensor:
    """`[B, H, W, C] -> [B * nW, ws_h * ws_w, C]`, windows in row-major order per image.

    H and W must be multiples of the window size (pad first).
    """
    B, H, W, C = x.shape
    wh, ww = window_size
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, window_size: Tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: `[B * nW, ws_h * ws_w, C] -> [B, H, W, C]`."""
    wh, ww = window_size
    C = windows.shape[-1]
    # reshape, not view: exporters (torch.onnx dynamo) may hand over a non-contiguous tensor
    x = windows.reshape(-1, height // wh, width // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, C)


def relative_position_index(
        win_h: int, win_w: int, device: Optional[Union[torch.device, str]] = None) -> torch.Tensor:
    """`[N, N]` (N = win_h * win_w) index of each query/key pair's offset into the bias table.

    The offset (dy, dx) in [-(win_h-1), win_h-1] x [-(win_w-1), win_w-1] maps to row
    `(dy + win_h - 1) * (2 * win_w - 1) + (dx + win_w - 1)` of the table (the official layout).
    """
    ys, xs = torch.meshgrid(
        torch.arange(win_h, device=device), torch.arange(win_w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (win_h - 1)
    dx = xs[:, None] - xs[None, :] + (win_w - 1)
    return dy * (2 * win_w - 1) + dx


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Gather a `[(2wh-1)*(2ww-1), heads]` table with an `[N, N]` index into a `[heads, N, N]` bias."""
    n = index.shape[0]
    return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)


def _region_ids(size: int, window: int, shift: int, device: Optional[torch.device]) -> torch.Tensor:
    """Region of each row (or column) of a rolled map: 0 before the last window, 1 in its
    unshifted part, 2 in its last `shift` positions (`shift = 0`: no third region)."""
    pos = torch.arange(size, device=device)
    ids = (pos >= size - window).long()
    if shift > 0:
        ids = ids + (pos >= size - shift).long()
    return ids


def shifted_window_mask(
        height: int,
        width: int,
        window_size: Tuple[int, int],
        shift_size: Tuple[int, int],
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """`[nW, N, N]` additive mask (0 / -100) for attention in cyclically shifted windows.

    `height`/`width` are the (padded) map size the windows tile. After the map is rolled by
    `-shift`, the last window row/column holds tokens from up to three regions that were not
    neighbours before the roll; pairs from different regions get `SHIFT_MASK_VALUE`.
    Region ids are computed arithmetically (no slice loops), so this runs under TorchScript.
    """
    wh, ww = window_size
    sh, sw = shift_size
    rows = _region_ids(height, wh, sh, device)
    cols = _region_ids(width, ww, sw, device)
    region = torch.zeros((1, height, width, 1), device=device, dtype=dtype)  # dtype None: the default
    region = region + (rows[:, None] * 3 + cols[None, :]).view(1, height, width, 1)
    region = window_partition(region, window_size).squeeze(-1)  # nW, N
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill_(diff != 0, -100.0)  # SHIFT_MASK_VALUE (TorchScript reads no globals)


def clamp_window_to_map(
        feat_size: Tuple[int, int],
        window_size: Tuple[int, int],
        shift_size: Tuple[int, int],
        always_partition: bool = False,
) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """timm's rule: along a side where the map is no larger than the window, the window shrinks
    to the map and that side is not shifted (one window covers it). `always_partition` keeps
    the window and shift as given (the map is padded instead)."""
    if always_partition:
        return tuple(window_size), tuple(shift_size)
    win = tuple(min(f, w) for f, w in zip(feat_size, window_size))
    shift = tuple(0 if f <= w else s for f, w, s in zip(feat_size, win, shift_size))
    return win, shift
