"""PyTorch reference for neighborhood attention (any device, CPU included; analytic backward).

Queries are cut into tiles of ``Th x Tw`` positions of one dilation group; each tile attends
densely to the small ``Rh x Rw`` region of its group that holds all its windows, with ``-inf``
bias on the region keys outside a query's window. The work is then real matmuls on small
blocks (``[Tq, d] x [d, Rk]``), the index tensors are built once per (shape, kernel, dilation,
device) and cached, and nothing of size ``N x N`` ever exists. Works on the 2-D layout
``[B, H, W, heads, d]``; 1-D inputs run as a ``1 x L`` map.

Deterministic on every device: the backward's sums of the per-tile dK/dV (and d(rpb)) over the
tiles that share a key (a bias cell) are gathers through cached ``[bins, M]`` position tables
and a fixed-order ``sum``, never ``index_add_`` / ``scatter_add_`` (atomics on CUDA).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["reference_forward", "reference_backward"]


def _axis_tiles(length: int, kernel_size: int, dilation: int, tile: int):
    """Tiling of one axis for the reference: per tile ``tile`` queries of one dilation group and
    the ``R`` group positions that hold all their windows.

    Returns ``(queries [A, T], region [A, R], bias [A, T, R])`` as lists: map positions (``-1`` =
    padding slot) and the rpb index of each (query, region key) pair (``-1`` = not a neighbour).
    """
    r = kernel_size // 2
    groups = [(g, (length - g + dilation - 1) // dilation) for g in range(dilation)]
    region = min(tile + kernel_size - 1, max(n for _, n in groups))
    q_rows, r_rows, b_rows = [], [], []
    for g, n in groups:
        for c0 in range(0, n, tile):
            s0 = max(0, min(min(max(c0 - r, 0), n - kernel_size), n - region))
            q_rows.append([g + c * dilation if c < n else -1 for c in range(c0, c0 + tile)])
            r_rows.append([g + s * dilation if s < n else -1 for s in range(s0, s0 + region)])
            rows = []
            for c in range(c0, c0 + tile):
                ws = min(max(c - r, 0), n - kernel_size)
                rows.append([s - c + kernel_size - 1 if (c < n and ws <= s < ws + kernel_size)
                             else -1 for s in range(s0, s0 + region)])
            b_rows.append(rows)
    return q_rows, r_rows, b_rows


def _pick_tile(length: int, kernel_size: int, dilation: int) -> int:
    """Query-tile edge for the reference: trades padded/wasted keys against tiny matmuls."""
    n_max = (length + dilation - 1) // dilation
    sizes = [(length - g + dilation - 1) // dilation for g in range(dilation)]

    def cost(t: int) -> float:
        padded = sum(-(-n // t) * t for n in sizes)
        return padded * min(t + kernel_size - 1, n_max) * (1.0 + 4.0 / t)

    return min(range(1, min(16, n_max) + 1), key=lambda t: (cost(t), -t))


@functools.lru_cache(maxsize=64)
def _tile_tables(height: int, width: int, kh: int, kw: int, dh: int, dw: int,
                 device: torch.device):
    """Cached 2-D tiling tables for the reference (see :func:`_axis_tiles`).

    ``qtok [nT*Tq]`` / ``rtok [nT*Rk]``: token index of each query / region slot (``N`` = the zero
    padding row); ``bias [nT*Tq*Rk]``: flat rpb index, ``P`` = 0-bias (padding queries),
    ``P + 1`` = -inf (not a neighbour); ``inv [N]``: slot of each real query; and the sizes.
    """
    N, P = height * width, (2 * kh - 1) * (2 * kw - 1)
    qh, rh, bh = (torch.tensor(x) for x in _axis_tiles(height, kh, dh, _pick_tile(height, kh, dh)))
    qw, rw, bw = (torch.tensor(x) for x in _axis_tiles(width, kw, dw, _pick_tile(width, kw, dw)))
    Ah, Th = qh.shape
    Aw, Tw = qw.shape
    Rh, Rw = rh.shape[1], rw.shape[1]

    def tokens(rows: Tensor, cols: Tensor) -> Tensor:  # [Ah, a] x [Aw, b] -> [Ah, Aw, a, b]
        tok = rows[:, None, :, None] * width + cols[None, :, None, :]
        bad = (rows[:, None, :, None] < 0) | (cols[None, :, None, :] < 0)
        return torch.where(bad, torch.full_like(tok, N), tok)

    qtok, rtok = tokens(qh, qw), tokens(rh, rw)
    bias = bh[:, None, :, None, :, None] * (2 * kw - 1) + bw[None, :, None, :, None, :]
    not_nb = (bh[:, None, :, None, :, None] < 0) | (bw[None, :, None, :, None, :] < 0)
    pad_q = (qtok == N)[..., None, None]
    bias = torch.where(not_nb, torch.full_like(bias, P + 1), bias)
    bias = torch.where(pad_q, torch.full_like(bias, P), bias)       # [Ah, Aw, Th, Tw, Rh, Rw]
    qtok = qtok.reshape(-1)
    inv = torch.empty(N, dtype=torch.long)
    real = qtok < N
    inv[qtok[real]] = torch.arange(qtok.numel())[real]
    sizes = (Ah * Aw, Th * Tw, Rh * Rw)
    return (qtok.to(device), rtok.reshape(-1).to(device), bias.reshape(-1).to(device),
            inv.to(device), sizes)


def _segments(index: Tensor, bins: int) -> Tensor:
    """``[bins, M]`` positions of ``index`` holding each value ``0 .. bins-1`` (ascending; values
    ``>= bins`` are dropped), padded with ``index.numel()`` (a zero slot the caller appends)."""
    pos = torch.arange(index.numel())
    keep = index < bins
    pos, idx = pos[keep], index[keep]
    order = torch.argsort(idx, stable=True)
    idx, pos = idx[order], pos[order]
    counts = torch.bincount(idx, minlength=bins)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(idx.numel()) - starts[idx]
    table = torch.full((bins, max(1, int(counts.max()) if idx.numel() else 1)), index.numel(),
                       dtype=torch.long)
    table[idx, rank] = pos
    return table


def _segment_sum(x: Tensor, dim: int, table: Tensor) -> Tensor:
    """``out[.., b, ..] = sum_m x[.., table[b, m], ..]`` along ``dim`` (deterministic: a gather and
    a fixed-order sum; the table's padding index points at an appended zero slice)."""
    dim = dim % x.dim()
    pad = x.new_zeros(*x.shape[:dim], 1, *x.shape[dim + 1:])
    g = torch.cat((x, pad), dim).index_select(dim, table.reshape(-1))
    return g.view(*x.shape[:dim], *table.shape, *x.shape[dim + 1:]).sum(dim + 1)


@functools.lru_cache(maxsize=64)
def _backward_tables(height: int, width: int, kh: int, kw: int, dh: int, dw: int,
                     device: torch.device):
    """Cached segment tables of the backward: region slots of each key token ``[N, M]`` and
    pair slots of each rpb cell ``[P, M']`` (see :func:`_segments`)."""
    _, rtok, bias, _, _ = _tile_tables(height, width, kh, kw, dh, dw, torch.device("cpu"))
    P = (2 * kh - 1) * (2 * kw - 1)
    return (_segments(rtok, height * width).to(device), _segments(bias, P).to(device))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _heads_first_padded(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, H, W, h, d]`` -> ``[B, h, N + 1, d]`` in ``dtype``; row ``N`` is zeros (padding)."""
    B, H, W, nh, D = x.shape
    out = x.new_zeros(B, nh, H * W + 1, D, dtype=dtype)
    out[:, :, :H * W] = x.reshape(B, H * W, nh, D).permute(0, 2, 1, 3)
    return out


def _ref_tiles(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], ks: Sequence[int],
               dil: Sequence[int], scale: float):
    """Shared forward part of the reference: gathered tiles and the logits.

    Queries are cut into tiles (one dilation group each, per axis); each tile attends densely to
    the small region holding all its windows, with -inf bias on non-neighbours, so the work is
    real matmuls on ``[Tq, d] x [d, Rk]`` blocks and nothing of size ``N x N`` exists.
    """
    B, H, W, nh, D = q.shape
    qtok, rtok, bias, inv, (nT, Tq, Rk) = _tile_tables(H, W, ks[0], ks[1], dil[0], dil[1],
                                                       q.device)
    ct = _compute_dtype(q.dtype)
    qt = _heads_first_padded(q, ct).index_select(2, qtok).view(B, nh, nT, Tq, D)
    kr = _heads_first_padded(k, ct).index_select(2, rtok).view(B, nh, nT, Rk, D)
    vr = _heads_first_padded(v, ct).index_select(2, rtok).view(B, nh, nT, Rk, D)
    P = (2 * ks[0] - 1) * (2 * ks[1] - 1)
    table = q.new_zeros(nh, P + 2, dtype=ct)
    if rpb is not None:
        table[:, :P] = rpb.reshape(nh, P)
    table[:, P + 1] = float("-inf")
    logits = torch.matmul(qt * scale, kr.transpose(-1, -2))                    # [B, h, nT, Tq, Rk]
    logits.add_(table.index_select(1, bias).view(1, nh, nT, Tq, Rk))
    return qt, kr, vr, logits, rtok, bias, inv


def reference_forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], ks: Sequence[int],
                 dil: Sequence[int], scale: float) -> Tuple[Tensor, Tensor]:
    B, H, W, nh, D = q.shape
    _, _, vr, logits, _, _, inv = _ref_tiles(q, k, v, rpb, ks, dil, scale)
    p = torch.softmax(logits, dim=-1)                                         # [B, h, nT, Tq, Rk]
    # logsumexp without another pass of exp: p.max = exp(logits.max - lse)
    lse = logits.amax(-1).sub_(p.amax(-1).log_())                             # [B, h, nT, Tq]
    out = torch.matmul(p, vr).view(B, nh, -1, D).index_select(2, inv)         # [B, h, N, d]
    out = out.permute(0, 2, 1, 3).reshape(B, H, W, nh, D).to(q.dtype).contiguous()
    lse = lse.view(B, nh, -1).index_select(2, inv).view(B, nh, H, W)
    return out, lse.permute(0, 2, 3, 1).float().contiguous()


def reference_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                  ks: Sequence[int], dil: Sequence[int], scale: float):
    """Analytic gradients (recomputes the attention; the saved lse is not needed here)."""
    B, H, W, nh, D = q.shape
    N = H * W
    qt, kr, vr, logits, rtok, bias, inv = _ref_tiles(q, k, v, rpb, ks, dil, scale)
    p = torch.softmax(logits, dim=-1)                                         # [B, h, nT, Tq, Rk]
    _, _, nT, Tq, Rk = p.shape
    qtok = _tile_tables(H, W, ks[0], ks[1], dil[0], dil[1], q.device)[0]
    do = _heads_first_padded(grad_out, p.dtype).index_select(2, qtok).view(B, nh, nT, Tq, D)
    delta = (do * torch.matmul(p, vr)).sum(-1, keepdim=True)                  # = rowsum(dO * O)
    ds = torch.matmul(do, vr.transpose(-1, -2)).sub_(delta).mul_(p)
    dq = (torch.matmul(ds, kr) * scale).view(B, nh, -1, D).index_select(2, inv)
    dkr = torch.matmul(ds.transpose(-1, -2), qt) * scale                      # [B, h, nT, Rk, d]
    dvr = torch.matmul(p.transpose(-1, -2), do)
    key_slots, bias_slots = _backward_tables(H, W, ks[0], ks[1], dil[0], dil[1], q.device)
    dk = _segment_sum(dkr.reshape(B, nh, -1, D), 2, key_slots)                # [B, h, N, d]
    dv = _segment_sum(dvr.reshape(B, nh, -1, D), 2, key_slots)

    def back(x: Tensor) -> Tensor:  # [B, h, >=N, d] -> [B, H, W, h, d]
        x = x[:, :, :N].permute(0, 2, 1, 3).reshape(B, H, W, nh, D)
        return x.to(q.dtype).contiguous()

    if rpb is not None:
        P = (2 * ks[0] - 1) * (2 * ks[1] - 1)
        drpb = _segment_sum(ds.sum(0).reshape(nh, -1), 1, bias_slots)          # [h, P]
        drpb = drpb.reshape(rpb.shape).to(rpb.dtype).contiguous()
    else:
        drpb = q.new_empty(0)
    return back(dq), back(dk), back(dv), drpb
