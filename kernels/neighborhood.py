"""Neighborhood attention (NAT / DiNAT) as tensor ops: ``na1d`` and ``na2d``.

Layout is heads-last: ``q, k, v`` are ``[B, H, W, heads, d]`` (2-D) or ``[B, L, heads, d]`` (1-D),
the layout a qkv ``Linear`` produces. The output has the same shape as ``q``.

Semantics are those of NATTEN 0.17 (its naive CPU kernels' ``get_window_start`` /
``get_pb_start``), stated here per axis so the 2-D op is the product of two 1-D rules.
For an axis of length ``L``, kernel size ``k`` (odd), ``r = k // 2`` and dilation ``d``:

* **Groups.** Query ``i`` belongs to dilation group ``g = i % d``: the positions
  ``g, g + d, g + 2d, ...``. In group coordinates the query is ``c = i // d`` and the group has
  ``n_g = ceil((L - g) / d)`` positions (groups differ by one when ``d`` does not divide ``L``).
* **Window.** The window start in group coordinates is ``s = clamp(c - r, 0, n_g - k)``: centred
  where possible, shifted (never shrunk) at the group's borders, so every query sees exactly
  ``k`` keys. The keys are at map positions ``g + (s + t) * d`` for ``t = 0 .. k-1``.
  This needs ``n_g >= k`` for every group, i.e. ``k * d <= L``.
* **Relative position bias.** The table is ``[heads, 2k-1]`` per axis (2-D: ``[heads, 2k-1, 2k-1]``
  indexed ``[h, row_index, col_index]``). Key ``t`` of query ``c`` uses index
  ``(s + t) - c + (k - 1)``, the group-coordinate offset of key from query shifted to be
  non-negative: ``k-1`` is "same position", ``0`` is "k-1 steps before", ``2k-2`` "k-1 after".
  NATTEN writes the same as ``pb_start = s - c + k - 1`` (``r`` inside the map,
  ``k - 1 - c`` at the start border, ``(L - i - 1) // d`` at the end border).
* **Logits** are ``scale * (q . k) + rpb`` (bias added after scaling), then softmax over the
  ``k`` (2-D: ``k * k``) neighbours, ``scale`` defaulting to ``d_head ** -0.5``.

Example (``L = 7, k = 3, d = 2``): group 0 = positions (0, 2, 4, 6), group 1 = (1, 3, 5). Query 5
(group 1, ``c = 2``, ``n_g = 3``) has start ``clamp(1, 0, 0) = 0``: keys (1, 3, 5) with bias
indices (0, 1, 2). Query 6 (group 0, ``c = 3``, ``n_g = 4``) has start 1: keys (2, 4, 6), bias
indices (0, 1, 2).

The reference implementation gathers the ``k*k`` neighbours through cached index tensors (no
``N x N`` mask); the Triton kernels compute the same thing fused. Both run behind one
``torch.library.custom_op`` per op (``vitzoo::na1d``, ``vitzoo::na2d``) so ``torch.compile``,
FlopCounterMode and fvcore see a single op.
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
from ._neighborhood_index import neighbor_index, rpb_index, window_start
from ._neighborhood_reference import reference_backward, reference_forward

__all__ = ["na1d", "na2d", "window_start", "neighbor_index", "rpb_index", "na_reference"]

IntOrPair = Union[int, Sequence[int]]
_MIN_K, _MAX_K = 3, 13
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TRITON_HEAD_DIMS = (8, 128)  # multiples of 8 (the kernels pad to a power of two >= 16)
_MAX_GRID_Y = 65535           # batch * heads is the kernels' second grid axis


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _validate(q: Tensor, k: Tensor, v: Tensor, kernel_size: IntOrPair, dilation: IntOrPair,
              rpb: Optional[Tensor], nd: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    layout = "[B, H, W, heads, head_dim]" if nd == 2 else "[B, L, heads, head_dim]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"na{nd}d: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != nd + 3:
            raise ValueError(f"na{nd}d: {name} must be {nd + 3}-D heads-last {layout}, "
                             f"got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"na{nd}d: q, k, v must have the same shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"na{nd}d: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise TypeError(f"na{nd}d: q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"na{nd}d: q, k, v must be on one device, got {q.device}, {k.device}, "
                         f"{v.device}")
    ks = int_tuple(kernel_size, "kernel_size", nd, f"na{nd}d")
    dil = int_tuple(dilation, "dilation", nd, f"na{nd}d")
    for kx in ks:
        if kx % 2 == 0 or not _MIN_K <= kx <= _MAX_K:
            raise ValueError(f"na{nd}d: kernel_size must be odd and in [{_MIN_K}, {_MAX_K}], "
                             f"got {kernel_size!r}")
    for dx in dil:
        if dx < 1:
            raise ValueError(f"na{nd}d: dilation must be >= 1, got {dilation!r}")
    spatial = tuple(q.shape[1:1 + nd])
    for axis, (size, kx, dx) in enumerate(zip(spatial, ks, dil)):
        if kx * dx > size:
            raise ValueError(
                f"na{nd}d: kernel_size * dilation = {kx} * {dx} = {kx * dx} exceeds the feature "
                f"map size {size} (axis {axis} of map {spatial}). Every query needs a full window "
                f"of {kx} keys in its dilation group; the model must pad feature maps smaller "
                f"than kernel_size * dilation before calling na{nd}d.")
    if rpb is not None:
        heads = q.shape[-2]
        want = (heads,) + tuple(2 * kx - 1 for kx in ks)
        if not isinstance(rpb, Tensor):
            raise TypeError(f"na{nd}d: rpb must be a Tensor or None, got {type(rpb).__name__}")
        if tuple(rpb.shape) != want:
            raise ValueError(f"na{nd}d: rpb must have shape [heads, "
                             + ", ".join(["2k-1"] * nd) + f"] = {list(want)}, "
                             f"got {list(rpb.shape)}")
        if not rpb.is_floating_point():
            raise TypeError(f"na{nd}d: rpb must be floating point, got {rpb.dtype}")
        if rpb.device != q.device:
            raise ValueError(f"na{nd}d: rpb is on {rpb.device} but q is on {q.device}")
    return ks, dil


# ----------------------------------------------------------------------------------------------
# Reference implementation (PyTorch, any device). Core works on 2-D; 1-D is a 1 x L map.
# ----------------------------------------------------------------------------------------------
def na_reference(q: Tensor, k: Tensor, v: Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1,
                 rpb: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """The PyTorch reference on plain autograd (no custom op), 1-D or 2-D by ``q.dim()``."""
    nd = q.dim() - 3
    if nd not in (1, 2):
        raise ValueError(f"na_reference: q must be 4-D or 5-D heads-last, got {tuple(q.shape)}")
    ks, dil = _validate(q, k, v, kernel_size, dilation, rpb, nd)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q5, k5, v5, rpb3, ks2, dil2 = _as_2d(q, k, v, rpb, ks, dil)
    out = reference_forward(q5, k5, v5, rpb3, ks2, dil2, scale)[0]
    return out.squeeze(1) if nd == 1 else out


def _as_2d(q, k, v, rpb, ks, dil):
    """View 1-D inputs as a ``1 x L`` map (kernel 1 along the dummy axis)."""
    if len(ks) == 2:
        return q, k, v, rpb, tuple(ks), tuple(dil)
    rpb3 = None if rpb is None else rpb.unsqueeze(1)
    return q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), rpb3, (1, ks[0]), (1, dil[0])


# ----------------------------------------------------------------------------------------------
# Backend dispatch (inside the custom ops)
# ----------------------------------------------------------------------------------------------
def _triton_unsupported(q: Tensor) -> Optional[str]:
    if q.dtype not in _TRITON_DTYPES:
        return f"dtype {q.dtype} is not one of float32/float16/bfloat16"
    lo, hi = _TRITON_HEAD_DIMS
    if not lo <= q.shape[-1] <= hi or q.shape[-1] % 8:
        return f"head_dim {q.shape[-1]} is not a multiple of 8 in [{lo}, {hi}]"
    if q.shape[0] * q.shape[-2] > _MAX_GRID_Y:
        return f"batch * heads = {q.shape[0] * q.shape[-2]} exceeds {_MAX_GRID_Y}"
    return None


def _forward(q, k, v, rpb, ks, dil, scale, op_name):
    if select_backend(op_name, (q, k, v, rpb), _triton_unsupported(q)) == "triton":
        from ._neighborhood_triton import na2d_triton_forward
        return na2d_triton_forward(q, k, v, rpb, ks, dil, scale)
    return reference_forward(q, k, v, rpb, ks, dil, scale)


def _backward(grad_out, q, k, v, rpb, out, lse, ks, dil, scale, op_name):
    if select_backend(op_name, (q, k, v, rpb), _triton_unsupported(q)) == "triton":
        from ._neighborhood_triton import na2d_triton_backward
        return na2d_triton_backward(grad_out, q, k, v, rpb, out, lse, ks, dil, scale)
    return reference_backward(grad_out, q, k, v, rpb, ks, dil, scale)


# ----------------------------------------------------------------------------------------------
# Custom ops: vitzoo::na2d / vitzoo::na1d (+ their backward ops)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("vitzoo::na2d", mutates_args=())
def _na2d_op(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int],
             dilation: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """2-D neighborhood attention; returns ``(out [B,H,W,h,d], logsumexp [B,H,W,h] fp32)``."""
    return _forward(q, k, v, rpb, kernel_size, dilation, scale, "na2d")


@torch.library.custom_op("vitzoo::na2d_backward", mutates_args=())
def _na2d_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                      out: Tensor, lse: Tensor, kernel_size: List[int], dilation: List[int],
                      scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dq, dk, dv, drpb)``; ``drpb`` is an empty tensor when ``rpb`` is None."""
    return _backward(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale, "na2d")


