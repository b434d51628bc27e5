"""Timing helpers shared by the op modules (CUDA events on a GPU, perf_counter on CPU)."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch


def time_ms(fn: Callable[[], object], device: str, reps: int, warmup: int) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_mem_mb(fn: Callable[[], object], device: str) -> Optional[float]:
    """Peak CUDA memory allocated (MiB) during one ``fn()``, inputs included; None off CUDA."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)


def measure(fwd: Callable[[], object], fwd_bwd: Callable[[], object], device: str, reps: int,
            warmup: int) -> Dict[str, Any]:
    """``fwd_ms`` (under no_grad), ``fwd_bwd_ms`` and ``peak_mem_mb`` (of fwd+bwd) of one impl."""
    with torch.no_grad():
        fwd_ms = time_ms(fwd, device, reps, warmup)
    fwd_bwd_ms = time_ms(fwd_bwd, device, reps, warmup)
    return dict(fwd_ms=round(fwd_ms, 4), fwd_bwd_ms=round(fwd_bwd_ms, 4),
                peak_mem_mb=peak_mem_mb(fwd_bwd, device))


def speedup(baseline_ms: Optional[float], ms: Optional[float]) -> Optional[float]:
    """``baseline_ms / ms`` rounded (> 1: faster than the baseline), None if either is missing."""
    if isinstance(baseline_ms, (int, float)) and isinstance(ms, (int, float)) and ms > 0:
        return round(baseline_ms / ms, 3)
    return None


def with_kernels(mode: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with ``VITZOO_KERNELS=mode`` (the ops read it at every call), restored after."""
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


def check_impls(op: str, impls: Optional[Sequence[str]], known: Sequence[str]) -> List[str]:
    """The requested implementations (all ``known`` by default); ValueError naming unknown ones."""
    impls = list(impls or known)
    unknown = [i for i in impls if i not in known]
    if unknown:
        raise ValueError(f"{op}: unknown impls {unknown}; choose from {list(known)}")
    return impls


def plan(op: str, device: str, dtype: torch.dtype, quick: bool, impls: Optional[Sequence[str]],
         known: Sequence[str], cpu_impls: Sequence[str],
         batch: Optional[int]) -> Tuple[List[str], torch.dtype, int, int, int]:
    """(impls, dtype, batch, reps, warmup) of an op benchmark. CPU is a plumbing run: fp32, batch 2,
    only ``cpu_impls`` (no compiler; the interpreter is too slow to time). GPU: batch 128 (quick 32)."""
    impls = check_impls(op, impls, known)
    if device == "cpu":
        reps, warmup = (2, 1) if quick else (5, 2)
        return [i for i in impls if i in cpu_impls], torch.float32, batch or 2, reps, warmup
    reps, warmup = (10, 3) if quick else (30, 5)
    return impls, dtype, batch or (32 if quick else 128), reps, warmup
