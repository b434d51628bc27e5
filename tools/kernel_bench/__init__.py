"""Per-op kernel benchmarks, discovered by ``tools/bench_kernels.py --ops``.

Contract: one module per op in this folder (``neighborhood.py``, ``window.py``, ``routing.py``,
...), each defining

    OP = "<name>"
    def run(device: str, dtype: torch.dtype, quick: bool) -> list[dict]

returning rows with at least ``op, case, impl, fwd_ms, fwd_bwd_ms, peak_mem_mb`` (None where not
measured), optionally ``ratio_vs`` (the impl a speedup is measured against) and ``speedup``
(its fwd+bwd ms / this row's), plus any fields of the case. A row may carry ``error`` instead
of timings. Modules whose names start with ``_`` are helpers (``_timing``), not ops.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional

REQUIRED_KEYS = ("op", "case", "impl", "fwd_ms", "fwd_bwd_ms", "peak_mem_mb")
_HERE = Path(__file__).resolve().parent


def available_ops() -> List[str]:
    """Names of the op modules present in this folder, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules([str(_HERE)]) if not m.name.startswith("_"))


def load(name: str) -> Optional[ModuleType]:
    """The op module ``name``, or None when no such file exists (another helper's op not yet
    written). Import errors inside an existing module propagate: those are bugs to report."""
    if name.startswith("_") or not (_HERE / f"{name}.py").is_file():
        return None
    module = importlib.import_module(f"{__name__}.{name}")
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"tools/kernel_bench/{name}.py defines no run(device, dtype, quick)")
    return module


def select(spec: str) -> List[str]:
    """``"all"`` -> every present op; else the comma list as given (missing ones kept, so the
    caller can say it skipped them)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names or names == ["all"]:
        return available_ops()
    return names


def call_run(module: ModuleType, device: str, dtype: Any, quick: bool,
             **options: Any) -> List[Dict[str, Any]]:
    """``module.run(device, dtype, quick)``, passing only the extra ``options`` (not None) that
    its signature accepts, then :func:`normalise` on the rows."""
    params = inspect.signature(module.run).parameters
    extra = {k: v for k, v in options.items() if v is not None and k in params}
    rows = module.run(device, dtype, quick, **extra)
    op = getattr(module, "OP", None) or getattr(module, "__name__", "?").rsplit(".", 1)[-1]
    return normalise(rows, op)


def normalise(rows: Any, op: str) -> List[Dict[str, Any]]:
    """Check the rows are dicts; fill ``op`` and every missing required key (None)."""
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"kernel_bench.{op}.run must return a list of dicts, got {type(rows)}")
    out = []
    for r in rows:
        r = dict(r)
        r.setdefault("op", op)
        for key in REQUIRED_KEYS:
            r.setdefault(key, None)
        out.append(r)
    return out


def error_row(op: str, exc: BaseException) -> Dict[str, Any]:
    """The row that stands for an op whose run() raised."""
    return dict(op=op, case="-", impl="-", fwd_ms=None, fwd_bwd_ms=None, peak_mem_mb=None,
                error=f"{type(exc).__name__}: {str(exc)[:300]}")
