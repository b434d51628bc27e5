"""Shifted-window self-attention (Swin's W-MSA / SW-MSA) as a token mixer on NHWC maps.

`ShiftedWindowAttention` does the whole mixer so the block around it stays the generic
MetaFormer block: cyclic shift -> pad to a multiple of the window -> partition -> qkv ->
attention with relative position bias (+ shift mask) -> proj -> merge -> crop -> reverse shift.
The order (roll before pad), the mask value (-100) and the mask regions follow timm 1.0.31, so
its weights give the same outputs at every size.

Two paths give the same outputs:
* fused (`vitzoo.kernels.window_attention`, chosen by the kernels' dispatch rule: CUDA tensors,
  or `VITZOO_KERNELS=triton`): pad the map at the bottom/right, qkv Linear, then one op reads
  q/k/v from `[B, Hp, Wp, 3, heads, d]` by index arithmetic (roll, partition, heads permute and
  shift mask included) and writes the output in place order; crop, proj. Attention dropout is
  not in the kernel: `attn_drop > 0` in training takes the reference path (warned once).
* reference (CPU, TorchScript, tracing and exports): timm's order, roll -> pad -> partition ->
  qkv -> SDPA with bias (+ mask) -> proj -> merge -> crop -> roll back; the attention math is
  the function `window_attention`.

Two window rules (`dense_rule`, set by the model per input):
* built rule (default): timm's / the official classification model's, with the window and shift
  the model built for its `img_size` (a side no larger than the window is not shifted).
* dense rule (`dense_rule = True`): the official detection / segmentation backbone's
  (Swin-Transformer-Object-Detection `SwinTransformerBlock`): pad the map to window multiples,
  then roll the *padded* map by `dense_shift_size` (window // 2 in every shifted block, never
  clamped) and build the shift mask for the padded map. The fused op takes the padded map as the
  rolled map (`map_size = padded size`), which is exactly that rule.

TorchScript compiles the reference forward (the mask is then rebuilt per call instead of cached).
FX treats the mixer as a leaf (`register_notrace_module`): its padding and mask cache depend on the
map size.
"""
import warnings
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, resize_rel_pos_bias_table, to_2tuple, trunc_normal_

from vitzoo.kernels import window_attention as fused_window_attention
from vitzoo.kernels.window import window_uses_triton

from .window import (
    relative_position_bias, relative_position_index, shifted_window_mask, window_partition, window_reverse,
)

__all__ = ["window_attention", "ShiftedWindowAttention"]

#: masks kept per mixer (one per padded map size/device/dtype seen); older ones are dropped
_MASK_CACHE_SIZE = 4
_DROPOUT_WARNED = False


def _warn_attn_drop_once(rate: float) -> None:
    global _DROPOUT_WARNED
    if not _DROPOUT_WARNED:
        _DROPOUT_WARNED = True
        warnings.warn(f"ShiftedWindowAttention: attn_drop={rate} in training is not supported by the "
                      "fused window-attention kernel; using the PyTorch reference path instead", stacklevel=3)


