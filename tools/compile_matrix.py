#!/usr/bin/env python
"""Compile matrix (``make compile-matrix``): every registered model's Triton launches, compiled for
every GPU target and dtype, checked for spills, shared memory and tensor cores. No GPU needed.

    python tools/compile_matrix.py                          # full matrix -> benchmarks/results/
    python tools/compile_matrix.py --models vitzoo_nat_mini,vitzoo_swin_tiny_patch4_window7_224 \\
        --targets 80,89 --dtypes bf16,fp32-high --out-dir /tmp/cm

1. Record (``tests/model_launches.py``): each model runs forward + backward at batch 1 at its
   default resolution on fake tensors; its ``vitzoo::*`` op calls are kept as shapes/strides/dtypes.
   fp32 is recorded as is, 16-bit under autocast (bf16; fp16 is the same run with the other
   16-bit type).
2. Per target (one worker process each, ``--jobs`` at a time): replay every distinct op call for
   each dtype column (``bf16``, ``fp16``, ``fp32-highest`` = IEEE dots, ``fp32-high`` = TF32) with
   ``VITZOO_KERNEL_TARGET`` set, so the launchers choose that target's tiles; bind each launch as
   Triton would; compile each distinct specialisation once (``tests/triton_aot.py``), and note
   which models use it.
3. Check every compiled kernel: it compiles, 0 spill bytes, shared memory within the target's
   per-block limit, and tensor-core instructions for bf16 / fp16 / TF32 (not for IEEE fp32 nor
   for the delta preprocess, which has no matmul). Write ``compile_matrix.md`` and ``.json``.

Compiled results are cached per specialisation (kernel source hash, binding, options, target,
Triton and ptxas versions) under ``--cache-dir`` (default ``$VITZOO_COMPILE_CACHE`` or
``<tmp>/vitzoo_compile_matrix``), so reruns only compile what changed. Exit status 1 when any
kernel fails a check.
"""
from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "tests", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

#: dtype column -> (tensor dtype, torch.set_float32_matmul_precision)
DTYPES: Dict[str, Tuple[str, str]] = {
    "bf16": ("bfloat16", "highest"), "fp16": ("float16", "highest"),
    "fp32-highest": ("float32", "highest"), "fp32-high": ("float32", "high")}
#: compute capabilities compiled for; 100 and 120 only where Triton's ptxas accepts them
TARGETS = (80, 89, 90, 86, 100, 120)   # in this order: the checks first
#: the default-test slice: one model per family that launches kernels
SLICE_MODELS = ("vitzoo_nat_mini", "vitzoo_dinat_mini", "vitzoo_swin_tiny_patch4_window7_224",
                "vitzoo_biformer_tiny")
SLICE_TARGETS = (80, 89)
MAX_REGISTERS = 255
OUT_DIR = ROOT / "benchmarks" / "results"


def default_cache_dir() -> Path:
    return Path(os.environ.get("VITZOO_COMPILE_CACHE")
                or Path(tempfile.gettempdir()) / "vitzoo_compile_matrix")


