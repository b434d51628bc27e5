"""Timings and peak memory for the profiler: eval forwards, training steps, interleaved pairs.

Every timing is warm-up runs, then `repeats` timed runs, summarised as median, min and max (and
the IQR). Peak memory is CUDA's ``max_memory_allocated`` on a GPU; on CPU it is the growth of the
process's resident set (RSS) over the run, sampled from ``/proc/self/statm`` every millisecond
(``ru_maxrss`` where /proc is missing), so it is labelled as such.
"""
from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["summarize", "time_runner", "make_runner", "make_train_step", "interleaved",
           "peak_memory_mb", "memory_kind"]


def summarize(times: Sequence[float]) -> Dict[str, float]:
    """Median, min, max and inter-quartile range of `times` (seconds)."""
    times = sorted(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return dict(median=statistics.median(times), min=times[0], max=times[-1], iqr=q[2] - q[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    return (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext


def make_runner(model: nn.Module, x: torch.Tensor,
                amp_dtype: Optional[torch.dtype] = None) -> Callable[[], float]:
    """A function that runs one eval forward of `x` (no_grad) and returns its wall time in seconds."""
    ctx = _autocast(x.device, amp_dtype)

    def run() -> float:
        _sync(x.device)
        t0 = time.perf_counter()
        with torch.no_grad(), ctx():
            model(x)
        _sync(x.device)
        return time.perf_counter() - t0
    return run


def make_train_step(model: nn.Module, x: torch.Tensor, num_classes: int,
                    amp_dtype: Optional[torch.dtype] = None) -> Callable[[], float]:
    """A function that runs one training step (forward, cross-entropy, backward, AdamW step;
    a features_only model's list of maps: the sum of their means as the loss).

    The model is put in train mode; under fp16 autocast the loss is scaled (``GradScaler``).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    target = torch.randint(0, max(num_classes, 1), (x.shape[0],), device=x.device)
    ctx = _autocast(x.device, amp_dtype)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp_dtype == torch.float16)

    def step() -> float:
        _sync(x.device)
        t0 = time.perf_counter()
        with ctx():
            out = model(x)
            if isinstance(out, list):  # a features_only backbone: every map gets a gradient
                loss = sum(o.float().mean() for o in out)
            else:
                out = out[0] if isinstance(out, tuple) else out  # a distilled head's (cls, dist) pair
                loss = F.cross_entropy(out.float(), target) if out.dim() == 2 else out.float().mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        _sync(x.device)
        return time.perf_counter() - t0
    return step


def time_runner(run: Callable[[], float], warmup: int = 3, repeats: int = 10) -> List[float]:
    """`warmup` untimed runs, then `repeats` timed ones (seconds)."""
    for _ in range(warmup):
        run()
    return [run() for _ in range(repeats)]


def interleaved(run_a: Callable[[], float], run_b: Callable[[], float], warmup: int,
                repeats: int) -> tuple[List[float], List[float]]:
    """Time two runners alternately (a-b, b-a, ...) so drift in machine load hits both."""
    for _ in range(warmup):
        run_a(), run_b()
    t_a: List[float] = []
    t_b: List[float] = []
    for r in range(repeats):
        if r % 2:
            t_b.append(run_b()), t_a.append(run_a())
        else:
            t_a.append(run_a()), t_b.append(run_b())
    return t_a, t_b


def memory_kind(device: torch.device) -> str:
    return ("cuda max_memory_allocated" if device.type == "cuda"
            else "cpu peak RSS growth (sampled)" if os.path.exists("/proc/self/statm")
            else "cpu ru_maxrss growth")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(run: Callable[[], float], device: torch.device) -> float:
    """Peak memory (MiB) that one call of `run` adds: see the module docstring for what it means."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        return torch.cuda.max_memory_allocated(device) / 2 ** 20  # weights included
    if not os.path.exists("/proc/self/statm"):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(0.001)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    return (peak[0] - base) / 2 ** 20
