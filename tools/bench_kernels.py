#!/usr/bin/env python
"""Time 2-D neighborhood attention (vitzoo.kernels.na2d) at NAT/DiNAT shapes.

Compares, side by side in one run: the vitzoo Triton kernels, the vitzoo PyTorch reference,
dense SDPA over the same tokens (all-to-all, i.e. what NA avoids), and FlexAttention with a
block mask implementing the same clamped/dilated neighbourhood (rpb added in score_mod), under
torch.compile. Forward and forward+backward, bf16 by default. Writes JSON + a markdown table to
benchmarks/results/.

    python tools/bench_kernels.py --device cuda            # full NAT-tiny sweep, batch 128
    python tools/bench_kernels.py --device cuda --quick    # batch 64, fewer reps
    python tools/bench_kernels.py --allow-cpu --quick      # no GPU: tiny reference/SDPA sanity run
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vitzoo.kernels import na2d  # noqa: E402

# NAT-tiny: embed 64, heads (2, 4, 8, 16), head_dim 32, kernel 7, maps at 224px input.
NAT_STAGES = [(56, 2), (28, 4), (14, 8), (7, 16)]
DILATIONS = [1, 2, 4, 8]
KERNEL = 7
HEAD_DIM = 32


def _time_ms(fn: Callable[[], object], device: str, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _with_env(mode: str, fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        old = os.environ.get("VITZOO_KERNELS")
        os.environ["VITZOO_KERNELS"] = mode
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop("VITZOO_KERNELS", None)
            else:
                os.environ["VITZOO_KERNELS"] = old
    return run


def _neighbourhood_mods(H: int, W: int, k: int, dil: int, rpb: torch.Tensor):
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


def bench_config(B: int, hw: int, heads: int, dil: int, dtype: torch.dtype, device: str,
                 backends: List[str], reps: int, warmup: int) -> Dict[str, object]:
    C = heads * HEAD_DIM
    N = hw * hw
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(B, hw, hw, heads, HEAD_DIM, generator=gen).to(device, dtype)
               .requires_grad_() for _ in range(3))
    rpb = torch.randn(heads, 2 * KERNEL - 1, 2 * KERNEL - 1, generator=gen).to(device)
    rpb.requires_grad_()
    grad = torch.randn_like(q)
    row: Dict[str, object] = dict(batch=B, map=hw, heads=heads, channels=C, head_dim=HEAD_DIM,
                                  kernel=KERNEL, dilation=dil,
                                  dtype=str(dtype).replace("torch.", ""))

    def na_call():
        return na2d(q, k, v, KERNEL, dil, rpb=rpb)

    fns: Dict[str, Callable[[], torch.Tensor]] = {}
    if "reference" in backends:
        fns["reference"] = _with_env("reference", na_call)
    if "triton" in backends:
        fns["triton"] = _with_env("triton", na_call)
    if "sdpa" in backends:
        def sdpa():
            qh, kh, vh = (x.reshape(B, N, heads, HEAD_DIM).transpose(1, 2) for x in (q, k, v))
            return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2)
        fns["sdpa"] = sdpa
    if "flex" in backends:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        mask_mod, score_mod = _neighbourhood_mods(hw, hw, KERNEL, dil, rpb)
        block_mask = create_block_mask(mask_mod, None, None, N, N, device=device)
        flex = torch.compile(flex_attention, dynamic=False)

        def flex_call():
            qh, kh, vh = (x.reshape(B, N, heads, HEAD_DIM).transpose(1, 2) for x in (q, k, v))
            out = flex(qh, kh, vh, score_mod=score_mod, block_mask=block_mask,
                       scale=HEAD_DIM ** -0.5)
            return out.transpose(1, 2)
        fns["flex"] = flex_call

    for name, fn in fns.items():
        try:
            with torch.no_grad():
                row[f"{name}_fwd_ms"] = round(_time_ms(fn, device, reps, warmup), 4)

            def fwd_bwd(fn=fn):
                out = fn()
                out.backward(grad.reshape(out.shape))
            row[f"{name}_fwdbwd_ms"] = round(_time_ms(fwd_bwd, device, reps, warmup), 4)
        except Exception as exc:  # noqa: BLE001 - a failing backend is reported, not fatal
            row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        for t in (q, k, v, rpb):
            t.grad = None
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def _markdown(meta: Dict[str, object], rows: List[Dict[str, object]], backends: List[str]) -> str:
    lines = [f"# NA2D kernel benchmark ({meta['device_name']})", "",
             f"- date: {meta['date']}", f"- torch {meta['torch']}, triton {meta['triton']}, "
             f"python {meta['python']}", f"- command: `{meta['command']}`",
             "- times are medians in ms; SDPA is dense all-to-all attention on the same tokens; "
             "flex = FlexAttention with the neighbourhood block mask + rpb score_mod "
             "(torch.compile); SDPA/flex include the heads-last <-> heads-first transposes.", ""]
    head = ["map", "heads", "C", "dil", "batch"]
    for b in backends:
        head += [f"{b} fwd", f"{b} fwd+bwd"]
    if "triton" in backends and "flex" in backends:
        head += ["flex/triton fwd", "flex/triton fwd+bwd"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[x]) for x in ("map", "heads", "channels", "dilation", "batch")]
        for b in backends:
            for kind in ("fwd", "fwdbwd"):
                val = r.get(f"{b}_{kind}_ms")
                cells.append(f"{val:.3f}" if isinstance(val, float) else "err")
        if "triton" in backends and "flex" in backends:
            for kind in ("fwd", "fwdbwd"):
                a, t = r.get(f"flex_{kind}_ms"), r.get(f"triton_{kind}_ms")
                cells.append(f"{a / t:.2f}x" if isinstance(a, float) and isinstance(t, float)
                             and t > 0 else "-")
        lines.append("| " + " | ".join(cells) + " |")
    errors = [f"- map {r['map']} dil {r['dilation']}: {k}: {v}" for r in rows for k, v in r.items()
              if k.endswith("_error")]
    if errors:
        lines += ["", "Errors:"] + errors
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="smaller batch, fewer reps")
    p.add_argument("--allow-cpu", action="store_true",
                   help="without a GPU, run a tiny reference/SDPA sanity timing on CPU")
    p.add_argument("--batch", type=int, default=None, help="batch (default 128, quick 64)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--backends", default="triton,reference,sdpa,flex")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    device = args.device
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    stages = NAT_STAGES
    if device == "cuda" and not torch.cuda.is_available():
        if not args.allow_cpu:
            print("bench_kernels: no GPU available (torch.cuda.is_available() is False); "
                  "nothing to time. Use --allow-cpu for a tiny CPU sanity run.")
            return 0
        device = "cpu"
    if device == "cpu":
        # CPU sanity mode: tiny shapes, fp32, the backends that run here without a compiler.
        backends = [b for b in backends if b in ("reference", "sdpa")]
        dtype, batch = torch.float32, args.batch or 2
        stages = [(14, 2), (7, 4)] if args.quick else [(28, 2), (14, 4), (7, 8)]
        reps, warmup = (2, 1) if args.quick else (5, 2)
    else:
        dtype = getattr(torch, args.dtype)
        batch = args.batch or (64 if args.quick else 128)
        reps, warmup = (10, 3) if args.quick else (30, 5)

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    meta = dict(device=device,
                device_name=torch.cuda.get_device_name() if device == "cuda"
                else (platform.processor() or platform.machine()) + " (CPU)",
                date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, triton=triton_version, python=platform.python_version(),
                command=" ".join([Path(sys.argv[0]).name] + (argv if argv is not None
                                                             else sys.argv[1:])),
                backends=backends, kernel=KERNEL, head_dim=HEAD_DIM)
    rows = []
    for hw, heads in stages:
        for dil in DILATIONS:
            if KERNEL * dil > hw:
                continue
            if args.quick and dil not in (1, 2) and device == "cpu":
                continue
            row = bench_config(batch, hw, heads, dil, dtype, device, backends, reps, warmup)
            print(json.dumps(row), flush=True)
            rows.append(row)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    stem = f"na2d_{device}_{stamp}"
    (out_dir / f"{stem}.json").write_text(json.dumps(dict(meta, rows=rows), indent=2))
    (out_dir / f"{stem}.md").write_text(_markdown(meta, rows, backends))
    print(f"wrote {out_dir / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
