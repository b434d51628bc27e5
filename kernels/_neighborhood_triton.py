"""Triton kernels for 2-D neighborhood attention (1-D runs as a ``1 x L`` map).

Imported lazily by :mod:`vitzoo.kernels.neighborhood` only when the Triton backend is chosen.
Index rules are those of the module doc of ``neighborhood.py``, recomputed in-kernel per axis:
group ``g = i % d``, group coordinate ``c = i // d``, group length ``n = ceil((L - g) / d)``,
window start ``s = clamp(c - k // 2, 0, n - k)``, rpb index ``(s + t) - c + k - 1``.

* forward: one program per (query tile, batch * head); loops over the ``kh * kw`` neighbours with
  an online softmax in fp32, writes the output and the logsumexp.
* backward dq (+ dS for the bias): one program per query tile, recomputes the probabilities from
  the saved logsumexp. ``d(rpb)`` is a reduction of dS done with ``index_add_`` afterwards
  (deterministic; no atomics).
* backward dk/dv: inverse-neighbourhood formulation, one program per key tile. Along an axis,
  the queries whose window holds key ``j`` form the interval ``[c_lo, c_hi]`` of its group:
  ``c_lo = 0 if j_c <= k - 1 else j_c - k//2`` and ``c_hi = n - 1 if j_c >= n - k else
  j_c + k//2`` (at most ``2k - 1`` queries), so no atomics are needed.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["na2d_triton_forward", "na2d_triton_backward"]


@triton.jit
def _axis_window(i, L, DIL, K: tl.constexpr):
    """Per-axis window of query positions ``i``: (group, group coord, window start)."""
    g = i % DIL
    c = i // DIL
    n = (L - g + DIL - 1) // DIL
    s = tl.minimum(tl.maximum(c - K // 2, 0), n - K)
    return g, c, s


@triton.jit
def _tile(pid_t, pid_bh, H, W, NH, BLOCK: tl.constexpr):
    """Program ids -> (batch, head, flat positions of this tile, their mask, row, column)."""
    b = (pid_bh // NH).to(tl.int64)
    h = pid_bh % NH
    offs = pid_t * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    return b, h, offs, mask, offs // W, offs % W


@triton.jit
def _rpb(RPB, h, dy, dx, mask, KH: tl.constexpr, KW: tl.constexpr):
    """Bias of the key-minus-query offset (dy, dx), in group coordinates, from the
    ``[heads, 2KH-1, 2KW-1]`` table (fp32)."""
    idx = h * (2 * KH - 1) * (2 * KW - 1) + (dy + KH - 1) * (2 * KW - 1) + (dx + KW - 1)
    return tl.load(RPB + idx, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _na2d_fwd_kernel(
    Q, K, V, RPB, O, LSE,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, NH, DH, DW, scale,
    KH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    b, h, offs, qmask, i, j = _tile(tl.program_id(0), tl.program_id(1), H, W, NH, BLOCK_Q)
    gi, ci, si = _axis_window(i, H, DH, KH)
    gj, cj, sj = _axis_window(j, W, DW, KW)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    m2 = qmask[:, None] & dmask[None, :]

    q_ptr = Q + b * sqb + h * sqn + (i * sqh + j * sqw)[:, None] + d[None, :]
    q = tl.load(q_ptr, mask=m2, other=0.0).to(tl.float32) * scale
    m_i = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    k_base = K + b * skb + h * skn
    v_base = V + b * svb + h * svn
    for a in range(KH):
        ki = gi + (si + a) * DH
        for c in range(KW):
            kj = gj + (sj + c) * DW
            kk = tl.load(k_base + (ki * skh + kj * skw)[:, None] + d[None, :], mask=m2, other=0.0)
            s = tl.sum(q * kk.to(tl.float32), axis=1)
            if HAS_RPB:
                s += _rpb(RPB, h, si + a - ci, sj + c - cj, qmask, KH, KW)
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            vv = tl.load(v_base + (ki * svh + kj * svw)[:, None] + d[None, :], mask=m2, other=0.0)
            acc = acc * alpha[:, None] + p[:, None] * vv.to(tl.float32)
            l_i = l_i * alpha + p
            m_i = m_new
    out = acc / l_i[:, None]
    o_ptr = O + (b * H * W * NH + h) * HEAD_DIM + (offs * NH * HEAD_DIM)[:, None] + d[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=m2)
    tl.store(LSE + b * H * W * NH + offs * NH + h, m_i + tl.log(l_i), mask=qmask)


@triton.jit
def _na2d_bwd_dq_kernel(
    Q, K, V, RPB, DO, LSE, DELTA, DQ, DS,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, NH, DH, DW, scale,
    KH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    b, h, offs, qmask, i, j = _tile(tl.program_id(0), tl.program_id(1), H, W, NH, BLOCK_Q)
    gi, ci, si = _axis_window(i, H, DH, KH)
    gj, cj, sj = _axis_window(j, W, DW, KW)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    m2 = qmask[:, None] & dmask[None, :]

    q = tl.load(Q + b * sqb + h * sqn + (i * sqh + j * sqw)[:, None] + d[None, :], mask=m2,
                other=0.0).to(tl.float32) * scale
    tok = b * H * W * NH + offs * NH + h                      # index into [B, H, W, NH] tensors
    do = tl.load(DO + tok[:, None] * HEAD_DIM + d[None, :], mask=m2, other=0.0).to(tl.float32)
    lse = tl.load(LSE + tok, mask=qmask, other=0.0)
    delta = tl.load(DELTA + tok, mask=qmask, other=0.0)
    dq = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    k_base = K + b * skb + h * skn
    v_base = V + b * svb + h * svn
    ds_base = DS + ((b * NH + h) * H * W + offs) * (KH * KW)  # [B, NH, N, KH*KW] fp32
    for a in range(KH):
        ki = gi + (si + a) * DH
        for c in range(KW):
            kj = gj + (sj + c) * DW
            kk = tl.load(k_base + (ki * skh + kj * skw)[:, None] + d[None, :], mask=m2,
                         other=0.0).to(tl.float32)
            vv = tl.load(v_base + (ki * svh + kj * svw)[:, None] + d[None, :], mask=m2,
                         other=0.0).to(tl.float32)
            s = tl.sum(q * kk, axis=1)
            if HAS_RPB:
                s += _rpb(RPB, h, si + a - ci, sj + c - cj, qmask, KH, KW)
            p = tl.exp(s - lse)
            dp = tl.sum(do * vv, axis=1)
            ds = p * (dp - delta)
            dq += ds[:, None] * kk
            if HAS_RPB:
                tl.store(ds_base + a * KW + c, ds, mask=qmask)
    dq_ptr = DQ + tok[:, None] * HEAD_DIM + d[None, :]
    tl.store(dq_ptr, (dq * scale).to(DQ.dtype.element_ty), mask=m2)


@triton.jit
def _axis_inverse(j, L, DIL, K: tl.constexpr):
    """Per-axis inverse neighbourhood of key positions ``j``: (group, coord, first query, count)."""
    g = j % DIL
    c = j // DIL
    n = (L - g + DIL - 1) // DIL
    lo = tl.where(c <= K - 1, 0, c - K // 2)
    hi = tl.where(c >= n - K, n - 1, c + K // 2)
    return g, c, lo, hi - lo + 1


@triton.jit
def _na2d_bwd_dkdv_kernel(
    Q, K, V, RPB, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, NH, DH, DW, scale,
    KH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    b, h, offs, kmask, i, j = _tile(tl.program_id(0), tl.program_id(1), H, W, NH, BLOCK_Q)
    gi, ci, lo_i, cnt_i = _axis_inverse(i, H, DH, KH)
    gj, cj, lo_j, cnt_j = _axis_inverse(j, W, DW, KW)
    cnt_i = tl.where(kmask, cnt_i, 0)
    cnt_j = tl.where(kmask, cnt_j, 0)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    m2 = kmask[:, None] & dmask[None, :]

    kk = tl.load(K + b * skb + h * skn + (i * skh + j * skw)[:, None] + d[None, :], mask=m2,
                 other=0.0).to(tl.float32)
    vv = tl.load(V + b * svb + h * svn + (i * svh + j * svw)[:, None] + d[None, :], mask=m2,
                 other=0.0).to(tl.float32)
    dk = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
    q_base = Q + b * sqb + h * sqn
    row0 = b * H * W * NH + h
    n_u = tl.max(cnt_i, axis=0)
    n_w = tl.max(cnt_j, axis=0)
    for u in range(0, n_u):
        qc_i = lo_i + u
        qi = gi + qc_i * DH
        for w in range(0, n_w):
            qc_j = lo_j + w
            qj = gj + qc_j * DW
            pmask = kmask & (u < cnt_i) & (w < cnt_j)
            pm2 = pmask[:, None] & dmask[None, :]
            q = tl.load(q_base + (qi * sqh + qj * sqw)[:, None] + d[None, :], mask=pm2,
                        other=0.0).to(tl.float32)
            tok = row0 + (qi * W + qj) * NH
            do = tl.load(DO + tok[:, None] * HEAD_DIM + d[None, :], mask=pm2,
                         other=0.0).to(tl.float32)
            lse = tl.load(LSE + tok, mask=pmask, other=0.0)
            delta = tl.load(DELTA + tok, mask=pmask, other=0.0)
            s = tl.sum(q * kk, axis=1) * scale
            if HAS_RPB:
                s += _rpb(RPB, h, ci - qc_i, cj - qc_j, pmask, KH, KW)
            p = tl.where(pmask, tl.exp(s - lse), 0.0)
            dv += p[:, None] * do
            dp = tl.sum(do * vv, axis=1)
            ds = p * (dp - delta)
            dk += ds[:, None] * q
    out = (row0 + offs * NH)[:, None] * HEAD_DIM + d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=m2)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=m2)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x: Tensor) -> Tuple[int, int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _launch_cfg(q: Tensor) -> dict:
    head_dim = q.shape[-1]
    # enable_fp_fusion spelled out: Triton 3.9 warns when it is left to its (changing) default.
    return dict(HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
                BLOCK_Q=32 if head_dim > 64 else 64, num_warps=4, enable_fp_fusion=True)


@functools.lru_cache(maxsize=64)
def _flat_bias_index(height: int, width: int, kh: int, kw: int, dh: int, dw: int,
                     device: torch.device) -> Tensor:
    """``[H*W*kh*kw]`` flat rpb index of every (query, neighbour), for the d(rpb) reduction."""
    from ._neighborhood_index import rpb_index
    bh, bw = rpb_index(height, kh, dh), rpb_index(width, kw, dw)
    flat = bh[:, None, :, None] * (2 * kw - 1) + bw[None, :, None, :]
    return flat.reshape(-1).to(device)


def na2d_triton_forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                        ks: Sequence[int], dil: Sequence[int], scale: float
                        ) -> Tuple[Tensor, Tensor]:
    """Fused forward: ``(out [B,H,W,h,d] in q's dtype, logsumexp [B,H,W,h] fp32)``."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    B, H, W, NH, D = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, W, NH), dtype=torch.float32, device=q.device)
    rpb_c = rpb.contiguous() if rpb is not None else q.new_empty(1)
    cfg = _launch_cfg(q)
    grid = (triton.cdiv(H * W, cfg["BLOCK_Q"]), B * NH)
    _na2d_fwd_kernel[grid](q, k, v, rpb_c, out, lse, *_strides(q), *_strides(k), *_strides(v),
                           H, W, NH, int(dil[0]), int(dil[1]), float(scale),
                           KH=int(ks[0]), KW=int(ks[1]), HAS_RPB=rpb is not None, **cfg)
    return out, lse


def na2d_triton_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                         out: Tensor, lse: Tensor, ks: Sequence[int], dil: Sequence[int],
                         scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused backward: ``(dq, dk, dv, drpb)`` (``drpb`` empty when ``rpb`` is None)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    B, H, W, NH, D = q.shape
    kh, kw = int(ks[0]), int(ks[1])
    grad_out = grad_out.contiguous()
    lse = lse.contiguous()
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()          # [B, H, W, NH]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=q.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=q.device)
    has_rpb = rpb is not None
    rpb_c = rpb.contiguous() if has_rpb else q.new_empty(1)
    ds = (torch.empty((B, NH, H * W, kh * kw), dtype=torch.float32, device=q.device)
          if has_rpb else q.new_empty(1, dtype=torch.float32))
    cfg = _launch_cfg(q)
    grid = (triton.cdiv(H * W, cfg["BLOCK_Q"]), B * NH)
    common = (*_strides(q), *_strides(k), *_strides(v), H, W, NH, int(dil[0]), int(dil[1]),
              float(scale))
    _na2d_bwd_dq_kernel[grid](q, k, v, rpb_c, grad_out, lse, delta, dq, ds, *common,
                              KH=kh, KW=kw, HAS_RPB=has_rpb, **cfg)
    _na2d_bwd_dkdv_kernel[grid](q, k, v, rpb_c, grad_out, lse, delta, dk, dv, *common,
                                KH=kh, KW=kw, HAS_RPB=has_rpb, **cfg)
    if has_rpb:
        index = _flat_bias_index(H, W, kh, kw, int(dil[0]), int(dil[1]), q.device)
        drpb = torch.zeros(NH, (2 * kh - 1) * (2 * kw - 1), dtype=torch.float32, device=q.device)
        drpb.index_add_(1, index, ds.sum(0).view(NH, -1))
        drpb = drpb.view(rpb.shape).to(rpb.dtype)
    else:
        drpb = q.new_empty(0)
    return dq, dk, dv, drpb
