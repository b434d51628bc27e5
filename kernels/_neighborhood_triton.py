"""Launchers of the tiled tensor-core neighborhood-attention kernels (2-D; 1-D is a ``1 x L`` map).

Imported lazily by :mod:`vitzoo.kernels.neighborhood` only when the Triton backend is chosen. The
kernels are in ``_na_forward_triton`` and ``_na_backward_triton``; this file picks the tile
configuration, sizes the grids and reduces the compact bias gradient.

Tile table (``_tile_config``): query/key tiles are ``TH x TW`` positions of one dilation group,
walked in chunks of ``RPC`` rows x ``CW`` columns of keys (forward, dq) or queries (dk/dv).

* groups of at most 8 x 8 (7x7 maps, DiNAT layers with ``k * d = map side``): one 8x8 tile per
  group and one 64-slot chunk, so the forward loop runs once (the dense path; two chunks at
  head_dim 64, and the backward takes it in 32-slot chunks, to stay within registers);
* 1-D maps: 1 x 64 tiles (1 x 32 for head_dim 128);
* otherwise 8x8 tiles (M = 64) with 16-column chunks (32 when ``TW + k - 1 > 16``) and
  4 / 2 / 1 rows per chunk for head_dim <= 32 / 64 / 128 (2 / 2 / 1 in the backward);
* fp32 inputs: half as many rows per chunk (their operands take twice the registers).

4 warps, 8 for head_dim 128; the backward uses 8 from head_dim 64 and 2 pipeline stages up to
head_dim 64 (which took its kernels from ~160-190 to ~125-170 registers on sm_90; the forward
keeps Triton's 3). These choices come from the registers and spills of sm_90/sm_80 compiles
(``tests/test_kernels_compile.py`` prints them); no GPU timing has tuned them yet.

``VITZOO_NA_TILE=RxC`` (tests only) forces small tiles so tiny maps span several tiles and the
chunk loops run more than once. fp32 inputs use IEEE-precision dots (1e-4 against the reference);
``VITZOO_NA_FP32_PRECISION=tf32`` (or ``tf32x3``) selects the faster tensor-float dots.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import triton
from torch import Tensor

from ._na_backward_triton import _na_bwd_dkdv_kernel, _na_bwd_dq_kernel
from ._na_forward_triton import _na_fwd_kernel
from ._triton_dot import dot_meta, row_delta

__all__ = ["na2d_triton_forward", "na2d_triton_backward", "tile_config"]

_LOG2E = 1.4426950408889634
_FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")


def _fp32_precision() -> str:
    prec = os.environ.get("VITZOO_NA_FP32_PRECISION", "ieee").strip().lower() or "ieee"
    if prec not in _FP32_PRECISIONS:
        raise ValueError(f"VITZOO_NA_FP32_PRECISION={prec!r} is not one of {_FP32_PRECISIONS}")
    return prec


def _tile_override() -> Optional[Tuple[int, int]]:
    spec = os.environ.get("VITZOO_NA_TILE", "").strip().lower()
    if not spec:
        return None
    try:
        th, tw = (int(x) for x in spec.split("x"))
    except ValueError:
        raise ValueError(f"VITZOO_NA_TILE={spec!r} must look like '4x4'") from None
    if th < 1 or tw < 1 or th & (th - 1) or tw & (tw - 1) or th * tw < 16:
        raise ValueError(f"VITZOO_NA_TILE={spec!r}: both sides must be powers of two with "
                         "rows * cols >= 16 (tl.dot needs M >= 16)")
    return th, tw


def tile_config(H: int, W: int, ks: Sequence[int], dil: Sequence[int], head_dim: int,
                elem_bytes: int = 2, ieee: bool = False) -> Dict[str, Dict[str, int]]:
    """Tile configuration of one call: ``{"fwd": {...}, "bwd": {...}}`` launch meta-parameters.

    Every ``tl.dot`` has M = TH*TW, N = RPC*CW and K = BLOCK_D all >= 16 (Triton 3.1's minimum).
    fp32 inputs (``elem_bytes`` 4) take chunks of half the rows: their operands need twice the
    registers. IEEE fp32 dots (``ieee``) run on FMA units, not tensor cores, and need far more
    registers still: 4x8 tiles, 16/32-slot chunks and 8 warps keep them from spilling.
    """
    cfg = {name: dict(c) for name, c in _tile_config(H, W, ks, dil, head_dim).items()}
    if elem_bytes >= 4 and ieee and H > 1 and _tile_override() is None:
        cfg["fwd"].update(TH=4, TW=8, RPC=2, CW=8, num_warps=8)
        cfg["bwd"].update(TH=4, TW=8, RPC=4, CW=8, num_warps=8)
        return cfg
    if elem_bytes >= 4:
        for name, c in cfg.items():
            floor = -(-16 // c["CW"])                                  # N >= 16
            if name == "bwd" and c["TH"] > 1:
                floor = max(floor, -(-16 // c["TH"]))                  # d(rpb) bins: TH*RPC >= 16
            c["RPC"] = max(c["RPC"] // 2, floor)
    return cfg


def _tile_config(H: int, W: int, ks: Sequence[int], dil: Sequence[int], head_dim: int
                 ) -> Dict[str, Dict[str, int]]:
    block_d = max(16, triton.next_power_of_2(head_dim))
    warps = 8 if block_d >= 128 else 4
    n_h, n_w = -(-H // dil[0]), -(-W // dil[1])
    override = _tile_override()
    if override is not None:
        th, tw = override
        if H == 1:
            th, tw = 1, th * tw
        fwd = dict(TH=th, TW=tw, RPC=2 if th > 1 else 1, CW=8 if th > 1 else 16)
        bwd = dict(fwd, RPC=max(2, 16 // th)) if th > 1 else fwd   # TH*RPC >= 16: d(rpb) bins
    elif H == 1:
        tw = 32 if block_d >= 128 else 64
        fwd = dict(TH=1, TW=tw, RPC=1, CW=64)
        bwd = dict(TH=1, TW=tw, RPC=1, CW=32)
    elif n_h <= 8 and n_w <= 8:
        # one chunk, the whole group (two for head_dim 64: registers)
        fwd = dict(TH=8, TW=8, RPC=4 if block_d == 64 else 8, CW=8)
        bwd = dict(TH=8, TW=8, RPC=2 if block_d >= 128 else 4, CW=8)   # 64 x 64 tiles spill
    else:
        wide = 8 + ks[1] - 1 > 16
        cw = 32 if wide else 16
        rpc_f = {16: 4, 32: 4, 64: 2}.get(block_d, 1)
        rpc_b = 1 if block_d >= 128 else 2
        if wide:
            rpc_f, rpc_b = max(1, rpc_f // 2), max(1, rpc_b // 2)
        fwd = dict(TH=8, TW=8, RPC=rpc_f, CW=cw)
        bwd = dict(TH=8, TW=8, RPC=rpc_b, CW=cw)
    return {"fwd": dict(fwd, BLOCK_D=block_d, num_warps=warps),
            "bwd": dict(bwd, BLOCK_D=block_d, num_warps=8 if block_d >= 64 else 4,
                        num_stages=2 if block_d <= 64 else 3)}


def _grid(H: int, W: int, dil: Sequence[int], cfg: Dict[str, int], batch_heads: int):
    nth = triton.cdiv(triton.cdiv(H, dil[0]), cfg["TH"])
    ntw = triton.cdiv(triton.cdiv(W, dil[1]), cfg["TW"])
    return (dil[0] * dil[1] * nth * ntw, batch_heads), nth, ntw


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x: Tensor) -> Tuple[int, int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _dot_meta(q: Tensor) -> Dict[str, object]:
    """``PREC`` (fp32 dot precision, ``VITZOO_NA_FP32_PRECISION``) and ``UPCAST`` (interpreter only)."""
    return dot_meta(q.dtype, _fp32_precision())


def _region_cols(cfg: Dict[str, int], kw: int, inverse: bool) -> int:
    """``NCW``: columns of a tile's key region (forward, dq: ``TW + k - 1`` at most) or query
    region (dk/dv, inverse neighbourhood: ``TW + 2k - 2``), rounded up to whole chunks."""
    cols = cfg["TW"] + (2 * kw - 2 if inverse else kw - 1)
    return -(-cols // cfg["CW"]) * cfg["CW"]


@functools.lru_cache(maxsize=64)
def _expand_index(kw: int, tw: int, ncw: int, device: torch.device) -> Tensor:
    """``[kw, tw, ncw]`` column of the bias table for (clamp class, tile column, region column);
    ``2kw - 1`` (a zero column) where the offset falls off the table."""
    delta = torch.arange(kw)[:, None, None]
    a = torch.arange(tw)[None, :, None]
    x = torch.arange(ncw)[None, None, :]
    idx = delta + x - a
    return torch.where((idx >= 0) & (idx <= 2 * kw - 2), idx, 2 * kw - 1).to(device)


def _rpb_expanded(rpb: Optional[Tensor], q: Tensor, cfg: Dict[str, int], inverse: bool
                  ) -> Tuple[Tensor, int]:
    """``(E [heads, 2kh-1, kw, TW, NCW] fp32, NCW)``: the bias table x log2e, expanded so that a
    tile row reads its chunk's biases as one contiguous run (see ``bias_tile``).

    ``inverse`` (dk/dv) indexes by query minus key, i.e. the table flipped on both axes.
    """
    if rpb is None:
        return torch.zeros(1, dtype=torch.float32, device=q.device), 16
    heads, rows, cols = rpb.shape
    kw = (cols + 1) // 2
    ncw = _region_cols(cfg, kw, inverse)
    table = rpb.float() * _LOG2E
    if inverse:
        table = table.flip(1, 2)
    table = torch.nn.functional.pad(table, (0, 1))               # zero column 2kw - 1
    return table[:, :, _expand_index(kw, cfg["TW"], ncw, q.device)].contiguous(), ncw


def na2d_triton_forward(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                        ks: Sequence[int], dil: Sequence[int], scale: float
                        ) -> Tuple[Tensor, Tensor]:
    """Tiled forward: ``(out [B,H,W,h,d] in q's dtype, logsumexp [B,H,W,h] fp32)``."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    B, H, W, NH, D = q.shape
    kh, kw, dh, dw = int(ks[0]), int(ks[1]), int(dil[0]), int(dil[1])
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, W, NH), dtype=torch.float32, device=q.device)
    cfg = tile_config(H, W, (kh, kw), (dh, dw), D, q.element_size(),
                      _dot_meta(q)["PREC"] == "ieee")["fwd"]
    grid, nth, ntw = _grid(H, W, (dh, dw), cfg, B * NH)
    rpb2, ncw = _rpb_expanded(rpb, q, cfg, inverse=False)
    _na_fwd_kernel[grid](q, k, v, rpb2, out, lse,
                         *_strides(q), *_strides(k), *_strides(v),
                         H, W, NH, dh, dw, nth, ntw, float(scale) * _LOG2E,
                         KH=kh, KW=kw, HAS_RPB=rpb is not None, HEAD_DIM=D, NCW=ncw,
                         enable_fp_fusion=True, **_dot_meta(q), **cfg)
    return out, lse


