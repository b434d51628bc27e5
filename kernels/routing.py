"""Bi-level routed attention (BiFormer) as a tensor op: ``routed_attention``.

Layout is heads-last: ``q, k`` are ``[B, H, W, heads, dqk]`` and ``v`` is ``[B, H, W, heads, dv]``
(strided views from a qkv ``Linear`` are fine). The map is cut into ``n_win x n_win`` regions of
``w2 = (H / n_win) * (W / n_win)`` tokens; region ``r = ri * n_win + rj`` holds rows
``ri * H/n_win ...`` and columns ``rj * W/n_win ...`` (row-major inside the region).

``r_idx [B, n_win**2, topk]`` (integer, not differentiable) lists, for every query region, the
key regions it is routed to. Each query attends, with ``softmax(scale * q.k)``, to the
``topk * w2`` keys of its routed regions, in the official order (topk-major, then token-in-region
row-major) -- the order does not change the result. ``scale`` is passed explicitly because
BiFormer uses ``qk_dim ** -0.5`` with the *full* qk dim, not the head dim.

Routing itself (region means, the affinity matmul, ``topk``) stays in torch, outside the op.

The reference is the official algorithm (``rayleizhu/BiFormer`` ``ops/bra_legacy.py``): gather
the routed regions' keys and values, then dense attention per region; it runs in batch chunks so
the ``topk``-times-redundant gathered tensor stays small on CPU. The Triton kernels
(``_routing_triton.py``) gather inside the kernel instead, so no gathered K/V exists. Both run
behind one ``torch.library.custom_op`` (``vitzoo::routed_attention``) so ``torch.compile``,
FlopCounterMode and fvcore see a single op.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._dispatch import select_backend
from ._flops import add_fvcore_handle, jit_constant, jit_shape

__all__ = ["routed_attention", "routed_reference", "routed_attention_flops"]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TRITON_HEAD_DIMS = (16, 128)
_INDEX_DTYPES = (torch.int32, torch.int64)
_CHUNK_ELEMENTS = 1 << 24  # gathered K/V + logits per reference chunk (64 MB in fp32)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _validate(q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, n_win: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("r_idx", r_idx)):
        if not isinstance(t, Tensor):
            raise TypeError(f"routed_attention: {name} must be a Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 5:
            raise ValueError(f"routed_attention: {name} must be 5-D heads-last "
                             f"[B, H, W, heads, d], got shape {tuple(t.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"routed_attention: q and k must have the same shape, got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"routed_attention: v must be [B, H, W, heads, dv] matching q's "
                         f"{tuple(q.shape[:-1])}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"routed_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    if not q.is_floating_point():
        raise TypeError(f"routed_attention: q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device == r_idx.device):
        raise ValueError(f"routed_attention: q, k, v, r_idx must be on one device, got {q.device}, "
                         f"{k.device}, {v.device}, {r_idx.device}")
    if isinstance(n_win, bool) or not isinstance(n_win, int) or n_win < 1:
        raise ValueError(f"routed_attention: n_win must be a positive int, got {n_win!r}")
    B, H, W = q.shape[:3]
    if H % n_win or W % n_win:
        raise ValueError(f"routed_attention: the map {H}x{W} is not divisible by n_win={n_win}; "
                         f"H and W must be multiples of n_win (pad the map first)")
    regions = n_win * n_win
    if r_idx.dtype not in _INDEX_DTYPES:
        raise TypeError(f"routed_attention: r_idx must be int64 (or int32), got {r_idx.dtype}")
    if r_idx.dim() != 3 or r_idx.shape[0] != B or r_idx.shape[1] != regions:
        raise ValueError(f"routed_attention: r_idx must be [B, n_win*n_win, topk] = "
                         f"[{B}, {regions}, topk], got {tuple(r_idx.shape)}")
    topk = r_idx.shape[2]
    if not 1 <= topk <= regions:
        raise ValueError(f"routed_attention: topk must be in [1, {regions}] (n_win*n_win), "
                         f"got {topk}")
    # Value range: checked where it is free (CPU, eager); the kernels clamp for memory safety.
    if (r_idx.device.type == "cpu" and r_idx.numel() and not torch.compiler.is_compiling()
            and not isinstance(r_idx, torch._subclasses.FakeTensor)):
        lo, hi = int(r_idx.min()), int(r_idx.max())
        if lo < 0 or hi >= regions:
            raise ValueError(f"routed_attention: r_idx values must be region indices in "
                             f"[0, {regions}), got values in [{lo}, {hi}]")


# ----------------------------------------------------------------------------------------------
# Reference: the official gather-then-attention, in batch chunks
# ----------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _to_regions(x: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``[b, H, W, h, d]`` -> ``[b, n*n, h, w2, d]`` (region-major, token row-major in region)."""
    b, H, W, nh, d = x.shape
    x = x.to(dtype).reshape(b, n, H // n, n, W // n, nh, d).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, n * n, nh, (H // n) * (W // n), d)


def _from_regions(x: Tensor, n: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`_to_regions`: ``[b, n*n, h, w2, d]`` -> ``[b, H, W, h, d]``."""
    b, _, nh, _, d = x.shape
    x = x.reshape(b, n, n, nh, H // n, W // n, d).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, H, W, nh, d)


def _gather(xr: Tensor, r_idx: Tensor) -> Tensor:
    """Official KV gather: ``[b, R, h, w2, d]`` by ``[b, R, topk]`` -> ``[b, R, h, topk*w2, d]``."""
    b, R, nh, w2, d = xr.shape
    topk = r_idx.shape[-1]
    idx = r_idx.long().reshape(b, R * topk, 1, 1, 1).expand(b, R * topk, nh, w2, d)
    g = torch.gather(xr, 1, idx).reshape(b, R, topk, nh, w2, d)
    return g.transpose(2, 3).reshape(b, R, nh, topk * w2, d)


def _chunk(q: Tensor, v: Tensor, topk: int, n_win: int) -> int:
    """Batch chunk for the reference: bounds the gathered K/V and the logits per step."""
    _, H, W, nh, dqk = q.shape
    w2 = (H // n_win) * (W // n_win)
    per_batch = H * W * nh * topk * (dqk + v.shape[-1] + w2)  # gathered k, v + logits
    return max(1, _CHUNK_ELEMENTS // max(1, per_batch))


def _attend(q, k, v, r_idx, n, scale):
    """One batch chunk of the official algorithm; differentiable by plain autograd.

    Returns ``(out [b, H, W, h, dv], lse [b, H, W, h], and the region tensors)``.
    """
    _, H, W, _, _ = q.shape
    ct = _compute_dtype(q.dtype)
    qr, kr, vr = _to_regions(q, n, ct), _to_regions(k, n, ct), _to_regions(v, n, ct)
    kg, vg = _gather(kr, r_idx), _gather(vr, r_idx)            # [b, R, h, T, d]
    logits = torch.matmul(qr * scale, kg.transpose(-1, -2))    # [b, R, h, w2, T]
    lse = torch.logsumexp(logits, dim=-1)
    p = torch.exp(logits - lse.unsqueeze(-1))
    out = torch.matmul(p, vg)                                   # [b, R, h, w2, dv]
    return (_from_regions(out, n, H, W), _from_regions(lse.unsqueeze(-1), n, H, W)[..., 0],
            (qr, kg, vg, p, out))


def routed_reference(q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, n_win: int,
                     scale: float) -> Tensor:
    """The official gather-then-attention algorithm on plain autograd (no custom op).

    Same arguments and result as :func:`routed_attention`; computes in fp32 for fp16/bf16 inputs
    and returns the input dtype.
    """
    _validate(q, k, v, r_idx, n_win)
    step = _chunk(q, v, r_idx.shape[-1], n_win)
    outs = [_attend(q[i:i + step], k[i:i + step], v[i:i + step], r_idx[i:i + step], n_win,
                    float(scale))[0] for i in range(0, q.shape[0], step)]
    return torch.cat(outs).to(q.dtype)


def reference_forward(q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, n_win: int,
                      scale: float) -> Tuple[Tensor, Tensor]:
    """``(out [B, H, W, h, dv] in q.dtype, lse [B, H, W, h] fp32)``."""
    step = _chunk(q, v, r_idx.shape[-1], n_win)
    outs, lses = [], []
    for i in range(0, q.shape[0], step):
        out, lse, _ = _attend(q[i:i + step], k[i:i + step], v[i:i + step], r_idx[i:i + step],
                              n_win, scale)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs).to(q.dtype).contiguous(), torch.cat(lses).float().contiguous()


def _scatter_regions(xg: Tensor, r_idx: Tensor, regions: int) -> Tensor:
    """Adjoint of :func:`_gather`: ``[b, R, h, topk*w2, d]`` -> ``[b, R, h, w2, d]``, summing the
    copies of each key region. Done as a one-hot matmul, so it is deterministic on every device."""
    b, R, nh, T, d = xg.shape
    topk = r_idx.shape[-1]
    w2 = T // topk
    onehot = (r_idx.long().reshape(b, 1, R * topk)
              == torch.arange(regions, device=xg.device).view(1, regions, 1)).to(xg.dtype)
    src = xg.reshape(b, R, nh, topk, w2, d).transpose(2, 3).reshape(b, R * topk, nh * w2 * d)
    return torch.bmm(onehot, src).reshape(b, regions, nh, w2, d)


def reference_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor,
                       n_win: int, scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Analytic ``(dq, dk, dv)`` of the reference, recomputing the attention per batch chunk."""
    B, H, W, _, _ = q.shape
    R = n_win * n_win
    step = _chunk(q, v, r_idx.shape[-1], n_win)
    dqs, dks, dvs = [], [], []
    for i in range(0, B, step):
        sl = slice(i, i + step)
        _, _, (qr, kg, vg, p, outr) = _attend(q[sl], k[sl], v[sl], r_idx[sl], n_win, scale)
        do = _to_regions(grad_out[sl], n_win, p.dtype)                   # [b, R, h, w2, dv]
        delta = (do * outr).sum(-1, keepdim=True)                        # rowsum(dO * O)
        ds = torch.matmul(do, vg.transpose(-1, -2)).sub_(delta).mul_(p)  # [b, R, h, w2, T]
        dq = torch.matmul(ds, kg) * scale
        dkg = torch.matmul(ds.transpose(-1, -2), qr) * scale             # [b, R, h, T, dqk]
        dvg = torch.matmul(p.transpose(-1, -2), do)                      # [b, R, h, T, dv]
        dqs.append(_from_regions(dq, n_win, H, W))
        dks.append(_from_regions(_scatter_regions(dkg, r_idx[sl], R), n_win, H, W))
        dvs.append(_from_regions(_scatter_regions(dvg, r_idx[sl], R), n_win, H, W))
    return tuple(torch.cat(x).to(q.dtype).contiguous() for x in (dqs, dks, dvs))


# ----------------------------------------------------------------------------------------------
# Backend dispatch
# ----------------------------------------------------------------------------------------------
def _triton_unsupported(q: Tensor, v: Tensor) -> Optional[str]:
    if q.dtype not in _TRITON_DTYPES:
        return f"dtype {q.dtype} is not one of float32/float16/bfloat16"
    lo, hi = _TRITON_HEAD_DIMS
    for name, d in (("qk head_dim", q.shape[-1]), ("v head_dim", v.shape[-1])):
        if d < lo:
            return f"{name} {d} is below the kernels' minimum {lo} (tl.dot needs K >= 16)"
        if d > hi:
            return f"{name} {d} is above the kernels' maximum {hi}"
        if d % 8:
            return f"{name} {d} is not a multiple of 8 in [{lo}, {hi}]"
    return None


def _use_triton(q, k, v, r_idx) -> bool:
    return select_backend("routed_attention", (q, k, v, r_idx),
                          _triton_unsupported(q, v)) == "triton"


# ----------------------------------------------------------------------------------------------
# Custom op: vitzoo::routed_attention (+ its backward op)
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("vitzoo::routed_attention", mutates_args=())
def _routed_op(q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, n_win: int,
               scale: float) -> Tuple[Tensor, Tensor]:
    """Routed attention; returns ``(out [B, H, W, h, dv], logsumexp [B, H, W, h] fp32)``."""
    if _use_triton(q, k, v, r_idx):
        from ._routing_triton import routed_triton_forward
        return routed_triton_forward(q, k, v, r_idx, n_win, scale)
    return reference_forward(q, k, v, r_idx, n_win, scale)


@torch.library.custom_op("vitzoo::routed_attention_backward", mutates_args=())
def _routed_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor,
                        out: Tensor, lse: Tensor, n_win: int,
                        scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dq, dk, dv)`` (``r_idx`` has none)."""
    if _use_triton(q, k, v, r_idx):
        from ._routing_triton import routed_triton_backward
        return routed_triton_backward(grad_out, q, k, v, r_idx, out, lse, n_win, scale)
    return reference_backward(grad_out, q, k, v, r_idx, n_win, scale)


@_routed_op.register_fake
def _fake_forward(q, k, v, r_idx, n_win, scale):
    return (q.new_empty(tuple(q.shape[:-1]) + (v.shape[-1],)),
            q.new_empty(q.shape[:-1], dtype=torch.float32))


@_routed_backward_op.register_fake
def _fake_backward(grad_out, q, k, v, r_idx, out, lse, n_win, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, r_idx, n_win, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, r_idx, out, lse)
    ctx.n_win, ctx.scale = n_win, scale


def _autograd_backward(ctx, grad_out, grad_lse):
    q, k, v, r_idx, out, lse = ctx.saved_tensors
    dq, dk, dv = _routed_backward_op(grad_out.contiguous(), q, k, v, r_idx, out, lse, ctx.n_win,
                                     ctx.scale)
    return dq, dk, dv, None, None, None


_routed_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# FLOPs: q.k (dqk) and attn.v (dv) per (query, head, routed key); backward 2x.
# ----------------------------------------------------------------------------------------------
def routed_attention_flops(q_shape: Sequence[int], v_shape: Sequence[int], topk: int,
                           n_win: int) -> int:
    """Forward FLOPs (torch convention, 2 per multiply-add):
    ``2 * B*H*W * heads * topk*w2 * (dqk + dv)``; fvcore counts half of it (MACs)."""
    B, H, W, heads, dqk = q_shape
    keys = topk * (H // n_win) * (W // n_win)
    return 2 * B * H * W * heads * keys * (dqk + v_shape[-1])


@register_flop_formula(torch.ops.vitzoo.routed_attention)
def _routed_flop(q_shape, k_shape, v_shape, r_idx_shape, n_win, scale, *args, **kwargs) -> int:
    return routed_attention_flops(q_shape, v_shape, r_idx_shape[-1], n_win)


@register_flop_formula(torch.ops.vitzoo.routed_attention_backward)
def _routed_backward_flop(grad_out_shape, q_shape, k_shape, v_shape, r_idx_shape, out_shape_,
                          lse_shape, n_win, scale, *args, **kwargs) -> int:
    return 2 * routed_attention_flops(q_shape, v_shape, r_idx_shape[-1], n_win)


def _fvcore_routed_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore counts one per multiply-add (as for its matmul/einsum handles)."""
    q_shape, v_shape, r_shape = jit_shape(inputs[0]), jit_shape(inputs[2]), jit_shape(inputs[3])
    n_win = jit_constant(inputs[4])
    return routed_attention_flops(q_shape, v_shape, r_shape[-1], n_win) // 2


add_fvcore_handle("vitzoo::routed_attention", _fvcore_routed_handle)


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def routed_attention(q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, n_win: int,
                     scale: float) -> Tensor:
    """Bi-level routed attention (BiFormer) on heads-last tensors.

    ``q, k [B, H, W, heads, dqk]``, ``v [B, H, W, heads, dv]``, ``r_idx [B, n_win**2, topk]``
    (int64/int32 key-region indices per query region, row-major regions), ``H`` and ``W``
    multiples of ``n_win``, ``scale`` the logit scale (BiFormer: ``qk_dim ** -0.5``).
    Returns ``[B, H, W, heads, dv]``. Semantics: module doc.
    """
    _validate(q, k, v, r_idx, n_win)
    return torch.ops.vitzoo.routed_attention(q, k, v, r_idx, int(n_win), float(scale))[0]
