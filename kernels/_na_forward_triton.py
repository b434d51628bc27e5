"""Tiled tensor-core forward of 2-D neighborhood attention (1-D runs as a ``1 x L`` map).

One program = one ``TH x TW`` query tile of one dilation group (``program_id(0)``, tiles
fastest) for one (batch, head) (``program_id(1)``). The keys it needs are the union of its
queries' windows, a rectangle of the group's coordinates (``_na_common_triton`` doc); the
program walks it in chunks of ``RPC`` rows x ``CW`` columns, loading K/V rows by pointer
arithmetic (map position = group + coordinate * dilation), and runs ``S = Q K^T`` and ``P V`` as
``tl.dot`` with fp32 accumulation. Pairs outside a query's window are masked to ``-inf``; the bias
(pre-multiplied by log2e) is added after scaling; the softmax is online, in base 2, with a finite
``m_i`` start so empty rows give 0, never NaN. The logsumexp is stored in natural-log units.

When every group is at most ``TH x TW`` and the chunk covers it (``RPC >= TH``, ``CW >= TW``),
the loop runs once: that is the dense path (7x7 maps, DiNAT groups that are one window), chosen
by the launcher's tile table with no separate kernel.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._na_common_triton import (LN2, bias_tile, chunk, key_region, load_rows, program_batch_head,
                                tile_of_program, tile_positions, win_start)
from ._triton_dot import mma


@triton.jit
def _na_fwd_kernel(
    Q, K, V, RPB, O, LSE,
    sqb, sqh, sqw, sqn, skb, skh, skw, skn, svb, svh, svw, svn,
    H, W, NH, DH, DW, NTH, NTW, qk_scale,
    KH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, RPC: tl.constexpr,
    CW: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr, NCW: tl.constexpr,
):
    gh, gw, th, tw, nh, nw = tile_of_program(tl.program_id(0), H, W, DH, DW, NTH, NTW)
    if (th * TH >= nh) | (tw * TW >= nw):
        return
    b, h = program_batch_head(NH)

    # query tile, group coordinates (ci, cj), window starts (si, sj)
    ci, cj, qmask, qi, qj = tile_positions(th, tw, gh, gw, nh, nw, DH, DW, TH, TW)
    si = win_start(ci, nh, KH)
    sj = win_start(cj, nw, KW)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HEAD_DIM
    q = load_rows(Q + b * sqb + h * sqn, qi, qj, sqh, sqw, d, qmask[:, None] & dmask[None, :])

    r0, r1, c0, c1 = key_region(th, tw, nh, nw, KH, KW, TH, TW)   # union of the tile's windows
    n = tl.arange(0, RPC * CW)
    nr = n // CW
    nc = n % CW
    a_col = (tl.arange(0, TH * TW) % TW)[:, None]
    delta = c0 - tw * TW + (KW - 1)                  # column-clamp class of the bias table
    k_base = K + b * skb + h * skn
    v_base = V + b * svb + h * svn
    m_i = tl.full([TH * TW], -1.0e30, tl.float32)
    l_i = tl.zeros([TH * TW], tl.float32)
    acc = tl.zeros([TH * TW, BLOCK_D], tl.float32)
    n_cc = (c1 - c0 + CW - 1) // CW
    for it in range(0, ((r1 - r0 + RPC - 1) // RPC) * n_cc):   # one flat loop: pipelined chunks
        ic, kr, kc, kmask = chunk(it, n_cc, r0, r1, c0, c1, nr, nc, RPC, CW)
        kv_mask = kmask[:, None] & dmask[None, :]
        kt = load_rows(k_base, gh + kr * DH, gw + kc * DW, skh, skw, d, kv_mask)
        s = mma(q, tl.trans(kt), PREC, UPCAST) * qk_scale
        if HAS_RPB:
            s += bias_tile(RPB, h, kr[None, :] - ci[:, None], delta, a_col, ic, nc[None, :],
                           KH, KW, TW, NCW, CW)
        inwin = ((kr[None, :] >= si[:, None]) & (kr[None, :] < si[:, None] + KH)
                 & (kc[None, :] >= sj[:, None]) & (kc[None, :] < sj[:, None] + KW)
                 & kmask[None, :])
        s = tl.where(inwin, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = load_rows(v_base, gh + kr * DH, gw + kc * DW, svh, svw, d, kv_mask)
        acc = acc * alpha[:, None] + mma(p.to(vt.dtype), vt, PREC, UPCAST)
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    tok = ((b * H + qi) * W + qj) * NH + h           # [B, H, W, NH] row of each query (int64)
    tl.store(O + tok[:, None] * HEAD_DIM + d[None, :],
             (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=qmask[:, None] & dmask[None, :])
    tl.store(LSE + tok, (m_i + tl.log2(l_safe)) * LN2, mask=qmask)