@functools.lru_cache(maxsize=64)
def _axis_onehot(length: int, kernel_size: int, dilation: int, device: torch.device) -> Tensor:
    """``[length * k, 2k - 1]`` fp64 one-hot of each (query, neighbour)'s rpb index on one axis."""
    from ._neighborhood_index import rpb_index
    idx = rpb_index(length, kernel_size, dilation).reshape(-1)
    return torch.nn.functional.one_hot(idx, 2 * kernel_size - 1).to(device, torch.float64)


def _reduce_bias_grad(ds: Tensor, H: int, W: int, NH: int, ks: Tuple[int, int],
                      dil: Tuple[int, int]) -> Tensor:
    """``d(rpb) [NH, 2kh-1, 2kw-1]`` from the compact ``dS [B, H, W, NH, kh*kw]``.

    Fixed-order sums and two one-hot matmuls in fp64 (no ``index_add_``, no TF32), so the
    result is deterministic on every device.
    """
    kh, kw = ks
    s = ds.sum(0, dtype=torch.float64).view(H, W, NH, kh, kw)
    oh = _axis_onehot(H, kh, dil[0], ds.device)                       # [H*kh, 2kh-1]
    ow = _axis_onehot(W, kw, dil[1], ds.device)                       # [W*kw, 2kw-1]
    s = s.permute(2, 0, 3, 1, 4).reshape(NH, H * kh, W * kw)          # [NH, (i,a), (j,c)]
    return oh.t() @ s @ ow                                            # [NH, 2kh-1, 2kw-1]