def _source_digest() -> str:
    """Hash of the code a recording depends on: models, layers, the ops' Python front ends
    (signatures, dispatch rules) and the recorder; not the Triton kernels nor their tiles."""
    h = hashlib.sha256()
    ops = [f for f in (ROOT / "kernels").glob("*.py")
           if "triton" not in f.name and f.name not in ("_launch_config.py", "_precision.py")]
    files = sorted([*(ROOT / "vitzoo" / "models").rglob("*.py"),
                    *(ROOT / "vitzoo" / "layers").rglob("*.py"), *ops,
                    ROOT / "vitzoo" / "__init__.py", ROOT / "tests" / "model_launches.py"])
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def kernels_digest() -> str:
    """Hash of kernels/*.py as this process sees them (which kernel code a table describes)."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "kernels").glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def kernels_revision() -> str:
    """``<commit>`` of the checkout, ``+ uncommitted kernels/ changes`` when kernels/ is dirty."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels"], cwd=ROOT,
                               text=True, capture_output=True).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + (" + uncommitted kernels/ changes" if dirty else "")


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the capture needs real JITFunctions
    for k in ("VITZOO_KERNELS", "VITZOO_KERNEL_TARGET", "VITZOO_FP32_PRECISION",
              "VITZOO_NA_FP32_PRECISION", "VITZOO_NA_TILE", "VITZOO_WINDOW_BLOCK"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# ----------------------------------------------------------------------------------------------
# 1. Record the models' op calls (in a child process: no Triton interpreter, fresh imports)
# ----------------------------------------------------------------------------------------------
def record_models(models: Sequence[str], cache_dir: Optional[Path]) -> Dict[str, Any]:
    """``{model: {"size", "float32": [calls], "bfloat16": [calls], "error"?, "seconds"}}``."""
    import model_launches as ml

    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"records-{_source_digest()}.json"
    known = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    out: Dict[str, Any] = {}
    for name in models:
        if name in known:
            out[name] = known[name]
            continue
        t0 = time.monotonic()
        entry: Dict[str, Any] = {"size": ml.model_input_size(name)}
        try:
            for dtype in ("float32", "bfloat16"):
                try:
                    entry[dtype] = ml.record_model_calls(name, entry["size"], dtype)
                except ValueError as exc:  # training-mode BatchNorm on one sample
                    if "more than 1 value per channel" not in str(exc):
                        raise
                    entry[dtype] = ml.record_model_calls(name, entry["size"], dtype, batch=2)
                    entry["batch"] = 2
        except Exception as exc:  # noqa: BLE001 - reported in the table, counted as a failure
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        entry["seconds"] = round(time.monotonic() - t0, 1)
        out[name] = known[name] = entry
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, cache)
    return out


# ----------------------------------------------------------------------------------------------
# 2. One target: replay, bind, dedupe, compile (a worker process per target)
# ----------------------------------------------------------------------------------------------
def _calls_for(entry: Dict[str, Any], dtype: str) -> List[Dict[str, Any]]:
    import model_launches as ml
    if dtype == "float32":
        return entry.get("float32", [])
    calls = entry.get("bfloat16", [])
    return calls if dtype == "bfloat16" else [ml.with_dtype(c, "bfloat16", dtype) for c in calls]


def _tc_kind(ops: Iterable[str]) -> str:
    kinds = []
    for prefix, label in (("tcgen05", "tcgen05.mma"), ("wgmma", "wgmma"), ("mma.sync", "mma.sync")):
        if any(op.startswith(prefix) for op in ops):
            kinds.append(label)
    return "+".join(kinds)


def needs_tensor_cores(kernel: str, dtype: str) -> bool:
    """bf16 / fp16 / TF32 dots must use tensor cores; IEEE fp32 and the delta preprocess
    (rowsum(dO * O), no matmul) need not."""
    return dtype != "fp32-highest" and not (kernel.endswith("_preprocess") or "delta" in kernel)


def check_row(row: Dict[str, Any]) -> List[str]:
    """Why a compiled kernel fails the matrix (empty when it passes)."""
    if row.get("error"):
        return ["compile error: " + row["error"]]
    bad = []
    if row["spills"]:
        bad.append(f"{row['spills']} B spilled")
    if row["smem"] > row["smem_limit"]:
        bad.append(f"smem {row['smem']} B > {row['smem_limit']} B")
    if row["regs"] > MAX_REGISTERS:
        bad.append(f"{row['regs']} registers")
    if needs_tensor_cores(row["kernel"], row["dtype"]) and not row["tc"]:
        bad.append("no tensor-core instruction")
    return bad