@torch.library.custom_op("vitzoo::na1d", mutates_args=())
def _na1d_op(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int],
             dilation: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """1-D neighborhood attention; returns ``(out [B,L,h,d], logsumexp [B,L,h] fp32)``."""
    q5, k5, v5, rpb3, ks, dil = _as_2d(q, k, v, rpb, kernel_size, dilation)
    out, lse = _forward(q5, k5, v5, rpb3, ks, dil, scale, "na1d")
    return out.squeeze(1), lse.squeeze(1)


@torch.library.custom_op("vitzoo::na1d_backward", mutates_args=())
def _na1d_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                      out: Tensor, lse: Tensor, kernel_size: List[int], dilation: List[int],
                      scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dq, dk, dv, drpb)``; ``drpb`` is an empty tensor when ``rpb`` is None."""
    q5, k5, v5, rpb3, ks, dil = _as_2d(q, k, v, rpb, kernel_size, dilation)
    dq, dk, dv, drpb = _backward(grad_out.unsqueeze(1), q5, k5, v5, rpb3, out.unsqueeze(1),
                                 lse.unsqueeze(1), ks, dil, scale, "na1d")
    if rpb is not None:
        drpb = drpb.reshape(rpb.shape)
    return dq.squeeze(1), dk.squeeze(1), dv.squeeze(1), drpb


def _fake_forward(q, k, v, rpb, kernel_size, dilation, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _fake_backward(grad_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale):
    drpb = q.new_empty(0) if rpb is None else rpb.new_empty(rpb.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drpb


def _setup_context(ctx, inputs, output):
    q, k, v, rpb, kernel_size, dilation, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.kernel_size, ctx.dilation, ctx.scale = kernel_size, dilation, scale


def _make_autograd(backward_op):
    def _autograd_backward(ctx, grad_out, grad_lse):
        q, k, v, rpb, out, lse = ctx.saved_tensors
        dq, dk, dv, drpb = backward_op(grad_out.contiguous(), q, k, v, rpb, out, lse,
                                       ctx.kernel_size, ctx.dilation, ctx.scale)
        return dq, dk, dv, (drpb if rpb is not None else None), None, None, None
    return _autograd_backward


for _op, _bwd in ((_na2d_op, _na2d_backward_op), (_na1d_op, _na1d_backward_op)):
    _op.register_fake(_fake_forward)
    _bwd.register_fake(_fake_backward)
    _op.register_autograd(_make_autograd(_bwd), setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# FLOP formulas: q.k and attn.v, 2 * kk * d multiply-adds each per (token, head); backward 2x.
# ----------------------------------------------------------------------------------------------
def na_flops(q_shape: Sequence[int], kernel_size: Sequence[int]) -> int:
    """Forward FLOPs of neighborhood attention: ``4 * tokens * heads * kk * d`` (no softmax)."""
    *lead, _heads, head_dim = q_shape
    return 4 * math.prod(lead) * _heads * math.prod(kernel_size) * head_dim


@register_flop_formula([torch.ops.vitzoo.na2d, torch.ops.vitzoo.na1d])
def _na_flop(q_shape, k_shape, v_shape, rpb_shape, kernel_size, dilation, scale, *args,
             **kwargs) -> int:
    return na_flops(q_shape, kernel_size)


@register_flop_formula([torch.ops.vitzoo.na2d_backward, torch.ops.vitzoo.na1d_backward])
def _na_backward_flop(grad_out_shape, q_shape, k_shape, v_shape, rpb_shape, out_shape_, lse_shape,
                      kernel_size, dilation, scale, *args, **kwargs) -> int:
    return 2 * na_flops(q_shape, kernel_size)


def na_macs(q_shape: Sequence[int], kernel_size: Sequence[int]) -> int:
    """Forward multiply-adds of neighborhood attention, ``na_flops / 2`` (fvcore's unit)."""
    return na_flops(q_shape, kernel_size) // 2


def _fvcore_na_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # fvcore counts one multiply-add as one (its matmul/conv handles do), as the papers' GMACs
    # do; torch's FlopCounterMode above keeps its own convention, two per multiply-add.
    q_shape = jit_shape(inputs[0])
    kernel_size = jit_constant(inputs[4])
    return na_macs(q_shape, kernel_size)


add_fvcore_handle("vitzoo::na2d", _fvcore_na_handle)
add_fvcore_handle("vitzoo::na1d", _fvcore_na_handle)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def na2d(q: Tensor, k: Tensor, v: Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1,
         rpb: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """2-D neighborhood attention on heads-last ``[B, H, W, heads, d]`` tensors.

    ``kernel_size`` odd in 3..13 (int or (kh, kw)), ``dilation`` >= 1 with
    ``kernel_size * dilation <= map size`` per axis, optional ``rpb`` ``[heads, 2kh-1, 2kw-1]``,
    ``scale`` defaulting to ``d ** -0.5``. Returns ``[B, H, W, heads, d]``. Index rules: module doc.
    """
    ks, dil = _validate(q, k, v, kernel_size, dilation, rpb, 2)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return torch.ops.vitzoo.na2d(q, k, v, rpb, list(ks), list(dil), scale)[0]


def na1d(q: Tensor, k: Tensor, v: Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1,
         rpb: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """1-D neighborhood attention on heads-last ``[B, L, heads, d]`` tensors.

    Same rules as :func:`na2d` along one axis; ``rpb`` is ``[heads, 2k-1]``.
    """
    ks, dil = _validate(q, k, v, kernel_size, dilation, rpb, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return torch.ops.vitzoo.na1d(q, k, v, rpb, list(ks), list(dil), scale)[0]
