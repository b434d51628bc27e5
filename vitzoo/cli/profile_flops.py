"""FLOPs for the profiler: fvcore's count, torch's FlopCounterMode count, and the check between them.

fvcore counts one multiply-add as one (the unit of the official tables, "GMACs"); FlopCounterMode
counts two, so its total is halved. Both see the zoo's custom ops and SDPA through the formulas
that ``vitzoo.kernels`` registers (``fvcore_handles()`` and ``register_flop_formula``). The check
compares the two per kind of op: matrix products (linear, matmul, bmm and attention together,
since an SDPA that falls back to the math backend shows as ``bmm`` to torch), convolutions, and
each custom op by name. fvcore also counts norms, pooling and resizing, which FlopCounterMode
does not; those are reported, not compared.
"""
from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["count_flops", "count_flops_torch", "flop_breakdowns", "compare_flops", "FLOP_TOLERANCE"]

FLOP_TOLERANCE = 0.01  # the two counters must agree within 1% per kind of op

_MATMUL_FV = {"linear", "matmul", "bmm", "einsum", "addmm", "baddbmm", "mm",
              "scaled_dot_product_attention"}
_MATMUL_TORCH = {"mm", "addmm", "bmm", "baddbmm", "_scaled_mm"}
_CONV = {"conv", "_convolution", "convolution", "convolution_overrideable"}


def _zoo_fvcore_handles() -> dict:
    from vitzoo import kernels
    return dict(kernels.fvcore_handles())


def _fvcore_analysis(model: nn.Module, x: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import runs torch.jit.script (deprecated)
        from fvcore.nn import FlopCountAnalysis
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    analysis = FlopCountAnalysis(model, x).set_op_handle(**_zoo_fvcore_handles())
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def count_flops(model: nn.Module, x: torch.Tensor) -> Optional[int]:
    """fvcore multiply-adds for one forward of `x` (SDPA and zoo ops included); None if untraceable."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and TorchScript deprecation chatter
            return int(_fvcore_analysis(model, x).total())
    except Exception as e:  # tracing can fail on data-dependent control flow
        logging.getLogger(__name__).warning(f"fvcore could not count {type(model).__name__}: {e}")
        return None


def count_flops_torch(model: nn.Module, x: torch.Tensor) -> int:
    """torch.utils.flop_counter's FLOPs (one multiply-add = two FLOPs) for one forward of `x`."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def _custom_ops() -> set:
    """Names (without namespace) of the custom ops that have fvcore handles, e.g. 'na2d'."""
    return {k.split("::", 1)[1] for k in _zoo_fvcore_handles() if not k.startswith("aten::")}


def _kind(op: str, fvcore: bool) -> str:
    """The comparison bucket of an op name (fvcore: 'linear'; torch: 'aten.addmm', 'vitzoo.na2d')."""
    if not fvcore:
        namespace, _, op = op.partition(".")
        if namespace != "aten":
            return op  # a custom op: fvcore names it without its namespace
    elif op in _custom_ops():
        return op
    if op in (_MATMUL_FV if fvcore else _MATMUL_TORCH) or "attention" in op:
        return "matmul"
    if op in _CONV or op.startswith("conv"):
        return "conv"
    return op


def flop_breakdowns(model: nn.Module, x: torch.Tensor) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Multiply-adds per op from fvcore and from FlopCounterMode (halved), keyed by op name."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fv = {k: float(v) for k, v in _fvcore_analysis(model, x).by_operator().items()}
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    tf = {str(k): v / 2 for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return fv, tf


def compare_flops(fv_ops: Dict[str, float], torch_ops: Dict[str, float],
                  tolerance: float = FLOP_TOLERANCE) -> dict:
    """Compare the two breakdowns per kind of op.

    Returns ``matched_fvcore`` / ``matched_torch`` (multiply-adds of the compared kinds),
    ``fvcore_only`` (kinds torch does not count: norms, pooling, ...), and ``mismatches``: one
    line per kind whose counts differ by more than `tolerance`, naming its ops.
    """
    kinds_fv: Dict[str, float] = defaultdict(float)
    kinds_tf: Dict[str, float] = defaultdict(float)
    names: Dict[str, set] = defaultdict(set)
    for op, n in fv_ops.items():
        kinds_fv[_kind(op, True)] += n
        names[_kind(op, True)].add(op)
    for op, n in torch_ops.items():
        kinds_tf[_kind(op, False)] += n
        names[_kind(op, False)].add(op)
    compared = {"matmul", "conv"} | set(kinds_tf)
    mismatches: List[str] = []
    for kind in sorted(compared):
        a, b = kinds_fv.get(kind, 0.0), kinds_tf.get(kind, 0.0)
        if abs(a - b) > tolerance * max(a, b, 1.0):
            ops = ", ".join(sorted(names[kind]))
            mismatches.append(f"{kind} ({ops}): fvcore {a / 1e9:.4f} vs FlopCounterMode {b / 1e9:.4f} GMACs")
    fvcore_only = {k: v for k, v in kinds_fv.items() if k not in compared}
    return dict(matched_fvcore=sum(kinds_fv.get(k, 0.0) for k in compared),
                matched_torch=sum(kinds_tf.values()), fvcore_only=fvcore_only, mismatches=mismatches)