def window_attention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias: torch.Tensor,
        mask: Optional[torch.Tensor],
        scale: float,
        dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention inside windows: `softmax(q k^T * scale + bias [+ mask]) v`.

    Args:
        q, k, v: `[B * nW, heads, N, head_dim]` (N = tokens per window; windows of one image
            are consecutive, so the batch dim is image-major).
        bias: `[heads, N, N]` relative position bias, shared by every window.
        mask: `[nW, N, N]` additive shift mask, one per window position, or None.
        scale: logit scale.
        dropout_p: attention dropout (training only).

    Returns:
        `[B * nW, heads, N, head_dim]`.
    """
    attn_bias = bias.unsqueeze(0)
    if mask is not None:
        num_win, n = mask.shape[0], mask.shape[-1]
        heads = bias.shape[0]
        # [nW, heads, N, N], repeated over images: SDPA wants one batch dim
        attn_bias = (attn_bias + mask.unsqueeze(1)).unsqueeze(0).expand(q.shape[0] // num_win, -1, -1, -1, -1)
        attn_bias = attn_bias.reshape(-1, heads, n, n)
    exporting = False
    if not torch.jit.is_scripting():
        exporting = torch.onnx.is_in_onnx_export()
    if exporting:
        # torch.onnx(dynamo=True) traces SDPA with a head-transposed output layout and then
        # decomposes it to a contiguous one, so the caller's transpose + reshape becomes an
        # invalid view; the explicit math (timm's default Swin path) exports cleanly
        attn = torch.softmax((q * scale) @ k.transpose(-2, -1) + attn_bias, dim=-1)
        return F.dropout(attn, p=dropout_p) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, scale=scale)


@register_notrace_module  # reason: padding and the cached shift mask depend on the map size
class ShiftedWindowAttention(nn.Module):
    """`[B, H, W, C] -> [B, H, W, C]` multi-head attention in (optionally shifted) windows.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: window (h, w) or int.
        shift_size: cyclic shift (h, w) or int; 0 for plain windows.
        head_dim: channels per head (default dim // num_heads).
        qkv_bias: bias in the qkv projection.
        attn_drop, proj_drop: dropout rates.
        dense_shift_size: the shift under the dense rule (default `shift_size`); Swin passes
            window // 2 for every second block, also where the built shift was clamped to 0.

    Parameter/buffer names follow timm: `qkv`, `proj`, `relative_position_bias_table` and the
    non-persistent `relative_position_index`. Shift masks are built once per padded map size and
    cached (timm keeps one as a buffer), so fixed-size inference never rebuilds them.
    """

    __jit_ignored_attributes__ = ["_masks"]  # the python-side mask cache (TorchScript rebuilds masks)

    def __init__(
            self,
            dim: int,
            num_heads: int,
            window_size: Union[int, Tuple[int, int]] = 7,
            shift_size: Union[int, Tuple[int, int]] = 0,
            head_dim: Optional[int] = None,
            qkv_bias: bool = True,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            dense_shift_size: Optional[Union[int, Tuple[int, int]]] = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}; pass head_dim")
            head_dim = dim // num_heads
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        self.window_size = to_2tuple(window_size)
        self.shift_size = to_2tuple(shift_size)
        self.dense_shift_size = to_2tuple(shift_size if dense_shift_size is None else dense_shift_size)
        self.dense_rule = False
        self._check_window()
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(wh, ww), persistent=False)
        attn_dim = head_dim * num_heads
        self.qkv = nn.Linear(dim, attn_dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._masks: Dict[tuple, torch.Tensor] = {}
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _check_window(self) -> None:
        if any(w < 1 for w in self.window_size):
            raise ValueError(f"window_size must be positive, got {self.window_size}")
        for name, shift in (("shift_size", self.shift_size), ("dense_shift_size", self.dense_shift_size)):
            if any(not 0 <= s < w for s, w in zip(shift, self.window_size)):
                raise ValueError(f"{name} {shift} must lie in [0, window_size {self.window_size})")

    @torch.jit.ignore
    def set_window_size(
            self, window_size: Union[int, Tuple[int, int]], shift_size: Union[int, Tuple[int, int]],
            dense_shift_size: Optional[Union[int, Tuple[int, int]]] = None) -> None:
        """Change the window (interpolating the bias table like timm) and the shifts."""
        window_size, shift_size = to_2tuple(window_size), to_2tuple(shift_size)
        old = self.window_size
        self.window_size, self.shift_size = window_size, shift_size
        self.dense_shift_size = to_2tuple(shift_size if dense_shift_size is None else dense_shift_size)
        self._check_window()
        self._masks.clear()
        if window_size == old:
            return
        wh, ww = window_size
        table = self.relative_position_bias_table
        with torch.no_grad():
            new = resize_rel_pos_bias_table(
                table, new_window_size=window_size,
                new_bias_shape=((2 * wh - 1) * (2 * ww - 1), self.num_heads), old_window_size=old)
        self.relative_position_bias_table = nn.Parameter(new, requires_grad=table.requires_grad)
        self.register_buffer(
            "relative_position_index", relative_position_index(wh, ww, device=table.device), persistent=False)

    def shift_mask(self, height: int, width: int, shift: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """The cached `[nW, N, N]` mask for a padded `height x width` map rolled by `shift`
        (built afresh under TorchScript)."""
        if torch.jit.is_scripting():
            return shifted_window_mask(height, width, self.window_size, shift, like.device, like.dtype)
        key = (height, width, shift, like.device, like.dtype)
        mask = self._masks.get(key)
        if mask is None:
            if len(self._masks) >= _MASK_CACHE_SIZE:
                self._masks.clear()
            mask = shifted_window_mask(height, width, self.window_size, shift, like.device, like.dtype)
            self._masks[key] = mask
        return mask

    @torch.jit.unused
    def use_fused(self, x: torch.Tensor) -> bool:
        """Whether this call runs the fused op (the kernels' dispatch rule; never when tracing or exporting)."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            return False
        fused = window_uses_triton([x], self.head_dim, self.window_size, x.dtype)
        if fused and self.training and self.attn_drop > 0:
            _warn_attn_drop_once(self.attn_drop)
            return False
        return fused

    @torch.jit.unused
    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Pad -> qkv -> fused window attention (reads and writes in place order) -> crop -> proj.

        The op rolls its `map_size` region: the unpadded map (built rule, timm's roll-then-pad) or
        the whole padded map (dense rule, the official detection backbone's pad-then-roll)."""
        B, H, W, C = x.shape
        wh, ww = self.window_size
        pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # padded tokens become the qkv bias, as in timm
        Hp, Wp = H + pad_h, W + pad_w
        qkv = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim)
        bias = relative_position_bias(self.relative_position_bias_table, self.relative_position_index)
        if self.dense_rule:
            out = fused_window_attention(qkv, bias, self.window_size, self.dense_shift_size, (Hp, Wp), self.scale)
        else:
            out = fused_window_attention(qkv, bias, self.window_size, self.shift_size, (H, W), self.scale)
        if pad_h or pad_w:
            out = out[:, :H, :W]
        return self.proj_drop(self.proj(out.reshape(B, H, W, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.use_fused(x):
                return self.forward_fused(x)
        B, H, W, C = x.shape
        wh, ww = self.window_size
        dense = self.dense_rule
        shift = self.dense_shift_size if dense else self.shift_size
        sh, sw = shift
        has_shift = sh > 0 or sw > 0
        if has_shift and not dense:  # built rule (timm): roll the map, then pad
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        pad_h, pad_w = (wh - H % wh) % wh, (ww - W % ww) % ww
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        if has_shift and dense:  # dense rule (official detection backbone): pad, then roll the padded map
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))

        windows = window_partition(x, self.window_size)  # [B*nW, N, C]
        Bw, N, _ = windows.shape
        q, k, v = self.qkv(windows).reshape(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = relative_position_bias(self.relative_position_bias_table, self.relative_position_index)
        mask = self.shift_mask(Hp, Wp, shift, x) if has_shift else None
        out = window_attention(q, k, v, bias, mask, self.scale, self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(Bw, N, -1)))

        x = window_reverse(out, self.window_size, Hp, Wp)
        if has_shift and dense:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        if pad_h or pad_w:
            x = x[:, :H, :W].contiguous()
        if has_shift and not dense:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"shift_size={self.shift_size}, dense_shift_size={self.dense_shift_size}")
