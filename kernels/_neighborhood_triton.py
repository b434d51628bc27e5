"""Launchers of the tiled tensor-core neighborhood-attention kernels (2-D; 1-D is a ``1 x L`` map).

Imported lazily by :mod:`vitzoo.kernels.neighborhood` only when the Triton backend is chosen. The
kernels are in ``_na_forward_triton`` and ``_na_backward_triton``; this file picks the tile
configuration, sizes the grids and reduces the compact bias gradient.

Tile configurations come from ``_launch_config.launch_config("na", ...)``, per GPU target (the
``~99 KB`` shared-memory parts get fewer pipeline stages) and per dtype / fp32 precision (IEEE
fp32 dots get smaller tiles). fp32 inputs follow the one fp32 rule (``_precision.py``: torch's
``get_float32_matmul_precision``). ``VITZOO_NA_TILE=RxC`` (tests only) forces small tiles so tiny
maps span several tiles and the chunk loops run more than once.
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence, Tuple

import torch
import triton
from torch import Tensor

from ._na_backward_triton import _na_bwd_dkdv_kernel, _na_bwd_dq_kernel
from ._launch_config import DEFAULT_TARGET, device_target, launch_config
from ._na_forward_triton import _na_fwd_kernel
from ._triton_dot import dot_meta, row_delta

__all__ = ["na2d_triton_forward", "na2d_triton_backward", "tile_config"]

_LOG2E = 1.4426950408889634


def tile_config(H: int, W: int, ks: Sequence[int], dil: Sequence[int], head_dim: int,
                elem_bytes: int = 2, ieee: bool = False, target: Optional[int] = None
                ) -> Dict[str, Dict[str, int]]:
    """``{"fwd": {...}, "bwd": {...}}`` launch meta-parameters of one call (see
    ``_launch_config._na``); ``target`` defaults to ``DEFAULT_TARGET``."""
    dtype = "float32" if elem_bytes >= 4 else "bfloat16"
    target = DEFAULT_TARGET if target is None else target
    shape = dict(H=H, W=W, kernel_size=tuple(ks), dilation=tuple(dil), head_dim=head_dim)
    return {k: launch_config("na", k, target, dtype, "ieee" if ieee else "tf32", **shape)
            for k in ("fwd", "bwd")}


def _config(q: Tensor, kernel: str, ks, dil) -> Dict[str, int]:
    B, H, W, NH, D = q.shape
    return launch_config("na", kernel, device_target(q.device), q.dtype,
                         dot_meta(q.dtype)["PREC"], H=H, W=W, kernel_size=ks, dilation=dil,
                         head_dim=D)


def _grid(H: int, W: int, dil: Sequence[int], cfg: Dict[str, int], batch_heads: int):
    nth = triton.cdiv(triton.cdiv(H, dil[0]), cfg["TH"])
    ntw = triton.cdiv(triton.cdiv(W, dil[1]), cfg["TW"])
    return (dil[0] * dil[1] * nth * ntw, batch_heads), nth, ntw


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(x: Tensor) -> Tuple[int, int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _dot_meta(q: Tensor) -> Dict[str, object]:
    """``PREC`` (the fp32 rule, ``_precision.py``) and ``UPCAST`` (interpreter only)."""
    return dot_meta(q.dtype)


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
    cfg = _config(q, "fwd", (kh, kw), (dh, dw))
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
    cfg = _config(q, "bwd", (kh, kw), (dh, dw))
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