def run_target(records: Dict[str, Any], arch: int, dtypes: Sequence[str],
               cache_dir: Optional[Path], dry_run: bool = False,
               representative: bool = False, load: bool = False) -> Dict[str, Any]:
    """Every (dtype, distinct specialisation) row of one target (runs in the worker process).

    ``representative``: one specialisation per (kernel, dtype), the one most models use (the
    default-test slice), instead of all of them. ``load``: on a GPU of this target, also
    load each binary and keep the driver's numbers (no cache).
    """
    import model_launches as ml
    import triton_aot as aot

    t0 = time.monotonic()
    import vitzoo.kernels  # noqa: F401  (imported now: the digest is of the code in use)
    digest = kernels_digest()
    rows: List[Dict[str, Any]] = []
    reference: Dict[str, List[str]] = {}
    launching: set = set()
    for label in dtypes:
        dtype, prec = DTYPES[label]
        by_call: Dict[str, Tuple[Dict[str, Any], List[str]]] = {}
        for model, entry in records.items():
            for call in _calls_for(entry, dtype):
                by_call.setdefault(ml.call_key(call), (call, []))[1].append(model)
        specs: Dict[str, Dict[str, Any]] = {}
        for call, models in by_call.values():
            launches, why = ml.replay(call, arch, prec)
            if why is not None:
                reference.setdefault(f"{call['op']} ({dtype}): {why}", []).extend(models)
            if launches:
                launching.update(models)
            for launch in launches:
                prep = aot.prepare(launch, arch)
                spec = specs.setdefault(prep.key, {"prep": prep, "models": set(), "ops": set()})
                spec["models"].update(models)
                spec["ops"].add(call["op"])
        if representative:
            best: Dict[str, Tuple[str, Dict[str, Any]]] = {}
            for key, spec in specs.items():
                name = spec["prep"].launch.name
                if name not in best or len(spec["models"]) > len(best[name][1]["models"]):
                    best[name] = (key, spec)
            specs = dict(best.values())
        for key, spec in specs.items():
            if dry_run:
                rows.append({"kernel": spec["prep"].launch.name, "target": arch, "dtype": label,
                             "key": key, "models": sorted(spec["models"]), "failures": []})
                continue
            row = _compile_cached(spec["prep"], None if load else cache_dir, load)
            row.update(dtype=label, models=sorted(spec["models"]), ops=sorted(spec["ops"]))
            row["failures"] = check_row(row)
            rows.append(row)
    return {"arch": arch, "rows": rows, "seconds": round(time.monotonic() - t0, 1),
            "reference": {k: sorted(set(v)) for k, v in reference.items()},
            "launching": sorted(launching), "kernels_digest": digest}


def _compile_cached(prep, cache_dir: Optional[Path], load: bool = False) -> Dict[str, Any]:
    import triton_aot as aot

    path = cache_dir / "kernels" / f"{prep.key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        row = json.loads(path.read_text())
        row["cached"] = True
        return row
    meta = {k: (v if isinstance(v, (int, float, bool, str)) or v is None else repr(v))
            for k, v in prep.launch.constexprs().items()}
    row: Dict[str, Any] = {"kernel": prep.launch.name, "target": prep.arch, "key": prep.key,
                           "meta": meta, "smem_limit": aot.SMEM_LIMIT.get(prep.arch, 101376)}
    t0 = time.monotonic()
    try:
        rep = aot.compile_prepared(prep, load=load)
        row.update(regs=rep.registers, spills=rep.spill_bytes, local=rep.local_bytes,
                   smem=rep.shared, tc=rep.tensor_core_ops, error=None)
        if rep.device is not None:
            row["device"] = rep.device
    except Exception as exc:  # noqa: BLE001 - a failed compile is a row of the table
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        row.update(regs=0, spills=0, local=0, smem=0, tc=[],
                   error=f"{type(exc).__name__}: {(lines[0] if lines else '')[:300]}")
    row["seconds"] = round(time.monotonic() - t0, 2)
    if path is not None and row["error"] is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, path)
    row["cached"] = False
    return row


def _worker_main(args: argparse.Namespace) -> int:
    records = json.loads(Path(args.worker_in).read_text())
    cache = None if args.no_cache else Path(args.cache_dir)
    result = run_target(records, args.worker_arch, args.dtypes.split(","), cache, args.dry_run,
                        args.representative)
    Path(args.worker_out).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------------------------
# 3. The whole matrix
# ----------------------------------------------------------------------------------------------
def select_models(spec: str) -> List[str]:
    """Registered ``vitzoo_*`` models matching comma-separated names or globs."""
    import timm

    import vitzoo  # noqa: F401
    names = timm.list_models("vitzoo_*")
    picked = [n for n in names if any(fnmatch.fnmatch(n, p.strip()) for p in spec.split(","))]
    unknown = [p for p in spec.split(",") if not any(fnmatch.fnmatch(n, p.strip()) for n in names)]
    if unknown:
        raise SystemExit(f"compile_matrix: no registered model matches {', '.join(unknown)}")
    return picked


def target_status(targets: Sequence[int]) -> Dict[int, Dict[str, Any]]:
    """Per target: the ptxas Triton uses and whether it accepts the target."""
    import triton_aot as aot
    out = {}
    for arch in targets:
        try:
            path, version = aot.ptxas_for(arch)
        except Exception as exc:  # noqa: BLE001
            path, version = "", f"unknown ({exc})"
        out[arch] = {"ptxas": Path(path).name, "ptxas_version": version,
                     "refused": aot.target_accepted(arch)}
    return out


