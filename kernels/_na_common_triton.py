"""Index helpers shared by the tiled neighborhood-attention kernels (forward and backward).

The rules are those of ``neighborhood.py``'s module doc, per axis and in group coordinates:
group ``g``, length ``n = ceil((L - g) / d)``, window start ``s(c) = clamp(c - k//2, 0, n - k)``.
Because ``s`` is monotone and 1-Lipschitz, the union of the windows of a run of queries
``[c0, c1]`` is ``[s(c0), s(c1) + k)``, and the queries whose windows hold a run of keys
``[c0, c1]`` are ``[lo(c0), hi(c1)]`` (the inverse neighbourhood). That is what makes a 2-D tile
of one dilation group work on a small rectangular region read by pointer arithmetic.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)  # constexpr: a jit function may read it


@triton.jit
def win_start(c, n, K: tl.constexpr):
    """Window start ``clamp(c - K//2, 0, n - K)`` of group coordinate(s) ``c``."""
    return tl.minimum(tl.maximum(c - K // 2, 0), n - K)


@triton.jit
def inv_lo(c, K: tl.constexpr):
    """First query whose window holds key ``c`` (0 when ``c <= K - 1``, else ``c - K//2``)."""
    return tl.where(c <= K - 1, 0, c - K // 2)


@triton.jit
def inv_hi(c, n, K: tl.constexpr):
    """Last query whose window holds key ``c`` (``n-1`` when ``c >= n - K``, else ``c + K//2``)."""
    return tl.where(c >= n - K, n - 1, c + K // 2)


@triton.jit
def tile_of_program(pid, H, W, DH, DW, NTH, NTW):
    """``program_id(0)`` -> (row group, col group, tile row, tile col, group rows, group cols).

    Tiles are fastest-varying so neighbouring tiles (which share halo keys) run together.
    A tile starting past its group's end (``th * TH >= nh`` or ``tw * TW >= nw``) has no work.
    """
    tw = pid % NTW
    t = pid // NTW
    th = t % NTH
    t = t // NTH
    gw = t % DW
    gh = t // DW
    nh = (H - gh + DH - 1) // DH
    nw = (W - gw + DW - 1) // DW
    return gh, gw, th, tw, nh, nw


@triton.jit
def bias_tile(E, h, dr, delta, a, ic, col, KH: tl.constexpr, KW: tl.constexpr,
              TW: tl.constexpr, NCW: tl.constexpr, CW: tl.constexpr):
    """Bias (x log2e, fp32) of one chunk from the launcher's expanded table.

    ``E[h, u, delta, a, x] = T[h, u, delta + x - a]`` (0 off the table), with ``u`` the row
    offset ``dr + KH - 1``, ``delta`` the tile's column-clamp class (region start minus tile start,
    plus ``KW - 1``, always in ``[0, KW)``), ``a`` the tile column of the query (key, in dk/dv) and
    ``x = ic * CW + col`` the column inside the region. Each query row thus reads ``CW``
    contiguous, 16-byte aligned floats (vector loads) instead of a per-element gather. ``u`` is
    clamped (the window mask removes those pairs), so the load needs no mask.
    """
    u = tl.minimum(tl.maximum(dr + (KH - 1), 0), 2 * KH - 2)
    row = (u * KW + delta) * TW + a
    return tl.load(E + h * ((2 * KH - 1) * KW * TW * NCW) + row * NCW + (ic * CW + col))


@triton.jit
def program_batch_head(NH):
    """``program_id(1)`` -> (batch as int64, head)."""
    pid = tl.program_id(1)
    return (pid // NH).to(tl.int64), pid % NH


@triton.jit
def tile_positions(th, tw, gh, gw, nh, nw, DH, DW, TH: tl.constexpr, TW: tl.constexpr):
    """The ``TH x TW`` tile ``(th, tw)`` of group ``(gh, gw)``: group coordinates ``(ci, cj)``,
    in-group mask and map positions ``(gh + ci * DH, gw + cj * DW)``, one entry per slot."""
    m = tl.arange(0, TH * TW)
    ci = th * TH + m // TW
    cj = tw * TW + m % TW
    return ci, cj, (ci < nh) & (cj < nw), gh + ci * DH, gw + cj * DW


@triton.jit
def key_region(th, tw, nh, nw, KH: tl.constexpr, KW: tl.constexpr, TH: tl.constexpr,
               TW: tl.constexpr):
    """``[r0, r1) x [c0, c1)``: the union of the windows of a query tile (group coordinates)."""
    r0 = win_start(th * TH, nh, KH)
    r1 = win_start(tl.minimum(th * TH + TH, nh) - 1, nh, KH) + KH
    c0 = win_start(tw * TW, nw, KW)
    c1 = win_start(tl.minimum(tw * TW + TW, nw) - 1, nw, KW) + KW
    return r0, r1, c0, c1


@triton.jit
def chunk(it, n_cc, r0, r1, c0, c1, nr, nc, RPC: tl.constexpr, CW: tl.constexpr):
    """Chunk ``it`` of a region walked ``RPC`` rows x ``CW`` columns at a time (columns
    fastest): ``(column chunk, rows, cols, in-region mask)`` per slot."""
    ic = it % n_cc
    r = r0 + (it // n_cc) * RPC + nr
    c = c0 + ic * CW + nc
    return ic, r, c, (r < r1) & (c < c1)


@triton.jit
def load_rows(base, i, j, si, sj, d, mask):
    """``[slots, BLOCK_D]`` rows at map positions ``(i, j)`` with strides ``(si, sj)``."""
    return tl.load(base + (i * si + j * sj)[:, None] + d[None, :], mask=mask, other=0.0)
