"""2-D neighborhood attention (``vitzoo.kernels.na2d``) at NAT/DiNAT shapes.

Impls side by side in one run: ``triton`` (the vitzoo kernels), ``reference`` (the vitzoo
PyTorch path), ``sdpa`` (dense all-to-all attention over the same tokens: what NA avoids) and
``flex`` (FlexAttention, torch.compile'd, with a block mask of the same clamped/dilated
neighbourhood and the rpb added in score_mod). The triton row carries ``ratio_vs="flex"`` and
``speedup`` = flex fwd+bwd ms / triton fwd+bwd ms, plus ``speedup_vs_reference``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ._timing import measure, plan, speedup, with_kernels

OP = "neighborhood"

# NAT-tiny: heads (2, 4, 8, 16), head_dim 32, kernel 7; maps at 224px input; DiNAT dilations.
NAT_STAGES = [(56, 2), (28, 4), (14, 8), (7, 16)]
DILATIONS = [1, 2, 4, 8]
QUICK_CONFIGS = [(56, 2, 1), (28, 4, 2), (14, 8, 2), (7, 16, 1)]  # one per NAT-tiny stage
KERNEL = 7
HEAD_DIM = 32
IMPLS = ("triton", "reference", "sdpa", "flex")


def neighbourhood_mods(H: int, W: int, k: int, dil: int, rpb: Optional[torch.Tensor]):
    """mask_mod / score_mod for FlexAttention with the NATTEN 0.17 clamped, dilated windows."""
    r = k // 2

    def axis(i, L):
        g = i % dil
        c = i // dil
        n = (L - g + dil - 1) // dil
        s = torch.clamp(torch.clamp(c - r, min=0), max=n - k)
        return g, c, s

    def mask_mod(b, h, q_idx, kv_idx):
        qi, qj, ki, kj = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        gi, _, si = axis(qi, H)
        gj, _, sj = axis(qj, W)
        in_i = (ki % dil == gi) & (ki // dil >= si) & (ki // dil < si + k)
        in_j = (kj % dil == gj) & (kj // dil >= sj) & (kj // dil < sj + k)
        return in_i & in_j

    def score_mod(score, b, h, q_idx, kv_idx):
        qi, qj, ki, kj = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        bi = torch.clamp(ki // dil - qi // dil + k - 1, 0, 2 * k - 2)
        bj = torch.clamp(kj // dil - qj // dil + k - 1, 0, 2 * k - 2)
        return score + rpb[h, bi, bj]

    return mask_mod, score_mod



def configs(device: str, quick: bool) -> List[tuple]:
    """(map side, heads, dilation) to time: every valid NAT-tiny/DiNAT case, a subset if quick,
    tiny maps on CPU (plumbing only)."""
    if device == "cpu":
        stages = [(14, 2), (7, 4)] if quick else [(28, 2), (14, 4), (7, 8)]
        return [(hw, h, d) for hw, h in stages for d in (1, 2) if KERNEL * d <= hw]
    if quick:
        return list(QUICK_CONFIGS)
    return [(hw, h, d) for hw, h in NAT_STAGES for d in DILATIONS if KERNEL * d <= hw]


def bench_case(B: int, hw: int, heads: int, dil: int, dtype: torch.dtype, device: str,
               impls: Sequence[str], reps: int, warmup: int) -> List[Dict[str, Any]]:
    """One row per impl for one NA layer shape (q, k, v, rpb random; fwd and fwd+bwd)."""
    from vitzoo.kernels import na2d

    N = hw * hw
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, hw, hw, heads, HEAD_DIM, generator=gen).to(device, dtype)
               .requires_grad_() for _ in range(3))
    rpb = torch.randn(heads, 2 * KERNEL - 1, 2 * KERNEL - 1, generator=gen).to(device)
    rpb.requires_grad_()
    grad = torch.randn_like(q)
    fields = dict(batch=B, map=hw, heads=heads, head_dim=HEAD_DIM, kernel=KERNEL, dilation=dil,
                  dtype=str(dtype).replace("torch.", ""))
    case = f"map {hw} heads {heads} dil {dil} batch {B}"

    def heads_first(x):
        return x.reshape(B, N, heads, HEAD_DIM).transpose(1, 2)

    def na_call():
        return na2d(q, k, v, KERNEL, dil, rpb=rpb)

    fns: Dict[str, Callable[[], torch.Tensor]] = {}
    if "triton" in impls:
        fns["triton"] = with_kernels("triton", na_call)
    if "reference" in impls:
        fns["reference"] = with_kernels("reference", na_call)
    if "sdpa" in impls:
        fns["sdpa"] = lambda: F.scaled_dot_product_attention(
            heads_first(q), heads_first(k), heads_first(v)).transpose(1, 2)
    if "flex" in impls:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        mask_mod, score_mod = neighbourhood_mods(hw, hw, KERNEL, dil, rpb)
        block_mask = create_block_mask(mask_mod, None, None, N, N, device=device)
        flex = torch.compile(flex_attention, dynamic=False)
        fns["flex"] = lambda: flex(heads_first(q), heads_first(k), heads_first(v),
                                   score_mod=score_mod, block_mask=block_mask,
                                   scale=HEAD_DIM ** -0.5).transpose(1, 2)

    rows: Dict[str, Dict[str, Any]] = {}
    for impl, fn in fns.items():
        row: Dict[str, Any] = dict(op=OP, case=case, impl=impl, **fields)

        def fwd_bwd(fn=fn):
            out = fn()
            out.backward(grad.reshape(out.shape))
        try:
            row.update(measure(fn, fwd_bwd, device, reps, warmup))
        except Exception as exc:  # noqa: BLE001 - a failing impl is reported, not fatal
            row.update(fwd_ms=None, fwd_bwd_ms=None, peak_mem_mb=None,
                       error=f"{type(exc).__name__}: {str(exc)[:200]}")
        for t in (q, k, v, rpb):
            t.grad = None
        rows[impl] = row
    tri = rows.get("triton")
    if tri is not None:
        for base in ("flex", "reference"):
            if base in rows:
                up = speedup(rows[base]["fwd_bwd_ms"], tri["fwd_bwd_ms"])
                up_fwd = speedup(rows[base]["fwd_ms"], tri["fwd_ms"])
                if base == "flex":
                    tri.update(ratio_vs="flex", speedup=up, speedup_fwd=up_fwd)
                else:
                    tri.update(speedup_vs_reference=up, speedup_fwd_vs_reference=up_fwd)
    if device == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())


def run(device: str, dtype: torch.dtype, quick: bool, impls: Optional[Sequence[str]] = None,
        batch: Optional[int] = None) -> List[Dict[str, Any]]:
    """All NA rows. CPU: fp32, reference and sdpa only (no compiler, interpreter too slow)."""
    impls, dtype, B, reps, warmup = plan("neighborhood", device, dtype, quick, impls, IMPLS,
                                         ("reference", "sdpa"), batch)
    rows: List[Dict[str, Any]] = []
    for hw, heads, dil in configs(device, quick):
        rows += bench_case(B, hw, heads, dil, dtype, device, impls, reps, warmup)
    return rows
