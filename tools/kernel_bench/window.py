"""Swin shifted-window attention (``vitzoo.kernels.window_attention``) at Swin-T shapes.

Mixer level (x ``[B, H, W, C]`` in, mixer output out: qkv, attention, proj, and every roll /
partition / merge each path does), impls side by side in one run:

* ``triton``: the zoo's ``ShiftedWindowAttention`` on the fused op (pad, qkv, one kernel, proj);
* ``reference``: the same module on its PyTorch path (timm's order, SDPA);
* ``timm``: timm 1.0.31's ``SwinTransformerBlock._attn`` with the same weights, eager attention
  (``fused_attn=False``, timm's default for Swin) and ``timm_fused`` with ``fused_attn=True``
  (what ``TIMM_FUSED_ATTN`` enables: SDPA with the bias + mask materialised per window).

The triton row carries ``speedup`` (vs ``timm``, ``ratio_vs="timm"``), ``speedup_vs_timm_fused``
and ``max_abs_diff`` from timm's output (a guard that the timings compare the same math).

Model level (``swin_tiny``): one training step (bf16 autocast forward, backward, SGD step) of
``vitzoo_swin_tiny_patch4_window7_224`` vs timm's ``swin_tiny_patch4_window7_224`` on the same
weights; rows carry ``images_per_s`` and the vitzoo row ``speedup``/``mem_ratio`` vs timm.
Eager always; ``torch.compile``d too unless ``quick``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from ._timing import check_impls, measure, speedup, with_kernels

OP = "window"

# Swin-T at 224: (map side, heads, shift); head_dim 32, window 7 (the 7x7 stage is unshifted).
SWIN_T_STAGES = [(56, 3, 0), (56, 3, 3), (28, 6, 3), (14, 12, 3), (7, 24, 0)]
QUICK_STAGES = [(56, 3, 3), (14, 12, 3)]
WINDOW, HEAD_DIM = 7, 32
IMPLS = ("triton", "reference", "timm", "timm_fused")
MODEL, TIMM_MODEL = "vitzoo_swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224"



def paired_mixers(hw: int, heads: int, shift: int, device: str, dtype: torch.dtype):
    """(zoo ``ShiftedWindowAttention``, timm ``SwinTransformerBlock``) with the same weights.

    timm's block is only used through ``_attn`` (roll, pad, partition, WindowAttention, merge,
    roll back); its norms and MLP are not timed.
    """
    from timm.models.swin_transformer import SwinTransformerBlock

    from vitzoo.layers.window_attention import ShiftedWindowAttention

    dim = heads * HEAD_DIM
    torch.manual_seed(0)
    zoo = ShiftedWindowAttention(dim, heads, WINDOW, shift)
    blk = SwinTransformerBlock(dim, (hw, hw), num_heads=heads, window_size=WINDOW, shift_size=shift)
    with torch.no_grad():
        zoo.relative_position_bias_table.normal_(std=0.5)
    missing = blk.attn.load_state_dict(zoo.state_dict(), strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise RuntimeError(f"window bench: timm/zoo attention keys differ: {missing}")
    return zoo.to(device, dtype), blk.to(device, dtype)


def bench_case(B: int, hw: int, heads: int, shift: int, dtype: torch.dtype, device: str,
               impls: Sequence[str], reps: int, warmup: int) -> List[Dict[str, Any]]:
    """One row per impl for one Swin layer shape (fwd and fwd+bwd of the mixer)."""
    zoo, blk = paired_mixers(hw, heads, shift, device, dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(B, hw, hw, heads * HEAD_DIM, generator=gen).to(device, dtype).requires_grad_()
    grad = torch.randn_like(x)
    fields = dict(batch=B, map=hw, heads=heads, head_dim=HEAD_DIM, window=WINDOW, shift=shift,
                  dtype=str(dtype).replace("torch.", ""))
    case = f"map {hw} heads {heads} shift {shift} batch {B}"

    def timm_call(fused: bool) -> Callable[[], torch.Tensor]:
        def call():
            blk.attn.fused_attn = fused
            return blk._attn(x)
        return call

    fns: Dict[str, Callable[[], torch.Tensor]] = {}
    if "triton" in impls:
        fns["triton"] = with_kernels("triton", lambda: zoo(x))
    if "reference" in impls:
        fns["reference"] = with_kernels("reference", lambda: zoo(x))
    if "timm" in impls:
        fns["timm"] = timm_call(False)
    if "timm_fused" in impls:
        fns["timm_fused"] = timm_call(True)

    rows: Dict[str, Dict[str, Any]] = {}
    outs: Dict[str, torch.Tensor] = {}
    for impl, fn in fns.items():
        row: Dict[str, Any] = dict(op=OP, case=case, impl=impl, **fields)

        def fwd_bwd(fn=fn):
            fn().backward(grad)
        try:
            with torch.no_grad():
                outs[impl] = fn().float()
            row.update(measure(fn, fwd_bwd, device, reps, warmup))
        except Exception as exc:  # noqa: BLE001 - a failing impl is reported, not fatal
            row.update(fwd_ms=None, fwd_bwd_ms=None, peak_mem_mb=None,
                       error=f"{type(exc).__name__}: {str(exc)[:200]}")
        x.grad = None
        zoo.zero_grad(set_to_none=True)
        blk.zero_grad(set_to_none=True)
        rows[impl] = row
    _add_ratios(rows, outs, ("timm", "timm_fused", "reference"))
    if device == "cuda":
        torch.cuda.empty_cache()
    return list(rows.values())


def _add_ratios(rows: Dict[str, Dict[str, Any]], outs: Dict[str, torch.Tensor],
                bases: Sequence[str]) -> None:
    """Speedups of the ``triton`` row against each base present (first one is ``ratio_vs``)."""
    tri = rows.get("triton")
    if tri is None:
        return
    first = True
    for base in bases:
        if base not in rows:
            continue
        up = speedup(rows[base]["fwd_bwd_ms"], tri["fwd_bwd_ms"])
        up_fwd = speedup(rows[base]["fwd_ms"], tri["fwd_ms"])
        if first:
            tri.update(ratio_vs=base, speedup=up, speedup_fwd=up_fwd)
            if "triton" in outs and base in outs:
                tri["max_abs_diff"] = float((outs["triton"] - outs[base]).abs().max())
            first = False
        tri[f"speedup_vs_{base}"] = up
        tri[f"speedup_fwd_vs_{base}"] = up_fwd


def _train_step_fn(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                   device: str) -> Callable[[], torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        with amp:
            loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def bench_model(B: int, device: str, compiled: Sequence[bool], reps: int,
                warmup: int, img_size: int = 224, **model_kwargs: Any) -> List[Dict[str, Any]]:
    """swin_tiny training-step rows: vitzoo (fused op on CUDA) vs timm, same weights."""
    import timm

    import vitzoo  # noqa: F401  (registers the zoo models)
    from vitzoo.models.swin import checkpoint_filter_fn

    from ._timing import peak_mem_mb, time_ms

    torch.manual_seed(0)
    ref = timm.create_model(TIMM_MODEL, img_size=img_size, **model_kwargs)
    zoo = timm.create_model(MODEL, img_size=img_size, **model_kwargs)
    zoo.load_state_dict(checkpoint_filter_fn(ref.state_dict(), zoo))
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(B, 3, img_size, img_size, generator=gen).to(device)
    target = torch.randint(0, ref.num_classes, (B,), generator=gen).to(device)
    rows = []
    for comp in compiled:
        pair = {}
        for impl, model in (("vitzoo", zoo), ("timm", ref)):
            name = impl + ("_compiled" if comp else "")
            row: Dict[str, Any] = dict(op=OP, case=f"swin_tiny train step {img_size}px batch {B}",
                                       impl=name, batch=B, img_size=img_size, fwd_ms=None)
            try:
                m = model.to(device).train()
                run = torch.compile(m) if comp else m
                step = _train_step_fn(run, x, target, device)
                ms = time_ms(step, device, reps, warmup + (2 if comp else 0))
                row.update(fwd_bwd_ms=round(ms, 3), peak_mem_mb=peak_mem_mb(step, device),
                           images_per_s=round(B / ms * 1e3, 1))
            except Exception as exc:  # noqa: BLE001
                row.update(fwd_bwd_ms=None, peak_mem_mb=None,
                           error=f"{type(exc).__name__}: {str(exc)[:200]}")
            pair[impl] = row
            rows.append(row)
        z, t = pair["vitzoo"], pair["timm"]
        z.update(ratio_vs=t["impl"], speedup=speedup(t["fwd_bwd_ms"], z["fwd_bwd_ms"]))
        if z.get("peak_mem_mb") and t.get("peak_mem_mb"):
            z["mem_ratio"] = round(z["peak_mem_mb"] / t["peak_mem_mb"], 3)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def run(device: str, dtype: torch.dtype, quick: bool, impls: Optional[Sequence[str]] = None,
        batch: Optional[int] = None) -> List[Dict[str, Any]]:
    """All window rows. CPU: tiny fp32 plumbing run (reference and timm paths; no kernels)."""
    impls = check_impls("window", impls, IMPLS)
    if device == "cpu":
        impls = [i for i in impls if i != "triton"]
        rows = []
        for hw, heads, shift in [(14, 2, 3)]:
            rows += bench_case(batch or 2, hw, heads, shift, torch.float32, "cpu", impls, 2, 1)
        rows += bench_model(batch or 2, "cpu", [False], 1, 1, img_size=64, embed_dim=16,
                            depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
        return rows
    B = batch or (32 if quick else 128)
    reps, warmup = (10, 3) if quick else (30, 5)
    rows = []
    for hw, heads, shift in (QUICK_STAGES if quick else SWIN_T_STAGES):
        rows += bench_case(B, hw, heads, shift, dtype, device, impls, reps, warmup)
    rows += bench_model(B, device, [False] if quick else [False, True], 5 if quick else 20,
                        3 if quick else 5)
    return rows
