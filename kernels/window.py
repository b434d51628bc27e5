"""Swin's (shifted-)window attention as one tensor op, read straight from the qkv projection.

``window_attention(qkv, bias, window_size, shift_size, map_size)`` takes the qkv Linear's output
viewed as ``[B, Hp, Wp, 3, heads, d]`` for an ``H x W`` map zero-padded at the bottom/right to
``Hp x Wp`` (multiples of the window; padded tokens then hold the qkv bias, as in timm) and
returns ``[B, Hp, Wp, heads, d]`` in place order: the caller crops and projects, nothing else.

Semantics: those of timm 1.0.31's Swin block (``vitzoo/layers/window_attention.py``), i.e. roll
the ``H x W`` map by ``-shift``, pad to ``Hp x Wp``, partition into windows, attend with
``softmax(q k^T * scale + bias + mask) v`` per window, merge, crop, roll back. Written as an
index map (``window_source_index``): window ``(wi, wj)``, token ``(a, b)`` -> rolled-padded
position ``(i, j) = (wi*wh + a, wj*ww + b)`` -> source position ``((i + sh) % H, (j + sw) % W)``
when ``i < H`` and ``j < W`` (per axis), else ``(i, j)`` itself (a padded token). The output of
that token is written back to the same source position, which undoes the roll and the partition.

* ``bias``: ``[heads, N, N]`` (N = wh * ww) shared by every window; Swin passes its relative
  position bias gathered from the table by torch, so the table's gradient flows through autograd.
* shift mask: region ids of the rolled-padded map, ``rid(i) = [i >= Hp - wh] + [i >= Hp - sh]``
  per axis (``3 * rid_h + rid_w``); pairs from different regions get timm's ``-100`` (not -inf).

Backends (``kernels/_dispatch.py``): Triton kernels (``_window_triton.py``) on CUDA for
fp16/bf16/fp32, head_dim a multiple of 8 up to 128 and windows up to 256 tokens; otherwise the
PyTorch reference below. Both run behind the custom op ``vitzoo::window_attention`` (fake,
autograd, FLOP formula, fvcore handle) so ``torch.compile`` and FLOP counters see one op.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._args import int_tuple
from ._dispatch import select_backend
from ._flops import add_fvcore_handle, jit_constant, jit_shape

__all__ = ["window_attention", "window_reference", "window_flops", "window_source_index",
           "window_region_ids", "window_triton_unsupported", "window_uses_triton"]

IntOrPair = Union[int, Sequence[int]]
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_TRITON_TOKENS = 256
MASK_VALUE = -100.0  # timm's value for pairs from different regions of a shifted window


# ----------------------------------------------------------------------------------------------
# Index rules
# ----------------------------------------------------------------------------------------------
_OP = "window_attention"

def window_source_index(map_size: Sequence[int], padded_size: Sequence[int],
                        window_size: Sequence[int], shift_size: Sequence[int],
                        device: Optional[torch.device] = None) -> Tensor:
    """``[nW, N]`` flat source positions (``row * Wp + col`` in the padded map) of each window's
    tokens, windows in row-major order: roll + pad + partition as one gather index."""
    (H, W), (Hp, Wp), (wh, ww), (sh, sw) = map_size, padded_size, window_size, shift_size
    i, j = torch.arange(Hp, device=device), torch.arange(Wp, device=device)
    si = torch.where(i < H, (i + sh) % H, i)
    sj = torch.where(j < W, (j + sw) % W, j)
    flat = si[:, None] * Wp + sj[None, :]
    return flat.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


def window_region_ids(padded_size: Sequence[int], window_size: Sequence[int],
                      shift_size: Sequence[int], device: Optional[torch.device] = None) -> Tensor:
    """``[nW, N]`` shift-mask region of each window token (the regions of timm's mask)."""
    (Hp, Wp), (wh, ww), (sh, sw) = padded_size, window_size, shift_size
    i, j = torch.arange(Hp, device=device), torch.arange(Wp, device=device)
    rh = (i >= Hp - wh).long() + ((i >= Hp - sh) & (sh > 0)).long()
    rw = (j >= Wp - ww).long() + ((j >= Wp - sw) & (sw > 0)).long()
    region = rh[:, None] * 3 + rw[None, :]
    return region.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _validate(qkv: Tensor, bias: Optional[Tensor], window_size: IntOrPair, shift_size: IntOrPair,
              map_size: Optional[IntOrPair]):
    if not isinstance(qkv, Tensor):
        raise TypeError(f"window_attention: qkv must be a Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 6 or qkv.shape[3] != 3:
        raise ValueError("window_attention: qkv must be [B, Hp, Wp, 3, heads, head_dim] (the qkv "
                         f"Linear's output reshaped), got shape {tuple(qkv.shape)}")
    if not qkv.is_floating_point():
        raise TypeError(f"window_attention: qkv must be floating point, got {qkv.dtype}")
    ws, ss = int_tuple(window_size, "window_size", 2, _OP), int_tuple(shift_size, "shift_size", 2, _OP)
    Hp, Wp = qkv.shape[1], qkv.shape[2]
    ms = (Hp, Wp) if map_size is None else int_tuple(map_size, "map_size", 2, _OP)
    if any(w < 1 for w in ws):
        raise ValueError(f"window_attention: window_size must be positive, got {ws}")
    if any(not 0 <= s < w for s, w in zip(ss, ws)):
        raise ValueError(f"window_attention: shift_size {ss} must lie in [0, window_size {ws})")
    for axis, (m, p, w) in enumerate(zip(ms, (Hp, Wp), ws)):
        if p % w or not 0 < m <= p or p - m >= w:
            raise ValueError(
                f"window_attention: the padded map {Hp}x{Wp} must be the map {ms[0]}x{ms[1]} "
                f"padded up to the next multiple of the window {ws[0]}x{ws[1]} (axis {axis}: "
                f"map {m}, padded {p})")
    if bias is not None:
        n, heads = ws[0] * ws[1], qkv.shape[4]
        if not isinstance(bias, Tensor):
            raise TypeError("window_attention: bias must be a Tensor or None, got "
                            f"{type(bias).__name__}")
        if tuple(bias.shape) != (heads, n, n):
            raise ValueError(f"window_attention: bias must have shape [heads, N, N] = "
                             f"{[heads, n, n]}, got {list(bias.shape)}")
        if not bias.is_floating_point():
            raise TypeError(f"window_attention: bias must be floating point, got {bias.dtype}")
        if bias.device != qkv.device:
            raise ValueError(f"window_attention: bias is on {bias.device} but qkv is on "
                             f"{qkv.device}")
    return ws, ss, ms


def window_triton_unsupported(head_dim: int, tokens: int, dtype: torch.dtype) -> Optional[str]:
    """Why the Triton kernels cannot take this case (None when they can)."""
    if dtype not in _TRITON_DTYPES:
        return f"dtype {dtype} is not one of float32/float16/bfloat16"
    if head_dim % 8 or not 8 <= head_dim <= 128:
        return f"head_dim {head_dim} is not a multiple of 8 in [8, 128]"
    if tokens > _MAX_TRITON_TOKENS:
        return f"a window of {tokens} tokens is more than {_MAX_TRITON_TOKENS}"
    return None


# ----------------------------------------------------------------------------------------------
# Reference (PyTorch, any device, plain autograd)
# ----------------------------------------------------------------------------------------------
def _windows(qkv: Tensor, ws, ss, ms):
    """q, k, v in window order ``[B, nW, heads, N, d]`` and the place-order permutation."""
    B, Hp, Wp, _, nh, d = qkv.shape
    src = window_source_index(ms, (Hp, Wp), ws, ss, qkv.device)  # [nW, N]
    nw, n = src.shape
    win = qkv.reshape(B, Hp * Wp, 3, nh, d)[:, src.reshape(-1)]
    q, k, v = win.reshape(B, nw, n, 3, nh, d).permute(3, 0, 1, 4, 2, 5).unbind(0)
    return q, k, v, src


def _probs(q, k, bias, ws, ss, padded, scale):
    logits = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    if ss[0] or ss[1]:
        region = window_region_ids(padded, ws, ss, q.device)
        mask = (region[:, :, None] != region[:, None, :]).to(logits.dtype) * MASK_VALUE
        logits = logits + mask[:, None]
    return torch.softmax(logits, dim=-1), torch.logsumexp(logits.float(), dim=-1)


def _to_place(x: Tensor, src: Tensor, shape) -> Tensor:
    """``[B, nW, heads, N, ...]`` in window order -> place order ``[B, Hp, Wp, heads, ...]``."""
    B, nw, nh, n = x.shape[:4]
    x = x.transpose(2, 3).reshape(B, nw * n, nh, *x.shape[4:])
    return x[:, torch.argsort(src.reshape(-1))].reshape(*shape, nh, *x.shape[3:])


def _to_windows(x: Tensor, src: Tensor) -> Tensor:
    """Place order ``[B, Hp, Wp, heads, ...]`` -> window order ``[B, nW, heads, N, ...]``."""
    B, Hp, Wp, nh = x.shape[:4]
    nw, n = src.shape
    x = x.reshape(B, Hp * Wp, nh, *x.shape[4:])[:, src.reshape(-1)]
    return x.reshape(B, nw, n, nh, *x.shape[3:]).transpose(2, 3)


def _reference(qkv: Tensor, bias: Optional[Tensor], ws, ss, ms,
               scale: float) -> Tuple[Tensor, Tensor]:
    B, Hp, Wp = qkv.shape[:3]
    q, k, v, src = _windows(qkv, ws, ss, ms)
    p, lse = _probs(q, k, bias, ws, ss, (Hp, Wp), scale)
    out = torch.matmul(p, v)
    return _to_place(out, src, (B, Hp, Wp)), _to_place(lse, src, (B, Hp, Wp))


def window_reference(qkv: Tensor, bias: Optional[Tensor], window_size: IntOrPair,
                     shift_size: IntOrPair = 0, map_size: Optional[IntOrPair] = None,
                     scale: Optional[float] = None) -> Tensor:
    """The PyTorch reference of :func:`window_attention` on plain autograd (no custom op)."""
    ws, ss, ms = _validate(qkv, bias, window_size, shift_size, map_size)
    scale = qkv.shape[-1] ** -0.5 if scale is None else float(scale)
    return _reference(qkv, bias, ws, ss, ms, scale)[0]


def _reference_backward(grad_out, qkv, bias, ws, ss, ms, scale):
    """Explicit attention backward (the op's backward runs below autograd: no graph to reuse)."""
    B, Hp, Wp = qkv.shape[:3]
    q, k, v, src = _windows(qkv, ws, ss, ms)
    p, _ = _probs(q, k, bias, ws, ss, (Hp, Wp), scale)
    out = torch.matmul(p, v)
    dout = _to_windows(grad_out.to(out.dtype), src)
    dv = torch.matmul(p.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.transpose(-1, -2))
    ds = p * (dp - (dout * out).sum(-1, keepdim=True))
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q) * scale
    dqkv = _to_place(torch.stack((dq, dk, dv), dim=4), src, (B, Hp, Wp))  # [B, Hp, Wp, h, 3, d]
    dqkv = dqkv.transpose(3, 4).contiguous().to(qkv.dtype)
    dbias = qkv.new_empty(0) if bias is None else ds.sum((0, 1)).to(bias.dtype)
    return dqkv, dbias


# ----------------------------------------------------------------------------------------------
# Custom op: vitzoo::window_attention (+ backward)
# ----------------------------------------------------------------------------------------------
def window_uses_triton(tensors: Sequence[Optional[Tensor]], head_dim: int, window_size: Sequence[int],
                       dtype: torch.dtype) -> bool:
    """The op's dispatch rule for these tensors; the Swin mixer asks it to pick its path."""
    reason = window_triton_unsupported(head_dim, window_size[0] * window_size[1], dtype)
    return select_backend("window_attention", tensors, reason) == "triton"


def _use_triton(qkv: Tensor, bias: Optional[Tensor], window_size: Sequence[int]) -> bool:
    return window_uses_triton((qkv, bias), qkv.shape[-1], window_size, qkv.dtype)


@torch.library.custom_op("vitzoo::window_attention", mutates_args=())
def _window_op(qkv: Tensor, bias: Optional[Tensor], window_size: List[int], shift_size: List[int],
               map_size: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """Returns ``(out [B, Hp, Wp, heads, d], logsumexp [B, Hp, Wp, heads] fp32)``."""
    if _use_triton(qkv, bias, window_size):
        from ._window_triton import window_triton_forward
        return window_triton_forward(qkv, bias, window_size, shift_size, map_size, scale)
    out, lse = _reference(qkv, bias, window_size, shift_size, map_size, scale)
    return out.contiguous(), lse.contiguous()


@torch.library.custom_op("vitzoo::window_attention_backward", mutates_args=())
def _window_backward_op(grad_out: Tensor, qkv: Tensor, bias: Optional[Tensor], out: Tensor,
                        lse: Tensor, window_size: List[int], shift_size: List[int],
                        map_size: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """Gradients ``(dqkv, dbias)``; ``dbias`` is an empty tensor when ``bias`` is None."""
    if _use_triton(qkv, bias, window_size):
        from ._window_triton import window_triton_backward
        dqkv, dbias = window_triton_backward(grad_out, qkv, bias, out, lse, window_size,
                                             shift_size, map_size, scale)
        dbias = qkv.new_empty(0) if bias is None else dbias.to(bias.dtype)
        return dqkv, dbias
    return _reference_backward(grad_out, qkv, bias, window_size, shift_size, map_size, scale)


@_window_op.register_fake
def _fake_forward(qkv, bias, window_size, shift_size, map_size, scale):
    B, Hp, Wp, _, nh, d = qkv.shape
    return qkv.new_empty(B, Hp, Wp, nh, d), qkv.new_empty(B, Hp, Wp, nh, dtype=torch.float32)


@_window_backward_op.register_fake
def _fake_backward(grad_out, qkv, bias, out, lse, window_size, shift_size, map_size, scale):
    dbias = qkv.new_empty(0) if bias is None else bias.new_empty(bias.shape)
    return qkv.new_empty(qkv.shape), dbias


def _setup_context(ctx, inputs, output):
    qkv, bias, window_size, shift_size, map_size, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(qkv, bias, out, lse)
    ctx.geometry = (window_size, shift_size, map_size, scale)


def _autograd_backward(ctx, grad_out, grad_lse):
    qkv, bias, out, lse = ctx.saved_tensors
    dqkv, dbias = _window_backward_op(grad_out.contiguous(), qkv, bias, out, lse, *ctx.geometry)
    return dqkv, (dbias if bias is not None else None), None, None, None, None


_window_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# FLOPs: q.k and attn.v, 2 * N * d multiply-adds each per (token, head); backward 2x.
# ----------------------------------------------------------------------------------------------
def window_flops(qkv_shape: Sequence[int], window_size: Sequence[int]) -> int:
    """Forward FLOPs: ``4 * B * Hp * Wp * heads * N * d`` (padded tokens included, no softmax)."""
    B, Hp, Wp, _three, heads, head_dim = qkv_shape
    return 4 * B * Hp * Wp * heads * math.prod(window_size) * head_dim


@register_flop_formula(torch.ops.vitzoo.window_attention)
def _window_flop(qkv_shape, bias_shape, window_size, shift_size, map_size, scale, *args,
                 **kwargs) -> int:
    return window_flops(qkv_shape, window_size)


@register_flop_formula(torch.ops.vitzoo.window_attention_backward)
def _window_backward_flop(grad_out_shape, qkv_shape, bias_shape, out_shape_, lse_shape,
                          window_size, *args, **kwargs) -> int:
    return 2 * window_flops(qkv_shape, window_size)


def _fvcore_window_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore counts one per multiply-add (as its matmul handles and the papers' GMACs do)."""
    return window_flops(jit_shape(inputs[0]), jit_constant(inputs[2])) // 2


add_fvcore_handle("vitzoo::window_attention", _fvcore_window_handle)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def window_attention(qkv: Tensor, bias: Optional[Tensor], window_size: IntOrPair,
                     shift_size: IntOrPair = 0, map_size: Optional[IntOrPair] = None,
                     scale: Optional[float] = None) -> Tensor:
    """(Shifted-)window attention on ``qkv [B, Hp, Wp, 3, heads, d]`` -> ``[B, Hp, Wp, heads, d]``.

    ``window_size`` (h, w) must divide ``Hp x Wp``; ``shift_size`` in ``[0, window)``;
    ``map_size`` is the unpadded ``H x W`` (default: ``Hp x Wp``); ``bias`` ``[heads, N, N]`` or
    None; ``scale`` defaults to ``d ** -0.5``. Index rules and mask: module doc.
    """
    ws, ss, ms = _validate(qkv, bias, window_size, shift_size, map_size)
    scale = qkv.shape[-1] ** -0.5 if scale is None else float(scale)
    return torch.ops.vitzoo.window_attention(qkv, bias, list(ws), list(ss), list(ms), scale)[0]