def run_matrix(models: Sequence[str], targets: Sequence[int], dtypes: Sequence[str],
               jobs: int = 2, cache_dir: Optional[Path] = None, dry_run: bool = False,
               representative: Any = False) -> Dict[str, Any]:
    """Record, then one worker process per target (``jobs`` at a time); the report's body.

    ``representative``: True for every target, or the targets that compile one specialisation
    per (kernel, dtype) instead of all of them."""
    t0 = time.monotonic()
    revision = kernels_revision()
    records = record_models(models, cache_dir)
    t_record = time.monotonic() - t0
    status = target_status(targets)
    archs = [a for a in targets if status[a]["refused"] is None]
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="compile_matrix_") as tmp:
        rec_path = Path(tmp) / "records.json"
        rec_path.write_text(json.dumps({m: e for m, e in records.items() if "error" not in e}))
        pending = list(archs)
        running: List[Tuple[int, subprocess.Popen, Path, Any]] = []
        while pending or running:
            while pending and len(running) < max(1, jobs):
                arch = pending.pop(0)
                out = Path(tmp) / f"rows_{arch}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-arch", str(arch),
                       "--worker-in", str(rec_path), "--worker-out", str(out),
                       "--dtypes", ",".join(dtypes)]
                cmd += ["--no-cache"] if cache_dir is None else ["--cache-dir", str(cache_dir)]
                cmd += ["--dry-run"] if dry_run else []
                rep = representative is True or arch in (representative or ())
                cmd += ["--representative"] if rep else []
                log = open(Path(tmp) / f"worker_{arch}.log", "w+")
                running.append((arch, subprocess.Popen(cmd, env=_child_env(), cwd=str(ROOT),
                                                       stderr=log, text=True), out, log))
            done = None
            while done is None:      # whichever worker ends first frees its slot
                done = next((r for r in running if r[1].poll() is not None), None)
                if done is None:
                    time.sleep(1.0)
            running.remove(done)
            arch, proc, out, log = done
            log.seek(0)
            err = log.read()
            log.close()
            if proc.returncode != 0 or not out.is_file():
                results.append({"arch": arch, "rows": [], "seconds": 0.0, "reference": {},
                                "error": (err or "")[-2000:]})
            else:
                results.append(json.loads(out.read_text()))
    rows = [r for res in sorted(results, key=lambda r: r["arch"]) for r in res["rows"]]
    reference: Dict[str, List[str]] = {}
    for res in results:
        for k, v in res.get("reference", {}).items():
            reference[k] = sorted(set(reference.get(k, [])) | set(v))
    launching = {m for res in results for m in res.get("launching", [])}
    return {
        "models": list(models), "targets": {str(a): status[a] for a in targets},
        "dtypes": list(dtypes), "rows": rows,
        "record_errors": {m: e["error"] for m, e in records.items() if "error" in e},
        "launching_models": sorted(launching),
        "no_launch_models": sorted(m for m in models if m not in launching
                                   and "error" not in records[m]),
        "representative": (list(archs) if representative is True
                           else sorted(int(a) for a in (representative or ()))),
        "kernels_revision": revision,
        "kernels_digests": {str(r["arch"]): r.get("kernels_digest") for r in results},
        "reference_calls": reference,
        "worker_errors": {str(r["arch"]): r["error"] for r in results if r.get("error")},
        "seconds": {"record": round(t_record, 1), "total": round(time.monotonic() - t0, 1),
                    **{f"sm_{r['arch']}": r["seconds"] for r in results}},
    }


def counts(result: Dict[str, Any]) -> Dict[str, Dict[str, int]]:
    """attempted / passed per target, and ``"all"``; record or worker errors count as failures."""
    out: Dict[str, Dict[str, int]] = {}
    for r in result["rows"]:
        for key in (f"sm_{r['target']}", "all"):
            c = out.setdefault(key, {"attempted": 0, "passed": 0})
            c["attempted"] += 1
            c["passed"] += not r["failures"]
    extra = len(result.get("record_errors", {})) + len(result.get("worker_errors", {}))
    if extra:
        c = out.setdefault("all", {"attempted": 0, "passed": 0})
        c["attempted"] += extra
    return out


