"""Triton kernels for bi-level routed attention (BiFormer), gathering routed regions in-kernel.

Imported lazily by :mod:`vitzoo.kernels.routing` only when the Triton backend is chosen. Region
``r`` of the ``n_win x n_win`` grid holds map rows ``(r // n_win) * HR + t // WR`` and columns
``(r % n_win) * WR + t % WR`` for its tokens ``t = 0 .. HR*WR-1``; key slot ``s`` of a query
region is token ``s % w2`` of region ``r_idx[b, r, s // w2]`` (the official gather order).

* forward: program = (batch * region, query block, head). Loads the routing row, the region's
  queries (padded to >= 16 rows), then loops over 64-key blocks of the ``topk * w2`` routed keys,
  each gathered by pointer arithmetic in one ``[BLOCK_N, d]`` load; ``tl.dot`` with fp32
  accumulation, online softmax in base 2 with a finite ``m_i`` init. Stores O and the LSE
  (natural log). No gathered K/V tensor exists.
* backward: ``delta = rowsum(dO * O)`` kernel; dQ with the same gather, recomputing P from the
  LSE; dK/dV through the inverse routing: program = (batch * key region j, key block, head)
  walks the list of query regions that chose ``j`` (a CSR built in torch by a stable sort of
  ``r_idx``: no loop over unrouted regions), stacking ``64 // w2`` of them per 64-row query block
  so that w2 = 4 / 16 regions still fill the MMAs. A region listed twice counts twice, as in the
  gather. Every output element is written by one program: deterministic, no atomics.

fp32 inputs follow the one fp32 rule (``_precision.py``: IEEE dots at torch's ``"highest"``, TF32
tensor-core dots at ``"high"``/``"medium"``); fp16/bf16 cast P and dS to the input dtype before
the second GEMM. Tiles come from ``_launch_config`` per GPU target. Every dot has M, N, K >= 16.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch_config import device_target, launch_config
from ._triton_dot import dot_meta, mma, row_delta

__all__ = ["routed_triton_forward", "routed_triton_backward"]

_LOG2E = math.log2(math.e)


@triton.jit
def _region_pos(region, t, NWIN, HR, WR):
    """Map row and column of token ``t`` (row-major inside the region) of ``region``."""
    return (region // NWIN) * HR + t // WR, (region % NWIN) * WR + t % WR


@triton.jit
def _load_rows(base, rows, d, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """``[rows, BLOCK_D]`` tile at ``base + rows[:, None] + d``; rows are always in bounds
    (clamped by the caller), so only padded head-dim columns are masked."""
    ptrs = base + rows[:, None] + d[None, :]
    if D == BLOCK_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=(d < D)[None, :], other=0.0)


@triton.jit
def _region_tile(pid_region, pid_block, NWIN, HR, WR, BLOCK: tl.constexpr):
    """Program prologue: ``(b int64, region, tokens t, t < w2, map rows, map cols)`` of the
    ``BLOCK`` tokens ``pid_block * BLOCK ...`` of region ``pid_region % R`` in batch ``// R``."""
    R = NWIN * NWIN
    t = pid_block * BLOCK + tl.arange(0, BLOCK)
    W2 = HR * WR
    i, j = _region_pos(pid_region % R, tl.minimum(t, W2 - 1), NWIN, HR, WR)
    return (pid_region // R).to(tl.int64), pid_region % R, t, t < W2, i, j


@triton.jit
def _query_block(Q, sqb, sqh, sqw, sqn, NWIN, HR, WR, DQK: tl.constexpr,
                 BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr):
    """Forward / dQ prologue: program (batch * region, query block, head) -> ``(b, h, row mask,
    map rows, map cols, qk dim range, v dim range, q [BLOCK_M, BLOCK_DQK])``."""
    h = tl.program_id(2)
    b, r, t, tmask, qi, qj = _region_tile(tl.program_id(0), tl.program_id(1), NWIN, HR, WR,
                                          BLOCK_M)
    dqk = tl.arange(0, BLOCK_DQK)
    q = _load_rows(Q + b * sqb + h * sqn, qi * sqh + qj * sqw, dqk, DQK, BLOCK_DQK)
    return b, h, tmask, qi, qj, dqk, tl.arange(0, BLOCK_DV), q


@triton.jit
def _routed_keys(r_base, n0, NWIN, HR, WR, TOPK: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key block ``n0 ...`` of the routed keys: ``(valid, map rows, map cols)``; slot ``s`` is
    token ``s % w2`` of region ``r_idx[s // w2]`` (clamped into range for memory safety)."""
    W2 = HR * WR
    s = n0 + tl.arange(0, BLOCK_N)
    smask = s < TOPK * W2
    kr = tl.load(r_base + s // W2, mask=smask, other=0)
    kr = tl.minimum(tl.maximum(kr, 0), NWIN * NWIN - 1)
    ki, kj = _region_pos(kr, s % W2, NWIN, HR, WR)
    return smask, ki, kj


@triton.jit
def _row_grads(DO, LSE, DELTA, tok, dv, DV: tl.constexpr, BLOCK_DV: tl.constexpr):
    """dO rows, base-2 logsumexp and delta of the query rows ``tok`` (flat [B, H, W, heads])."""
    do = _load_rows(DO, tok * DV, dv, DV, BLOCK_DV)
    return do, tl.load(LSE + tok) * 1.4426950408889634, tl.load(DELTA + tok)


@triton.jit
def _routed_fwd_kernel(
    Q, K, V, RIDX, O, LSE,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    NH, NWIN: tl.constexpr, HR: tl.constexpr, WR: tl.constexpr, TOPK: tl.constexpr, qk_scale,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    b, h, tmask, qi, qj, dqk, dv, q = _query_block(Q, sqb, sqh, sqw, sqn, NWIN, HR, WR, DQK,
                                                   BLOCK_DQK, BLOCK_DV, BLOCK_M)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    k_base = K + b * skb + h * skn
    v_base = V + b * svb + h * svn
    r_base = RIDX + tl.program_id(0).to(tl.int64) * TOPK
    for n0 in range(0, TOPK * HR * WR, BLOCK_N):
        smask, ki, kj = _routed_keys(r_base, n0, NWIN, HR, WR, TOPK, BLOCK_N)
        k = _load_rows(k_base, ki * skh + kj * skw, dqk, DQK, BLOCK_DQK)
        sc = mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
        sc = tl.where(smask[None, :], sc, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vv = _load_rows(v_base, ki * svh + kj * svw, dv, DV, BLOCK_DV)
        acc = acc * alpha[:, None] + mma(p.to(vv.dtype), vv, PREC, UPCAST)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    tok = ((b * (NWIN * HR) + qi) * (NWIN * WR) + qj) * NH + h    # [B, H, W, NH] flat index
    tl.store(O + tok[:, None] * DV + dv[None, :], out.to(O.dtype.element_ty),
             mask=tmask[:, None] & (dv < DV)[None, :])
    tl.store(LSE + tok, (m_i + tl.log2(l_safe)) * 0.6931471805599453, mask=tmask)


@triton.jit
def _routed_bwd_dq_kernel(
    Q, K, V, RIDX, DO, LSE, DELTA, DQ,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    NH, NWIN: tl.constexpr, HR: tl.constexpr, WR: tl.constexpr, TOPK: tl.constexpr, qk_scale, scale,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    b, h, tmask, qi, qj, dqk, dv, q = _query_block(Q, sqb, sqh, sqw, sqn, NWIN, HR, WR, DQK,
                                                   BLOCK_DQK, BLOCK_DV, BLOCK_M)
    tok = ((b * (NWIN * HR) + qi) * (NWIN * WR) + qj) * NH + h
    do, lse2, delta = _row_grads(DO, LSE, DELTA, tok, dv, DV, BLOCK_DV)

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    k_base = K + b * skb + h * skn
    v_base = V + b * svb + h * svn
    r_base = RIDX + tl.program_id(0).to(tl.int64) * TOPK
    for n0 in range(0, TOPK * HR * WR, BLOCK_N):
        smask, ki, kj = _routed_keys(r_base, n0, NWIN, HR, WR, TOPK, BLOCK_N)
        k = _load_rows(k_base, ki * skh + kj * skw, dqk, DQK, BLOCK_DQK)
        vv = _load_rows(v_base, ki * svh + kj * svw, dv, DV, BLOCK_DV)
        sc = mma(q, tl.trans(k), PREC, UPCAST) * qk_scale
        p = tl.where(smask[None, :], tl.exp2(sc - lse2[:, None]), 0.0)
        dp = mma(do, tl.trans(vv), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += mma(ds.to(k.dtype), k, PREC, UPCAST)
    tl.store(DQ + tok[:, None] * DQK + dqk[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=tmask[:, None] & (dqk < DQK)[None, :])


@triton.jit
def _routed_bwd_dkdv_kernel(
    Q, K, V, INV, OFFS, DO, LSE, DELTA, DK, DV_OUT,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    NH, NWIN: tl.constexpr, HR: tl.constexpr, WR: tl.constexpr, TOPK: tl.constexpr, qk_scale, scale,
    DQK: tl.constexpr, DV: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    h = tl.program_id(2)
    b, j, t, tmask, ki, kj = _region_tile(tl.program_id(0), tl.program_id(1), NWIN, HR, WR,
                                          BLOCK_N)
    R = NWIN * NWIN
    W2 = HR * WR
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    k = _load_rows(K + b * skb + h * skn, ki * skh + kj * skw, dqk, DQK, BLOCK_DQK)
    vv = _load_rows(V + b * svb + h * svn, ki * svh + kj * svw, dv, DV, BLOCK_DV)

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dvacc = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    q_base = Q + b * sqb + h * sqn
    inv_base = INV + b * (R * TOPK)
    e_lo = tl.load(OFFS + b * (R + 1) + j)      # entries [e_lo, e_hi) of the inverse list:
    e_hi = tl.load(OFFS + b * (R + 1) + j + 1)  # the query regions routed to key region j
    G = tl.maximum(BLOCK_M // W2, 1)            # query regions stacked in one query block
    m = tl.arange(0, BLOCK_M)
    row0 = b * (NWIN * HR)
    for e0 in range(e_lo, e_hi, G):
        for m0 in range(0, G * W2, BLOCK_M):     # > 1 step only when a region exceeds a block
            lin = m0 + m
            entry = e0 + lin // W2
            qmask = (lin < G * W2) & (entry < e_hi)
            i = tl.load(inv_base + tl.minimum(entry, e_hi - 1))
            qi, qj = _region_pos(i, lin % W2, NWIN, HR, WR)
            q = _load_rows(q_base, qi * sqh + qj * sqw, dqk, DQK, BLOCK_DQK)
            tok = ((row0 + qi) * (NWIN * WR) + qj) * NH + h
            do, lse2, delta = _row_grads(DO, LSE, DELTA, tok, dv, DV, BLOCK_DV)
            st = mma(k, tl.trans(q), PREC, UPCAST) * qk_scale                          # [N, M]
            pt = tl.where(qmask[None, :], tl.exp2(st - lse2[None, :]), 0.0)
            dvacc += mma(pt.to(do.dtype), do, PREC, UPCAST)
            dpt = mma(vv, tl.trans(do), PREC, UPCAST)
            dst = pt * (dpt - delta[None, :])
            dk += mma(dst.to(q.dtype), q, PREC, UPCAST)
    tok = ((b * (NWIN * HR) + ki) * (NWIN * WR) + kj) * NH + h
    tl.store(DK + tok[:, None] * DQK + dqk[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=tmask[:, None] & (dqk < DQK)[None, :])
    tl.store(DV_OUT + tok[:, None] * DV + dv[None, :], dvacc.to(DV_OUT.dtype.element_ty),
             mask=tmask[:, None] & (dv < DV)[None, :])


def _inverse_routing(r_idx: Tensor, regions: int) -> Tuple[Tensor, Tensor]:
    """CSR of the inverse routing: ``inv [B, R*topk]`` lists the query regions that chose each
    key region, grouped by key region (stable order), and ``offs [B, R+1]`` where key region
    ``j``'s group starts. A region listed twice by one query region appears twice, so its
    gradient counts twice, as in the gather. Sort and searchsorted: deterministic."""
    B, R, topk = r_idx.shape
    flat = r_idx.reshape(B, R * topk).long()
    sorted_keys, order = torch.sort(flat, dim=1, stable=True)
    inv = torch.div(order, topk, rounding_mode="floor").to(torch.int32).contiguous()
    bounds = torch.arange(regions + 1, device=r_idx.device).expand(B, regions + 1).contiguous()
    offs = torch.searchsorted(sorted_keys, bounds).to(torch.int32).contiguous()
    return inv, offs


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _geometry(q: Tensor, v: Tensor, r_idx: Tensor, n_win: int):
    B, H, W, nh, dqk = q.shape
    hr, wr = H // n_win, W // n_win
    w2 = hr * wr
    topk = r_idx.shape[-1]
    meta = dot_meta(q.dtype)
    shape = dict(w2=w2, topk=topk, dqk=dqk, dv=v.shape[-1])
    target = device_target(q.device)
    cfg = {kernel: launch_config("routed", kernel, target, q.dtype, meta["PREC"], **shape)
           for kernel in ("fwd", "dq", "dkdv")}
    return dict(B=B, nh=nh, dqk=dqk, dv=v.shape[-1], hr=hr, wr=wr, w2=w2, topk=topk,
                R=n_win * n_win, cfg=cfg, **meta)


def _meta(g, kernel: str):
    """Constexprs + warps/stages of one kernel: its table entry and the dot meta."""
    return dict(g["cfg"][kernel], DQK=g["dqk"], DV=g["dv"], PREC=g["PREC"], UPCAST=g["UPCAST"])


def _strides(q: Tensor, k: Tensor, v: Tensor):
    return (*q.stride()[:4], *k.stride()[:4], *v.stride()[:4])


def routed_triton_forward(q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, n_win: int,
                          scale: float) -> Tuple[Tensor, Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    g = _geometry(q, v, r_idx, n_win)
    out = q.new_empty(*q.shape[:-1], g["dv"])
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    if out.numel() == 0:
        return out, lse
    ridx = r_idx.to(torch.int32).contiguous()
    meta = _meta(g, "fwd")
    grid = (g["B"] * g["R"], triton.cdiv(g["w2"], meta["BLOCK_M"]), g["nh"])
    _routed_fwd_kernel[grid](
        q, k, v, ridx, out, lse, *_strides(q, k, v),
        g["nh"], n_win, g["hr"], g["wr"], g["topk"], scale * _LOG2E, **meta)
    return out, lse


def routed_triton_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor,
                           out: Tensor, lse: Tensor, n_win: int,
                           scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
    g = _geometry(q, v, r_idx, n_win)
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    if dq.numel() == 0:
        return dq, dk, dv
    dq_meta, dkdv_meta = _meta(g, "dq"), _meta(g, "dkdv")
    delta = row_delta(out, grad_out, torch.empty_like(lse), g["dv"], dq_meta["BLOCK_DV"])
    ridx = r_idx.to(torch.int32).contiguous()
    geo = (g["nh"], n_win, g["hr"], g["wr"], g["topk"])
    grid = (g["B"] * g["R"], triton.cdiv(g["w2"], dq_meta["BLOCK_M"]), g["nh"])
    _routed_bwd_dq_kernel[grid](
        q, k, v, ridx, grad_out, lse, delta, dq, *_strides(q, k, v), *geo,
        scale * _LOG2E, scale, **dq_meta)
    inv, offs = _inverse_routing(ridx, g["R"])
    # key tile = one region's tokens (>= 16 rows); each 64-row query block stacks 64 // w2
    # routed query regions (w2 = 4 or 16 at BiFormer's later stages), so the MMAs stay full
    grid = (g["B"] * g["R"], triton.cdiv(g["w2"], dkdv_meta["BLOCK_N"]), g["nh"])
    _routed_bwd_dkdv_kernel[grid](
        q, k, v, inv, offs, grad_out, lse, delta, dk, dv, *_strides(q, k, v), *geo,
        scale * _LOG2E, scale, **dkdv_meta)
    return dq, dk, dv
