"""Tiled tensor-core backward of 2-D neighborhood attention; deterministic, no atomics.

* delta = rowsum(dO * O): the shared ``_triton_dot.row_delta`` preprocess, O and dO read once.
* ``_na_bwd_dkdv_kernel``: one program per ``TH x TW`` key tile of one dilation group (the
  forward's grid). Its queries are the inverse region ``[lo(first key), hi(last key)]`` per axis
  (``_na_common_triton``); per chunk of them it recomputes ``P^T = exp2(K Q^T c + b - lse)`` from
  the saved logsumexp and accumulates ``dV += P^T dO`` and ``dK += dS^T Q`` with ``tl.dot``.
  Every dK/dV row is written by exactly one program.
* ``_na_bwd_dq_kernel``: the forward's loop with ``dP = dO V^T``, ``dS = P (dP - delta)`` and
  ``dQ += dS K``. With a bias it also stores the in-window ``dS`` compactly as
  ``[B, H, W, heads, kh*kw]`` (each entry written once); the launcher reduces that to
  ``d(rpb)`` with fixed one-hot matmuls, so the bias gradient is deterministic as well.

P and dS are cast to the input dtype before the second GEMM (FA2 practice); fp32 inputs use the
``PREC`` dot precision (the fp32 rule of ``_precision.py``: IEEE at torch's ``"highest"``, else TF32).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._na_common_triton import (LOG2E, bias_tile, chunk, inv_hi, inv_lo, key_region, load_rows,
                                program_batch_head, tile_of_program, tile_positions, win_start)
from ._triton_dot import mma


@triton.jit
def _na_bwd_dkdv_kernel(
    Q, K, V, RPBF, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, NH, DH, DW, NTH, NTW, qk_scale, scale,
    KH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, RPC: tl.constexpr,
    CW: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, NCW: tl.constexpr,
):
    gh, gw, th, tw, nh, nw = tile_of_program(tl.program_id(0), H, W, DH, DW, NTH, NTW)
    if (th * TH >= nh) | (tw * TW >= nw):
        return
    b, h = program_batch_head(NH)

    # key tile (group coordinates kci, kcj)
    kci, kcj, kmask, ki, kj = tile_positions(th, tw, gh, gw, nh, nw, DH, DW, TH, TW)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    m2 = kmask[:, None] & dmask[None, :]
    kt = load_rows(K + b * skb + h * skn, ki, kj, skh, skw, d, m2)
    vt = load_rows(V + b * svb + h * svn, ki, kj, svh, svw, d, m2)

    # query region: inverse neighbourhood of the tile
    r0 = inv_lo(th * TH, KH)
    r1 = inv_hi(tl.minimum(th * TH + TH, nh) - 1, nh, KH) + 1
    c0 = inv_lo(tw * TW, KW)
    c1 = inv_hi(tl.minimum(tw * TW + TW, nw) - 1, nw, KW) + 1

    n = tl.arange(0, RPC * CW)
    nr = n // CW
    nc = n % CW
    a_col = (tl.arange(0, TH * TW) % TW)[:, None]
    delta_c = c0 - tw * TW + (KW - 1)                # column-clamp class of the (flipped) table
    q_base = Q + b * sqb + h * sqn
    dk = tl.zeros([TH * TW, BLOCK_D], tl.float32)
    dv = tl.zeros([TH * TW, BLOCK_D], tl.float32)
    n_cc = (c1 - c0 + CW - 1) // CW
    for it in range(0, ((r1 - r0 + RPC - 1) // RPC) * n_cc):
        ic, qr, qc, qmask = chunk(it, n_cc, r0, r1, c0, c1, nr, nc, RPC, CW)
        sqr = win_start(qr, nh, KH)
        sqc = win_start(qc, nw, KW)
        qi = gh + qr * DH
        qj = gw + qc * DW
        q2 = qmask[:, None] & dmask[None, :]
        qt = load_rows(q_base, qi, qj, sqh, sqw, d, q2)
        tok = ((b * H + qi) * W + qj) * NH + h
        dot_ = tl.load(DO + tok[:, None] * HEAD_DIM + d[None, :], mask=q2, other=0.0)
        lse2 = tl.load(LSE + tok, mask=qmask, other=0.0) * LOG2E
        delta = tl.load(DELTA + tok, mask=qmask, other=0.0)
        st = mma(kt, tl.trans(qt), PREC, UPCAST) * qk_scale      # [keys, queries]
        if HAS_RPB:
            st += bias_tile(RPBF, h, qr[None, :] - kci[:, None], delta_c, a_col, ic,
                            nc[None, :], KH, KW, TW, NCW, CW)
        inwin = ((kci[:, None] >= sqr[None, :]) & (kci[:, None] < sqr[None, :] + KH)
                 & (kcj[:, None] >= sqc[None, :]) & (kcj[:, None] < sqc[None, :] + KW)
                 & qmask[None, :] & kmask[:, None])
        pt = tl.where(inwin, tl.exp2(st - lse2[None, :]), 0.0)
        dv += mma(pt.to(dot_.dtype), dot_, PREC, UPCAST)
        dpt = mma(vt, tl.trans(dot_), PREC, UPCAST)
        dst = pt * (dpt - delta[None, :])
        dk += mma(dst.to(qt.dtype), qt, PREC, UPCAST)

    tok = ((b * H + ki) * W + kj) * NH + h
    out = tok[:, None] * HEAD_DIM + d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=m2)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=m2)


@triton.jit
def _na_bwd_dq_kernel(
    Q, K, V, RPB, DO, LSE, DELTA, DQ, DS,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, NH, DH, DW, NTH, NTW, qk_scale, scale,
    KH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, RPC: tl.constexpr,
    CW: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, NCW: tl.constexpr,
    BIN_RPB: tl.constexpr, UP: tl.constexpr, XP: tl.constexpr,
):
    gh, gw, th, tw, nh, nw = tile_of_program(tl.program_id(0), H, W, DH, DW, NTH, NTW)
    if (th * TH >= nh) | (tw * TW >= nw):
        return
    b, h = program_batch_head(NH)

    ci, cj, qmask, qi, qj = tile_positions(th, tw, gh, gw, nh, nw, DH, DW, TH, TW)
    si = win_start(ci, nh, KH)
    sj = win_start(cj, nw, KW)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q2 = qmask[:, None] & dmask[None, :]
    qt = load_rows(Q + b * sqb + h * sqn, qi, qj, sqh, sqw, d, q2)
    tok = ((b * H + qi) * W + qj) * NH + h
    dot_ = tl.load(DO + tok[:, None] * HEAD_DIM + d[None, :], mask=q2, other=0.0)
    lse2 = tl.load(LSE + tok, mask=qmask, other=0.0) * LOG2E
    delta = tl.load(DELTA + tok, mask=qmask, other=0.0)

    r0, r1, c0, c1 = key_region(th, tw, nh, nw, KH, KW, TH, TW)
    n = tl.arange(0, RPC * CW)
    nr = n // CW
    nc = n % CW
    a_col = (tl.arange(0, TH * TW) % TW)[:, None]
    delta_c = c0 - tw * TW + (KW - 1)
    k_base = K + b * skb + h * skn
    v_base = V + b * svb + h * svn
    ds_base = DS + tok * (KH * KW)
    dq = tl.zeros([TH * TW, BLOCK_D], tl.float32)
    db = tl.zeros([UP, XP], tl.float32)
    rr_base = r0 - th * TH + (KH - 1)                # bias row of (first region row, tile row 0)
    n_cc = (c1 - c0 + CW - 1) // CW
    for it in range(0, ((r1 - r0 + RPC - 1) // RPC) * n_cc):
        ic, kr, kc, kmask = chunk(it, n_cc, r0, r1, c0, c1, nr, nc, RPC, CW)
        kv_mask = kmask[:, None] & dmask[None, :]
        kt = load_rows(k_base, gh + kr * DH, gw + kc * DW, skh, skw, d, kv_mask)
        vt = load_rows(v_base, gh + kr * DH, gw + kc * DW, svh, svw, d, kv_mask)
        s = mma(qt, tl.trans(kt), PREC, UPCAST) * qk_scale
        if HAS_RPB:
            s += bias_tile(RPB, h, kr[None, :] - ci[:, None], delta_c, a_col, ic, nc[None, :],
                           KH, KW, TW, NCW, CW)
        inwin = ((kr[None, :] >= si[:, None]) & (kr[None, :] < si[:, None] + KH)
                 & (kc[None, :] >= sj[:, None]) & (kc[None, :] < sj[:, None] + KW)
                 & kmask[None, :] & qmask[:, None])
        p = tl.where(inwin, tl.exp2(s - lse2[:, None]), 0.0)
        dp = mma(dot_, tl.trans(vt), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += mma(ds.to(kt.dtype), kt, PREC, UPCAST)
        if HAS_RPB:
            if BIN_RPB:
                db += _bin_bias_grad(ds, kt.dtype, rr_base + (it // n_cc) * RPC,
                                     delta_c + ic * CW, TH, TW, RPC, CW, UP, XP, PREC, UPCAST)
            else:
                slot = (kr[None, :] - si[:, None]) * KW + (kc[None, :] - sj[:, None])
                tl.store(ds_base[:, None] + slot, ds, mask=inwin)

    tl.store(DQ + tok[:, None] * HEAD_DIM + d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=q2)
    if HAS_RPB:
        if BIN_RPB:
            prog = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
            part = DS + prog * (UP * XP)
            tl.store(part + tl.arange(0, UP)[:, None] * XP + tl.arange(0, XP)[None, :], db)


@triton.jit
def _bin_bias_grad(ds, dtype: tl.constexpr, u0, x0, TH: tl.constexpr, TW: tl.constexpr,
                   RPC: tl.constexpr, CW: tl.constexpr, UP: tl.constexpr, XP: tl.constexpr, PREC: tl.constexpr,
                   UPCAST: tl.constexpr):
    """``[UP, XP]`` bias-gradient bins of one dS chunk, on tensor cores, with no atomics.

    ``ds[(qr, a), (j, col)]`` belongs to bias cell ``(u0 + j - qr, x0 + col - a)``. Regroup it
    as ``[(qr, j), (a, col)]``, sum the columns into ``x`` with the band matrix
    ``C[(a, col), x] = 1[x0 + col - a = x]``, then the rows into ``u`` with
    ``Y[u, (qr, j)] = 1[u0 + j - qr = u]``. Pairs outside the window have ``dS = 0``. The first
    product rounds dS to the input dtype (as FA2 does for dQ/dK); the second is exact in fp32.
    """
    d2 = tl.reshape(tl.permute(tl.reshape(ds, [TH, TW, RPC, CW]), (0, 2, 1, 3)),
                    [TH * RPC, TW * CW])
    ac = tl.arange(0, TW * CW)
    band = (x0 + ac % CW - ac // CW)[:, None] == tl.arange(0, XP)[None, :]
    # via fp32: Triton 3.8's interpreter turns bool -> bf16 into zeros
    z = mma(d2.to(dtype), band.to(tl.float32).to(dtype), PREC, UPCAST)      # [(qr, j), XP]
    rj = tl.arange(0, TH * RPC)
    rows = tl.arange(0, UP)[:, None] == (u0 + rj % RPC - rj // RPC)[None, :]
    return tl.dot(rows.to(tl.float32), z, input_precision="ieee")        # [UP, XP]