# ----------------------------------------------------------------------------------------------
# On a GPU: this device's slice against the committed prediction (make gpu-check)
# ----------------------------------------------------------------------------------------------
def _match_id(row: Dict[str, Any]) -> str:
    return json.dumps([row["kernel"], row["dtype"], sorted(row["meta"].items())], default=str)


def compare_rows(predicted: Sequence[Dict[str, Any]], actual: Sequence[Dict[str, Any]]
                 ) -> List[Dict[str, Any]]:
    """Each actual row against its prediction (same kernel, dtype and launch config; the same
    specialisation key when the prediction has it): ``status`` is ``same`` (registers, spills and
    shared memory equal), ``differs`` or ``not predicted``."""
    by_id: Dict[str, List[Dict[str, Any]]] = {}
    for p in predicted:
        by_id.setdefault(_match_id(p), []).append(p)
    out = []
    for a in actual:
        cands = by_id.get(_match_id(a), [])
        pred = next((p for p in cands if p.get("key") == a.get("key")), cands[0] if cands else None)
        entry = {"kernel": a["kernel"], "dtype": a["dtype"], "meta": a["meta"],
                 "actual": {k: a.get(k) for k in ("regs", "spills", "smem")},
                 "driver": a.get("device"), "failures": a.get("failures", []),
                 "predicted": None if pred is None else {k: pred.get(k)
                                                         for k in ("regs", "spills", "smem")}}
        if pred is None:
            entry["status"] = "not predicted"
        else:
            entry["status"] = "same" if entry["actual"] == entry["predicted"] else "differs"
        out.append(entry)
    return out


def render_comparison(report: Dict[str, Any]) -> str:
    lines = [f"# Compile matrix on a GPU: {report['gpu']} (sm_{report['arch']}), {report['date']}",
             "", f"- command: `{report['command']}`",
             "- " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
             f"- prediction: `{report['prediction']}` ({report['prediction_versions']})",
             f"- models: {', '.join(report['models'])}; one specialisation per (kernel, dtype)",
             "- actual = compiled here for this GPU, loaded on it (driver: registers, local "
             "bytes, shared); predicted = the committed table", "",
             "**" + ", ".join(f"{n} {k}" for k, n in sorted(report["summary"].items())) + "**", "",
             "| kernel | dtype | launch config | predicted regs/spill/smem | actual | driver "
             "regs/local/smem | status |", "|---|---|---|---|---|---|---|"]
    for c in report["comparison"]:
        fmt = (lambda d: "-" if not d else f"{d.get('regs')}/{d.get('spills')}/{d.get('smem')}")
        drv = c.get("driver") or {}
        lines.append(f"| {c['kernel']} | {c['dtype']} | {_short_meta(c['meta'])} | "
                     f"{fmt(c['predicted'])} | {fmt(c['actual'])} | "
                     f"{drv.get('n_regs', '-')}/{drv.get('n_spills', '-')}/{drv.get('shared', '-')}"
                     f" | {c['status']}{' (FAILS: ' + '; '.join(c['failures']) + ')' if c['failures'] else ''} |")
    return "\n".join(lines) + "\n"


def gpu_compare(prediction: Path, models: Sequence[str], dtypes: Sequence[str], out_dir: Path,
                name: Optional[str], command: str) -> int:
    """Compile this GPU's slice for its own compute capability, load it, compare with the
    prediction; write ``<name>.md`` / ``.json``. Exit 1 if a kernel fails a check here."""
    import torch
    if not torch.cuda.is_available():
        print("compile_matrix: gpu compare skipped: no CUDA device")
        return 0
    major, minor = torch.cuda.get_device_capability(0)
    arch = major * 10 + minor
    gpu = torch.cuda.get_device_name(0)
    records = record_models(models, None)
    result = run_target({m: e for m, e in records.items() if "error" not in e}, arch, dtypes,
                        None, representative=True, load=True)
    pred = json.loads(prediction.read_text()) if prediction.is_file() else {"rows": []}
    predicted = [r for r in pred.get("rows", []) if int(r["target"]) == arch]
    comparison = compare_rows(predicted, result["rows"])
    summary: Dict[str, int] = {}
    for c in comparison:
        summary[c["status"]] = summary.get(c["status"], 0) + 1
    failing = sum(bool(c["failures"]) for c in comparison)
    summary["failing checks"] = failing
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report = {"gpu": gpu, "arch": arch, "date": date, "command": command, "versions": versions(),
              "prediction": str(prediction.relative_to(ROOT) if prediction.is_relative_to(ROOT)
                                else prediction),
              "prediction_versions": pred.get("versions", "none"), "models": list(models),
              "summary": summary, "comparison": comparison,
              "record_errors": {m: e["error"] for m, e in records.items() if "error" in e}}
    stem = name or f"compile_matrix_check-{date[:10]}-sm_{arch}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out_dir / f"{stem}.md").write_text(render_comparison(report))
    print(f"compile_matrix: sm_{arch} on {gpu}: "
          + ", ".join(f"{n} {k}" for k, n in sorted(summary.items()))
          + f"; wrote {out_dir / stem}.md/.json")
    return 1 if failing or report["record_errors"] else 0


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
_META_SKIP = ("UPCAST", "HAS_RPB", "PREC")


