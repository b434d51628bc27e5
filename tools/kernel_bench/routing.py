"""Bi-level routed attention (``vitzoo.kernels.routed_attention``) at BiFormer-T shapes.

Impls side by side in one run: ``triton`` (the vitzoo kernels: routed regions gathered inside
the kernel), ``official`` (the official algorithm written here in torch, as
``rayleizhu/BiFormer`` ``ops/bra_legacy.py`` runs it: region partition, ``torch.gather`` of the
routed regions' k|v into a ``topk``-times-redundant tensor, then matmul-softmax-matmul per head)
and ``reference`` (the vitzoo PyTorch path). The triton row carries ``ratio_vs="official"``,
``speedup`` = official fwd+bwd ms / triton fwd+bwd ms, ``mem_ratio`` = triton peak / official
peak, and ``max_abs_diff`` of its output from the official one (a guard: the timings compare
the same computation). Routing (``r_idx``) is made once per case, outside the timed region.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ._timing import measure, plan, speedup, with_kernels

OP = "routing"

# BiFormer-T at 224 px, n_win 7: (map side, heads, dim = qk_dim, topk); head_dim = 32.
BIFORMER_T_STAGES = [(56, 2, 64, 1), (28, 4, 128, 4), (14, 8, 256, 16)]
N_WIN = 7
IMPLS = ("triton", "official", "reference")


def official_routed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              r_idx: torch.Tensor, n_win: int, scale: float) -> torch.Tensor:
    """The official gather-then-attention on heads-last ``[B, H, W, heads, d]`` inputs."""
    B, H, W, nh, dqk = q.shape
    dv = v.shape[-1]
    R, hr, wr = n_win * n_win, H // n_win, W // n_win
    w2, topk = hr * wr, r_idx.shape[-1]

    def regions(x):  # 'n (j h) (i w) c -> n (j i) (h w) c'
        c = x.shape[-2] * x.shape[-1]
        x = x.reshape(B, n_win, hr, n_win, wr, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(B, R, w2, c)

    q_pix = regions(q)                                            # [B, R, w2, C]
    kv_pix = torch.cat([regions(k), regions(v)], dim=-1)          # [B, R, w2, C + Cv]
    c_kv = kv_pix.shape[-1]
    kv_sel = torch.gather(kv_pix.view(B, 1, R, w2, c_kv).expand(-1, R, -1, -1, -1), dim=2,
                          index=r_idx.view(B, R, topk, 1, 1).expand(-1, -1, -1, w2, c_kv))
    k_sel, v_sel = kv_sel.split([nh * dqk, nh * dv], dim=-1)      # [B, R, topk, w2, C]
    k_sel = k_sel.reshape(B * R, topk * w2, nh, dqk).permute(0, 2, 3, 1)  # (n p2) m c (k w2)
    v_sel = v_sel.reshape(B * R, topk * w2, nh, dv).transpose(1, 2)       # (n p2) m (k w2) c
    q_pix = q_pix.reshape(B * R, w2, nh, dqk).transpose(1, 2)             # (n p2) m w2 c
    attn = torch.softmax((q_pix * scale) @ k_sel, dim=-1)
    out = (attn @ v_sel).transpose(1, 2)                                  # (n p2) w2 m c
    out = out.reshape(B, n_win, n_win, hr, wr, nh, dv).permute(0, 1, 3, 2, 4, 5, 6)
    return out.reshape(B, H, W, nh, dv)



def configs(device: str, quick: bool) -> List[tuple]:
    """(map side, heads, dim, topk): the three routed BiFormer-T stages (also when quick);
    CPU: smaller maps with the same per-region structure (plumbing only)."""
    if device == "cpu":
        return [(14, 2, 64, 4), (14, 4, 128, 16)] if quick else [(28, 2, 64, 2),
                                                                 (14, 4, 128, 16)]
    return list(BIFORMER_T_STAGES)


def bench_case(B: int, hw: int, heads: int, dim: int, topk: int, dtype: torch.dtype, device: str,
               impls: Sequence[str], reps: int, warmup: int) -> List[Dict[str, Any]]:
    """One row per impl for one routed attention layer (q, k, v random, fwd and fwd+bwd)."""
    from vitzoo.kernels import routed_attention

    hd = dim // heads
    scale = dim ** -0.5                      # BiFormer: the full qk_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, hw, hw, heads, hd, generator=gen).to(device, dtype)
               .requires_grad_() for _ in range(3))
    R = N_WIN * N_WIN
    r_idx = torch.randn(B, R, R, generator=gen).topk(topk, dim=-1).indices.to(device)
    grad = torch.randn_like(q)
    fields = dict(batch=B, map=hw, heads=heads, head_dim=hd, n_win=N_WIN, topk=topk,
                  dtype=str(dtype).replace("torch.", ""))
    case = f"map {hw} heads {heads} topk {topk} batch {B}"

    def op_call():
        return routed_attention(q, k, v, r_idx, N_WIN, scale)

    fns: Dict[str, Callable[[], torch.Tensor]] = {}
    if "triton" in impls:
        fns["triton"] = with_kernels("triton", op_call)
    if "official" in impls:
        fns["official"] = lambda: official_routed_attention(q, k, v, r_idx, N_WIN, scale)
    if "reference" in impls:
        fns["reference"] = with_kernels("reference", op_call)

    rows: Dict[str, Dict[str, Any]] = {}
    outs: Dict[str, torch.Tensor] = {}
    for impl, fn in fns.items():
        row: Dict[str, Any] = dict(op=OP, case=case, impl=impl, **fields)

        def fwd_bwd(fn=fn):
            out = fn()
            out.backward(grad)
        try:
            with torch.no_grad():
                outs[impl] = fn().float()
            row.update(measure(fn, fwd_bwd, device, reps, warmup))
        except Exception as exc:  # noqa: BLE001 - a failing impl is reported, not fatal
            row.update(fwd_ms=None, fwd_bwd_ms=None, peak_mem_mb=None,
                       error=f"{type(exc).__name__}: {str(exc)[:200]}")
        for t in (q, k, v):
            t.grad = None
        rows[impl] = row
    for impl, row in rows.items():
        if impl != "official" and impl in outs and "official" in outs:
            row["max_abs_diff"] = float((outs[impl] - outs["official"]).abs().max())
    tri, off = rows.get("triton"), rows.get("official")
    if tri is not None and off is not None:
        tri.update(ratio_vs="official", speedup=speedup(off["fwd_bwd_ms"], tri["fwd_bwd_ms"]),
                   speedup_fwd=speedup(off["fwd_ms"], tri["fwd_ms"]))
        if tri.get("peak_mem_mb") and off.get("peak_mem_mb"):
            tri["mem_ratio"] = round(tri["peak_mem_mb"] / off["peak_mem_mb"], 3)
    if device == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())


def run(device: str, dtype: torch.dtype, quick: bool, impls: Optional[Sequence[str]] = None,
        batch: Optional[int] = None) -> List[Dict[str, Any]]:
    """All routed-attention rows. GPU: bf16 as given, B=128 (quick 32). CPU: fp32, official and
    reference only (the interpreter is too slow to time)."""
    impls, dtype, B, reps, warmup = plan("routing", device, dtype, quick, impls, IMPLS,
                                         ("official", "reference"), batch)
    rows: List[Dict[str, Any]] = []
    for hw, heads, dim, topk in configs(device, quick):
        rows += bench_case(B, hw, heads, dim, topk, dtype, device, impls, reps, warmup)
    return rows