def na2d_triton_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor],
                         out: Tensor, lse: Tensor, ks: Sequence[int], dil: Sequence[int],
                         scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tiled backward: ``(dq, dk, dv, drpb)`` (``drpb`` empty when ``rpb`` is None)."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    B, H, W, NH, D = q.shape
    kh, kw, dh, dw = int(ks[0]), int(ks[1]), int(dil[0]), int(dil[1])
    grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
    cfg = tile_config(H, W, (kh, kw), (dh, dw), D, q.element_size(),
                      _dot_meta(q)["PREC"] == "ieee")["bwd"]
    delta = row_delta(out, grad_out, torch.empty((B, H, W, NH), dtype=torch.float32, device=q.device),
                      D, cfg["BLOCK_D"])
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=q.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=q.device)
    has_rpb = rpb is not None
    grid, nth, ntw = _grid(H, W, (dh, dw), cfg, B * NH)
    # d(rpb): binned in each dq program into a [UP, XP] partial (tl.dot with band matrices),
    # which needs TH * RPC >= 16 rows; 1-D tiles store the in-window dS compactly instead.
    bins = dict(BIN_RPB=has_rpb and cfg["TH"] * cfg["RPC"] >= 16,
                UP=max(16, triton.next_power_of_2(2 * kh - 1)),
                XP=max(16, triton.next_power_of_2(2 * kw - 1)))
    if not has_rpb:
        ds = torch.zeros(1, dtype=torch.float32, device=q.device)
    elif bins["BIN_RPB"]:   # zeros: programs past their group's end exit without storing
        ds = torch.zeros((B, NH, grid[0], bins["UP"], bins["XP"]), dtype=torch.float32,
                         device=q.device)
    else:
        ds = torch.empty((B, H, W, NH, kh * kw), dtype=torch.float32, device=q.device)
    common = (*_strides(q), *_strides(k), *_strides(v), H, W, NH, dh, dw, nth, ntw,
              float(scale) * _LOG2E, float(scale))
    meta = dict(KH=kh, KW=kw, HAS_RPB=has_rpb, HEAD_DIM=D, enable_fp_fusion=True,
                **_dot_meta(q), **cfg)
    rpb_inv, ncw_inv = _rpb_expanded(rpb, q, cfg, inverse=True)
    _na_bwd_dkdv_kernel[grid](q, k, v, rpb_inv, grad_out, lse, delta, dk, dv, *common,
                              NCW=ncw_inv, **meta)
    rpb2, ncw = _rpb_expanded(rpb, q, cfg, inverse=False)
    _na_bwd_dq_kernel[grid](q, k, v, rpb2, grad_out, lse, delta, dq, ds, *common, NCW=ncw,
                            **bins, **meta)
    if has_rpb and bins["BIN_RPB"]:   # fixed-order sum of the per-program partials
        drpb = ds.sum((0, 2), dtype=torch.float64)[:, :2 * kh - 1, :2 * kw - 1]
        drpb = drpb.to(rpb.dtype).reshape(rpb.shape)
    elif has_rpb:
        drpb = _reduce_bias_grad(ds, H, W, NH, (kh, kw), (dh, dw)).to(rpb.dtype).view(rpb.shape)
    else:
        drpb = q.new_empty(0)
    return dq, dk, dv, drpb