def _short_meta(meta: Dict[str, Any]) -> str:
    keep = {k: v for k, v in meta.items() if k not in _META_SKIP}
    return " ".join(f"{k}={v}" for k, v in keep.items())


def _digests(result: Dict[str, Any]) -> str:
    found = {d for d in (result.get("kernels_digests") or {}).values() if d}
    if len(found) == 1:
        return f"{found.pop()} (the same for all)"
    return ", ".join(f"sm_{a} {d}" for a, d in (result.get("kernels_digests") or {}).items())


def _short_models(models: Sequence[str]) -> str:
    names = [m.replace("vitzoo_", "") for m in models]
    return ", ".join(names) if len(names) <= 3 else f"{len(names)}: {', '.join(names[:3])}, ..."


def render_markdown(result: Dict[str, Any], command: str, versions: Dict[str, str],
                    date: str) -> str:
    c = counts(result)
    total = c.get("all", {"attempted": 0, "passed": 0})
    lines = ["# Compile matrix: every model's Triton launches x GPU target x dtype", "",
             f"- command: `{command}`", f"- date: {date}",
             "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             f"- models: {len(result['models'])} registered; dtypes: "
             + ", ".join(result["dtypes"]) + " (fp32-highest = IEEE dots, fp32-high = TF32)",
             f"- kernels: {result.get('kernels_revision', '?')}; kernels/*.py digest per "
             f"target: {_digests(result)}",
             "- compiled ahead of time on CPU (`tests/triton_aot.py`): regs and spills from the "
             "ptxas Triton ran, smem from Triton's metadata; no kernel here has run on a GPU.",
             f"- took {result['seconds']['total']} s (recording {result['seconds']['record']} s)",
             *([f"- representative on sm_{', sm_'.join(map(str, result['representative']))}: "
                "one specialisation per (kernel, dtype) there, the one most of these models use "
                "(elsewhere every specialisation)"] if result.get("representative") else []),
             "", f"**{total['attempted']} attempted, {total['passed']} passed**", "",
             "| target | ptxas | attempted | passed | per-block smem limit |", "|---|---|---|---|---|"]
    import triton_aot as aot
    for arch, st in result["targets"].items():
        ct = c.get(f"sm_{arch}", {"attempted": 0, "passed": 0})
        note = f"not compiled: {st['refused']}" if st["refused"] else ""
        lines.append(f"| sm_{arch} | {st['ptxas']} {st['ptxas_version']} | {ct['attempted']} | "
                     f"{ct['passed']} {note}| {aot.SMEM_LIMIT.get(int(arch), '-')} B |")
    failing = [r for r in result["rows"] if r["failures"]]
    lines += ["", "## Failures", ""]
    if failing or result.get("record_errors") or result.get("worker_errors"):
        for r in failing:
            lines.append(f"- sm_{r['target']} {r['dtype']} `{r['kernel']}` ({_short_meta(r['meta'])}): "
                         + "; ".join(r["failures"]) + f" — models: {_short_models(r['models'])}")
        for m, e in result.get("record_errors", {}).items():
            lines.append(f"- recording {m} failed: {e}")
        for a, e in result.get("worker_errors", {}).items():
            lines.append(f"- worker for sm_{a} failed: {e.strip().splitlines()[-1] if e.strip() else '?'}")
    else:
        lines.append("none")
    if result.get("reference_calls"):
        lines += ["", "## Calls that stay on the PyTorch reference (the op's own rule)", ""]
        for why, models in result["reference_calls"].items():
            lines.append(f"- {why} — {_short_models(models)}")
    lines += ["", "## Models without Triton launches", "",
              ", ".join(m.replace("vitzoo_", "") for m in result["no_launch_models"]) or "none",
              "", "## Kernels", "",
              "One row per distinct specialisation (kernel, constexprs, dtypes, alignment) per "
              "target and dtype; `tc` = tensor-core instruction kinds in the PTX.", ""]
    for arch in result["targets"]:
        rows = [r for r in result["rows"] if str(r["target"]) == str(arch)]
        if not rows:
            continue
        lines += [f"### sm_{arch}", "",
                  "| kernel | dtype | launch config | regs | spill B | smem B | tc | ok | models |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["kernel"], result["dtypes"].index(r["dtype"]),
                                             _short_meta(r["meta"]))):
            ok = "yes" if not r["failures"] else "**NO**: " + "; ".join(r["failures"])
            lines.append(f"| {r['kernel']} | {r['dtype']} | {_short_meta(r['meta'])} | {r['regs']} | "
                         f"{r['spills']} | {r['smem']} | {_tc_kind(r['tc']) or '-'} | {ok} | "
                         f"{_short_models(r['models'])} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def versions() -> Dict[str, str]:
    import torch
    import triton
    return {"triton": triton.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vitzoo_*", help="comma-separated names or globs")
    p.add_argument("--slice", action="store_true",
                   help="the default-test slice: " + ", ".join(SLICE_MODELS) + " on sm_"
                        + "/sm_".join(map(str, SLICE_TARGETS)) + ", one specialisation per "
                        "(kernel, dtype) (--representative)")
    p.add_argument("--representative", action="store_true",
                   help="compile one specialisation per (kernel, dtype), the most used")
    p.add_argument("--representative-targets", default="",
                   help="comma-separated targets that compile representatively (time)")
    p.add_argument("--targets", default=",".join(map(str, TARGETS)))
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one target each)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()))
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="record, replay and bind only: count the distinct specialisations")
    p.add_argument("--out-dir", default=str(OUT_DIR))
    p.add_argument("--name", default="compile_matrix", help="file stem of the .md / .json")
    p.add_argument("--gpu-compare", metavar="PREDICTION_JSON", default=None,
                   help="on a CUDA GPU: compile the slice for this GPU, load it, compare with "
                        "the prediction (the committed compile_matrix.json)")
    p.add_argument("--worker-arch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-in", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_arch is not None:
        return _worker_main(args)
    command = "python tools/compile_matrix.py" + "".join(
        " " + a for a in (argv if argv is not None else sys.argv[1:]))

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SystemExit(f"compile_matrix: unknown dtype {bad[0]!r}; choose from {list(DTYPES)}")
    if args.gpu_compare:
        models = list(SLICE_MODELS) if args.models == "vitzoo_*" else select_models(args.models)
        return gpu_compare(Path(args.gpu_compare), models, dtypes, Path(args.out_dir),
                           None if args.name == "compile_matrix" else args.name, command)
    models = list(SLICE_MODELS) if args.slice else select_models(args.models)
    targets = list(SLICE_TARGETS) if args.slice else [int(t.strip().replace("sm_", ""))
                                                      for t in args.targets.split(",")]
    cache = None if args.no_cache else Path(args.cache_dir)
    rep_targets = [int(t.strip().replace("sm_", "")) for t in args.representative_targets.split(",")
                   if t.strip()]
    result = run_matrix(models, targets, dtypes, args.jobs, cache, args.dry_run,
                        True if (args.representative or args.slice) else rep_targets)
    if args.dry_run:
        for key, c in counts(result).items():
            print(f"compile_matrix: dry run: {key}: {c['attempted']} distinct specialisations")
        print(f"compile_matrix: dry run took {result['seconds']}")
        return 0
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result.update(command=command, date=date, versions=versions(), counts=counts(result))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{args.name}.md").write_text(render_markdown(result, command, result["versions"], date))
    total = result["counts"].get("all", {"attempted": 0, "passed": 0})
    print(f"compile_matrix: {total['attempted']} attempted, {total['passed']} passed in "
          f"{result['seconds']['total']} s; wrote {out / args.name}.md/.json")
    return 0 if total["attempted"] == total["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
