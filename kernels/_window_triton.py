"""Triton kernels for (shifted-)window attention read straight from a fused qkv tensor.

Imported lazily by :mod:`vitzoo.kernels.window` only when the Triton backend is chosen. The
index rules are those of ``window.py``'s module doc, recomputed per token in-kernel:
window ``w`` -> (image, window row, window column); token ``t`` of the window -> rolled-padded
position ``(i, j)`` -> source position ``((i + sh) % H, (j + sw) % W)`` inside the map (padded
positions map to themselves). q/k/v are read from ``qkv[b, i, j, 0/1/2, h, :]`` at the source
position and the output is written there, so roll, pad, partition, the heads permute, the
window merge and the reverse roll are all index arithmetic.

* Tokens of a window are split into ``NB`` blocks of ``BLOCK`` (49 -> one block of 64; 144 -> 3
  blocks of 64). Scores are ``tl.dot`` on tensor cores in the base-2 domain: the launcher hands
  the kernels a ``[heads, NB*BLOCK, NB*BLOCK]`` bias already multiplied by ``log2(e)``, with
  ``-inf`` in the padded key columns; the shift mask (timm's -100) comes from region ids.
* forward: windows of one block (Swin's 7x7): one program per (4 consecutive windows, head),
  the bias tile loaded once, one softmax pass. Larger windows: one program per (window, query
  block, head), online softmax over key blocks. Both write the output and the logsumexp
  (natural-log units).
* backward: one program per (slot, head) loops over the windows ``slot, slot + S, ...``.
  Windows do not overlap, so every dq/dk/dv element is written by exactly one program. One
  block: everything in one pass, d(bias) accumulated in registers across the program's windows.
  Several blocks: a dk/dv phase per key block then a dq phase per query block (P recomputed from
  the saved logsumexp); d(bias) is accumulated in the program's own fp32 slice of a partial
  buffer (read-add-write behind a barrier). Torch sums the ``S`` partials in a fixed order: no
  atomics anywhere, the backward is deterministic.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch_config import device_target, launch_config
from ._triton_dot import dot_meta, mma

__all__ = ["window_triton_forward", "window_triton_backward"]

LOG2E = 1.4426950408889634


@triton.jit
def _tokens(w, t, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW):
    """Window ``w``, token ids ``t`` -> (source position ``row * WP + col`` inside the image
    (int32), valid, shift-mask region)."""
    r = w % NWIN
    wi = r // NWW
    wj = r % NWW
    valid = t < N
    tc = tl.minimum(t, N - 1)  # padded slots read a real token (never stored): no row masks
    i = wi * WH + tc // WW
    j = wj * WW + tc % WW
    si = tl.where(i < H, (i + SH) % H, i)
    sj = tl.where(j < W, (j + SW) % W, j)
    # region in the rolled-padded map: 0 before the last window, 1 in its first part, 2 in its
    # last `shift` rows/cols (shift 0: `i >= HP` never holds, so no third region)
    rid = ((i >= HP - WH).to(tl.int32) + (i >= HP - SH).to(tl.int32)) * 3 \
        + (j >= WP - WW).to(tl.int32) + (j >= WP - SW).to(tl.int32)
    return si * WP + sj, valid, rid


@triton.jit
def _load_kv(qkv_img, w, bk, h, d, dmask, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW, NH,
             HEAD_DIM: tl.constexpr):
    """Key block ``bk`` of window ``w``: ``(k offsets in qkv_img, valid, shift regions, k, v)``."""
    pos_k, valid_k, rk = _tokens(w, bk, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW)
    koff = (pos_k * 3 * NH * HEAD_DIM + (NH + h) * HEAD_DIM)[:, None] + d[None, :]
    k = tl.load(qkv_img + koff, mask=dmask, other=0.0)
    v = tl.load(qkv_img + koff + NH * HEAD_DIM, mask=dmask, other=0.0)
    return koff, valid_k, rk, k, v


@triton.jit
def _image(w, NWIN, HP, WP, NH):
    """int64 offset, in tokens x heads, of window ``w``'s image (offsets inside it fit int32)."""
    return (w // NWIN).to(tl.int64) * HP * WP * NH


@triton.jit
def _scores(q, k, bias_ptr, rq, rk, qk_scale, SHIFTED: tl.constexpr, PREC: tl.constexpr,
            UPCAST: tl.constexpr):
    """Base-2 logits of one (query block, key block) tile: q.k * scale*log2e + bias + mask."""
    s = mma(q, tl.trans(k), PREC, UPCAST) * qk_scale + tl.load(bias_ptr)
    if SHIFTED:  # timm's -100 between regions, times log2(e)
        s = tl.where(rq[:, None] != rk[None, :], s - 144.26950408889634, s)
    return s


@triton.jit
def _win_fwd_kernel(
    QKV, BIAS, O, LSE,
    N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW, NH, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
    SHIFTED: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    w = pid // NB
    NP: tl.constexpr = NB * BLOCK
    t = tl.arange(0, BLOCK)
    d = tl.arange(0, BLOCK_D)
    dmask = (d < HEAD_DIM)[None, :]
    img = _image(w, NWIN, HP, WP, NH)
    qkv_img = QKV + img * 3 * HEAD_DIM
    bq = (pid % NB) * BLOCK + t
    pos_q, valid_q, rq = _tokens(w, bq, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW)
    q = tl.load(qkv_img + (pos_q * 3 * NH * HEAD_DIM + h * HEAD_DIM)[:, None] + d[None, :],
                mask=dmask, other=0.0)
    m_i = tl.full([BLOCK], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    bias_rows = BIAS + h * NP * NP + bq[:, None] * NP
    for kb in range(NB):
        bk = kb * BLOCK + t
        koff, valid_k, rk, k, v = _load_kv(qkv_img, w, bk, h, d, dmask, N, NWIN, NWW, H, W, HP, WP,
                                              WH, WW, SH, SW, NH, HEAD_DIM)
        s = _scores(q, k, bias_rows + bk[None, :], rq, rk, qk_scale, SHIFTED, PREC, UPCAST)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, PREC, UPCAST)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptr = O + img * HEAD_DIM + ((pos_q * NH + h) * HEAD_DIM)[:, None] + d[None, :]
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=valid_q[:, None] & dmask)
    tl.store(LSE + img + pos_q * NH + h, (m_i + tl.log2(l_safe)) * 0.6931471805599453,
             mask=valid_q)


@triton.jit
def _win_fwd_one_kernel(
    QKV, BIAS, O, LSE,
    N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW, NH, NWTOT, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, WPP: tl.constexpr,
    SHIFTED: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Windows of one block, ``WPP`` consecutive windows per program: the [BLOCK, BLOCK] bias
    tile is loaded once into registers; one softmax pass (all keys in the tile)."""
    h = tl.program_id(1)
    t = tl.arange(0, BLOCK)
    d = tl.arange(0, BLOCK_D)
    dmask = (d < HEAD_DIM)[None, :]
    bias = tl.load(BIAS + h * BLOCK * BLOCK + t[:, None] * BLOCK + t[None, :])
    w0 = tl.program_id(0) * WPP
    for w in range(w0, tl.minimum(w0 + WPP, NWTOT)):
        img = _image(w, NWIN, HP, WP, NH)
        pos, valid, rid = _tokens(w, t, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW)
        qoff = (pos * 3 * NH * HEAD_DIM + h * HEAD_DIM)[:, None] + d[None, :]
        qkv_img = QKV + img * 3 * HEAD_DIM
        q = tl.load(qkv_img + qoff, mask=dmask, other=0.0)
        k = tl.load(qkv_img + qoff + NH * HEAD_DIM, mask=dmask, other=0.0)
        v = tl.load(qkv_img + qoff + 2 * NH * HEAD_DIM, mask=dmask, other=0.0)
        s = mma(q, tl.trans(k), PREC, UPCAST) * qk_scale + bias
        if SHIFTED:
            s = tl.where(rid[:, None] != rid[None, :], s - 144.26950408889634, s)
        m = tl.max(s, 1)
        p = tl.exp2(s - m[:, None])
        l_i = tl.sum(p, 1)
        out = mma(p.to(v.dtype), v, PREC, UPCAST) / l_i[:, None]
        o_ptr = O + img * HEAD_DIM + ((pos * NH + h) * HEAD_DIM)[:, None] + d[None, :]
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=valid[:, None] & dmask)
        tl.store(LSE + img + pos * NH + h, (m + tl.log2(l_i)) * 0.6931471805599453, mask=valid)


@triton.jit
def _load_rows(qkv_img, o_img, do_img, lse_img, pos, valid, h, d, dmask, NH,
               HEAD_DIM: tl.constexpr):
    """q, dO (zero on padded rows), delta = rowsum(dO * O), base-2 logsumexp of query rows."""
    q = tl.load(qkv_img + (pos * 3 * NH * HEAD_DIM + h * HEAD_DIM)[:, None] + d[None, :],
                mask=dmask, other=0.0)
    o_off = ((pos * NH + h) * HEAD_DIM)[:, None] + d[None, :]
    rmask = valid[:, None] & dmask
    do = tl.load(do_img + o_off, mask=rmask, other=0.0)
    o = tl.load(o_img + o_off, mask=rmask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse2 = tl.load(lse_img + pos * NH + h) * 1.4426950408889634
    return q, do, delta, lse2


@triton.jit
def _win_bwd_one_kernel(
    QKV, BIAS, O, DO, LSE, DQKV, DB,
    N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW, NH, NWTOT, NSLOT, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr,
    SHIFTED: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Whole window in one block: P, dP, dS once; dq, dk, dv stored. d(bias) is added to this
    program's own slice of ``DB`` (an fp32 register accumulator costs ~50 registers and spills
    on sm_80; the slice stays in L1/L2)."""
    slot = tl.program_id(0)
    h = tl.program_id(1)
    t = tl.arange(0, BLOCK)
    d = tl.arange(0, BLOCK_D)
    dmask = (d < HEAD_DIM)[None, :]
    bias_ptr = BIAS + h * BLOCK * BLOCK + t[:, None] * BLOCK + t[None, :]
    db_ptr = DB + (slot * NH + h) * BLOCK * BLOCK + t[:, None] * BLOCK + t[None, :]
    for w in range(slot, NWTOT, NSLOT):
        img = _image(w, NWIN, HP, WP, NH)
        pos, valid, rid = _tokens(w, t, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW)
        q, do, delta, lse2 = _load_rows(QKV + img * 3 * HEAD_DIM, O + img * HEAD_DIM,
                                        DO + img * HEAD_DIM, LSE + img, pos, valid, h, d, dmask,
                                        NH, HEAD_DIM)
        qoff = (pos * 3 * NH * HEAD_DIM + h * HEAD_DIM)[:, None] + d[None, :]
        k = tl.load(QKV + img * 3 * HEAD_DIM + qoff + NH * HEAD_DIM, mask=dmask, other=0.0)
        v = tl.load(QKV + img * 3 * HEAD_DIM + qoff + 2 * NH * HEAD_DIM, mask=dmask, other=0.0)
        s = _scores(q, k, bias_ptr, rid, rid, qk_scale, SHIFTED, PREC, UPCAST)  # bias: L1/L2-resident
        p = tl.exp2(s - lse2[:, None])
        dv = mma(tl.trans(p.to(do.dtype)), do, PREC, UPCAST)
        dp = mma(do, tl.trans(v), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        tl.store(db_ptr, tl.load(db_ptr) + ds)
        tl.debug_barrier()
        dsc = ds.to(q.dtype)
        smask = valid[:, None] & dmask
        gp = DQKV + img * 3 * HEAD_DIM + qoff
        tl.store(gp + 2 * NH * HEAD_DIM, dv.to(DQKV.dtype.element_ty), mask=smask)
        dq = mma(dsc, k, PREC, UPCAST) * scale
        tl.store(gp, dq.to(DQKV.dtype.element_ty), mask=smask)
        dk = mma(tl.trans(dsc), q, PREC, UPCAST) * scale
        tl.store(gp + NH * HEAD_DIM, dk.to(DQKV.dtype.element_ty), mask=smask)


@triton.jit
def _win_bwd_blocked_kernel(
    QKV, BIAS, O, DO, LSE, DQKV, DB,
    N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW, NH, NWTOT, NSLOT, qk_scale, scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
    SHIFTED: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    """Windows of several blocks: a dk/dv phase per key block, then a dq phase per query block.

    d(bias) goes to this program's own slice of the zero-initialised partial buffer ``DB``
    (read, add, write; a barrier orders it), so no other program ever touches it.
    """
    slot = tl.program_id(0)
    h = tl.program_id(1)
    NP: tl.constexpr = NB * BLOCK
    t = tl.arange(0, BLOCK)
    d = tl.arange(0, BLOCK_D)
    dmask = (d < HEAD_DIM)[None, :]
    bias_h = BIAS + h * NP * NP
    db_h = DB + (slot * NH + h).to(tl.int64) * NP * NP
    for w in range(slot, NWTOT, NSLOT):
        img = _image(w, NWIN, HP, WP, NH)
        qkv_img = QKV + img * 3 * HEAD_DIM
        for kb in range(NB):
            bk = kb * BLOCK + t
            koff, valid_k, rk, k, v = _load_kv(qkv_img, w, bk, h, d, dmask, N, NWIN, NWW, H, W, HP, WP,
                                                  WH, WW, SH, SW, NH, HEAD_DIM)
            dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
            dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
            for qb in range(NB):
                bq = qb * BLOCK + t
                pos_q, valid_q, rq = _tokens(w, bq, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW)
                q, do, delta, lse2 = _load_rows(qkv_img, O + img * HEAD_DIM, DO + img * HEAD_DIM,
                                                LSE + img, pos_q, valid_q, h, d, dmask, NH,
                                                HEAD_DIM)
                tile = bq[:, None] * NP + bk[None, :]
                s = _scores(q, k, bias_h + tile, rq, rk, qk_scale, SHIFTED, PREC, UPCAST)
                p = tl.exp2(s - lse2[:, None])
                dv += mma(tl.trans(p.to(do.dtype)), do, PREC, UPCAST)
                dp = mma(do, tl.trans(v), PREC, UPCAST)
                ds = p * (dp - delta[:, None])
                dk += mma(tl.trans(ds.to(q.dtype)), q, PREC, UPCAST)
                tl.store(db_h + tile, tl.load(db_h + tile) + ds)
                tl.debug_barrier()
            smask = valid_k[:, None] & dmask
            gp = DQKV + img * 3 * HEAD_DIM + koff
            tl.store(gp, (dk * scale).to(DQKV.dtype.element_ty), mask=smask)
            tl.store(gp + NH * HEAD_DIM, dv.to(DQKV.dtype.element_ty), mask=smask)
        for qb in range(NB):
            bq = qb * BLOCK + t
            pos_q, valid_q, rq = _tokens(w, bq, N, NWIN, NWW, H, W, HP, WP, WH, WW, SH, SW)
            q, do, delta, lse2 = _load_rows(qkv_img, O + img * HEAD_DIM, DO + img * HEAD_DIM,
                                            LSE + img, pos_q, valid_q, h, d, dmask, NH, HEAD_DIM)
            dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
            for kb in range(NB):
                bk = kb * BLOCK + t
                koff, valid_k, rk, k, v = _load_kv(qkv_img, w, bk, h, d, dmask, N, NWIN, NWW, H, W, HP, WP,
                                                      WH, WW, SH, SW, NH, HEAD_DIM)
                s = _scores(q, k, bias_h + bq[:, None] * NP + bk[None, :], rq, rk, qk_scale,
                            SHIFTED, PREC, UPCAST)
                p = tl.exp2(s - lse2[:, None])
                dp = mma(do, tl.trans(v), PREC, UPCAST)
                ds = p * (dp - delta[:, None])
                dq += mma(ds.to(q.dtype), k, PREC, UPCAST)
            gp = DQKV + img * 3 * HEAD_DIM \
                + (pos_q * 3 * NH * HEAD_DIM + h * HEAD_DIM)[:, None] + d[None, :]
            tl.store(gp, (dq * scale).to(DQKV.dtype.element_ty), mask=valid_q[:, None] & dmask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
_SM_COUNT = {}


def _num_slots(device: torch.device, windows: int, heads: int) -> int:
    """Persistent backward programs per head: about 4 per SM in all (2 under the interpreter)."""
    if device.type != "cuda":
        return min(windows, 2)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return max(1, min(windows, math.ceil(4 * _SM_COUNT[idx] / heads)))


def _geometry(qkv: Tensor, window: Sequence[int], shift: Sequence[int], map_size: Sequence[int]):
    B, HP, WP, _, NH, D = qkv.shape
    wh, ww = window
    nwh, nww = HP // wh, WP // ww
    return dict(N=wh * ww, NWIN=nwh * nww, NWW=nww, H=map_size[0], W=map_size[1], HP=HP, WP=WP,
                WH=wh, WW=ww, SH=shift[0], SW=shift[1], NH=NH), B * nwh * nww


def _padded_bias(bias: Optional[Tensor], heads: int, tokens: int, np_: int, device) -> Tensor:
    """``[heads, NP, NP]`` fp32: bias * log2(e), 0 in padded query rows, -inf in padded key
    columns."""
    out = torch.zeros(heads, np_, np_, device=device, dtype=torch.float32)
    out[:, :, tokens:] = float("-inf")
    if bias is not None:
        out[:, :tokens, :tokens] = bias.detach().to(torch.float32) * LOG2E
    return out


def _config(qkv: Tensor, kernel: str, tokens: int) -> dict:
    """Launch meta-parameters from the per-target table (``_launch_config._window``)."""
    return launch_config("window", kernel, device_target(qkv.device), qkv.dtype,
                         dot_meta(qkv.dtype)["PREC"], tokens=tokens, head_dim=qkv.shape[-1])


def window_triton_forward(qkv: Tensor, bias: Optional[Tensor], window: Sequence[int],
                          shift: Sequence[int], map_size: Sequence[int],
                          scale: float) -> Tuple[Tensor, Tensor]:
    """``(out [B, HP, WP, heads, d], lse [B, HP, WP, heads] fp32)`` from
    ``qkv [B, HP, WP, 3, heads, d]``."""
    qkv = qkv.contiguous()
    B, HP, WP, _, NH, D = qkv.shape
    geo, nwtot = _geometry(qkv, window, shift, map_size)
    cfg = _config(qkv, "fwd", geo["N"])
    block, nb = cfg["BLOCK"], cfg["NB"]
    bias2 = _padded_bias(bias, NH, geo["N"], nb * block, qkv.device)
    out = torch.empty(B, HP, WP, NH, D, device=qkv.device, dtype=qkv.dtype)
    lse = torch.empty(B, HP, WP, NH, device=qkv.device, dtype=torch.float32)
    shifted = bool(shift[0] or shift[1])
    meta = dict(HEAD_DIM=D, BLOCK_D=cfg["BLOCK_D"], BLOCK=block, SHIFTED=shifted,
                **dot_meta(qkv.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if nb == 1:
        wpp = cfg["WPP"]
        _win_fwd_one_kernel[(triton.cdiv(nwtot, wpp), NH)](
            qkv, bias2, out, lse, *geo.values(), nwtot, scale * LOG2E, WPP=wpp, **meta)
    else:
        _win_fwd_kernel[(nwtot * nb, NH)](
            qkv, bias2, out, lse, *geo.values(), scale * LOG2E, NB=nb, **meta)
    return out, lse


def window_triton_backward(grad_out: Tensor, qkv: Tensor, bias: Optional[Tensor], out: Tensor,
                           lse: Tensor, window: Sequence[int], shift: Sequence[int],
                           map_size: Sequence[int], scale: float,
                           slots: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """``(dqkv [B, HP, WP, 3, heads, d], dbias [heads, N, N] fp32)``; deterministic, no atomics."""
    qkv, grad_out = qkv.contiguous(), grad_out.contiguous()
    out, lse = out.contiguous(), lse.contiguous()
    B, HP, WP, _, NH, D = qkv.shape
    geo, nwtot = _geometry(qkv, window, shift, map_size)
    N = geo["N"]
    cfg = _config(qkv, "bwd", N)
    block, nb = cfg["BLOCK"], cfg["NB"]
    np_ = nb * block
    bias2 = _padded_bias(bias, NH, N, np_, qkv.device)
    nslot = slots or _num_slots(qkv.device, nwtot, NH)
    dqkv = torch.empty_like(qkv)
    common = dict(HEAD_DIM=D, BLOCK_D=cfg["BLOCK_D"], BLOCK=block,
                  SHIFTED=bool(shift[0] or shift[1]), **dot_meta(qkv.dtype),
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    args = (*geo.values(), nwtot, nslot, scale * LOG2E, scale)
    partial = torch.zeros(nslot, NH, np_, np_, device=qkv.device, dtype=torch.float32)
    if nb == 1:
        _win_bwd_one_kernel[(nslot, NH)](qkv, bias2, out, grad_out, lse, dqkv, partial, *args,
                                         **common)
    else:
        _win_bwd_blocked_kernel[(nslot, NH)](qkv, bias2, out, grad_out, lse, dqkv, partial, *args,
                                             NB=nb, **common)
    dbias = partial.sum(0)[:, :N, :N].contiguous()  # the fake impl promises a contiguous tensor
    return dqkv, dbias
