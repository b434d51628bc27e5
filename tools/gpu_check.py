#!/usr/bin/env python3
"""One GPU check (``make gpu-check``): CUDA kernel tests, kernel benchmarks, the compile matrix
on this GPU, a training step.

Runs from a plain checkout with ``PYTHONPATH=.`` and the packages already on the machine (torch,
triton, timm; no pip step, and fvcore is not needed). On a CUDA GPU it

1. prints the device and versions;
2. runs the CUDA-marked kernel tests (``pytest -m gpu`` on tests/test_kernels_*.py and any test
   file with a ``gpu`` mark);
3. runs ``tools/bench_kernels.py --quick`` for every op in ``tools/kernel_bench/``, one process
   per op and dtype: bf16, then fp32 under ``torch.set_float32_matmul_precision("high")`` (the
   kernels' TF32 path);
4. compiles the compile matrix's slice for this GPU's own compute capability, loads it, and
   compares registers / spills / shared memory with the committed prediction
   (``tools/compile_matrix.py --gpu-compare benchmarks/results/compile_matrix.json``);
5. runs the DiNAT-tiny training-step benchmark (``bench_kernels.py --model-step --quick``,
   eager vitzoo vs the same model on compiled FlexAttention);

each part in its own process under its own time limit (the whole run stays within
``--budget``, 8 minutes by default), carrying on after a part fails or times out. It writes
``benchmarks/results/<YYYY-MM-DD>-<gpu>.md`` and ``.json``: device, versions, command, every
timing, test pass/fail counts, and the tail of any failing part's output; and the compile
comparison as ``<YYYY-MM-DD>-<gpu>-compile-matrix.md`` / ``.json``. Exit status 1 if any
part failed. Without a CUDA device it prints one line and exits 0.

Only the standard library is imported at module level, so this file also loads where torch is
absent (the skip) and the report writer is testable on its own.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
SKIP_LINE = "gpu_check: skipped: no CUDA device"
# seconds per part (the model step also gets what the earlier parts leave unused)
DEFAULT_BUDGETS = {"tests": 100, "ops": 230, "compile_matrix": 60, "model_step": 90}
# share of the ops budget per op (default 1): NA compiles FlexAttention for each of its cases
OP_WEIGHTS = {"neighborhood": 2.0}
# each op is timed in these dtypes; the fp32 run's share of the op's time (it is the second one)
OP_DTYPES = ("bf16", "fp32-high")
DTYPE_WEIGHTS = {"bf16": 1.0, "fp32-high": 0.6}
PREDICTION = "benchmarks/results/compile_matrix.json"
# bench_kernels.py in fp32 with TF32 allowed: torch's setting is made before the script runs
_FP32_HIGH = ("import runpy, sys, torch; torch.set_float32_matmul_precision('high'); "
              "sys.argv = ['tools/bench_kernels.py'] + sys.argv[1:]; "
              "runpy.run_path('tools/bench_kernels.py', run_name='__main__')")
# the eager pair only: torch.compile of the whole model twice would not fit in the budget
MODEL_VARIANTS = "vitzoo,flex"
TAIL_CHARS = 3000
_GPU_MARK = re.compile(r"^\s*@pytest\.mark\.gpu\b|^pytestmark\s*=.*\bmark\.gpu\b", re.M)


def cuda_device() -> Optional[Dict[str, str]]:
    """Device name, capability and versions, or None without torch or a CUDA device."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    info = {"gpu": torch.cuda.get_device_name(0),
            "capability": "sm_%d%d" % torch.cuda.get_device_capability(0),
            "gpu_count": str(torch.cuda.device_count()), "torch": torch.__version__,
            "cuda": str(torch.version.cuda), "python": sys.version.split()[0]}
    for name in ("triton", "timm", "pytest"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = "not installed"
    return info


def run_part(name: str, cmd: Sequence[str], timeout: float,
             env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run ``cmd`` in its own process group; kill the whole group after ``timeout`` seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
    return {"part": name, "command": " ".join(cmd), "rc": proc.returncode,
            "timed_out": timed_out, "limit_s": round(timeout, 1),
            "seconds": round(time.monotonic() - t0, 1), "output_tail": (out or "")[-TAIL_CHARS:]}


def junit_counts(path: Path) -> Optional[Dict[str, int]]:
    """passed/failed/errors/skipped/total from a pytest ``--junitxml`` file (None if absent)."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"], "total": counts["tests"]}


def summary_counts(output: str) -> Optional[Dict[str, int]]:
    """The counts of pytest's last summary line (``3 passed, 1 failed in 2.0s``), if any."""
    lines = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|"
                                                           r"deselected)", ln)]
    if not lines:
        return None
    found = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)",
                                                      lines[-1]))
    out = {"passed": found.get("passed", 0), "failed": found.get("failed", 0),
           "errors": found.get("errors", found.get("error", 0)), "skipped": found.get("skipped", 0)}
    out["total"] = sum(out.values())
    return out


def gpu_test_files() -> List[str]:
    """tests/test_kernels_*.py and any other test file with a ``gpu``-marked test (only these
    are collected: other files may import packages the GPU machine lacks, e.g. fvcore)."""
    files = sorted((ROOT / "tests").glob("test_*.py"))
    return [str(p.relative_to(ROOT)) for p in files if p.name.startswith("test_kernels_")
            or _GPU_MARK.search(p.read_text(errors="ignore"))]


def op_names() -> List[str]:
    """Op modules in tools/kernel_bench/ (by file name: nothing is imported here)."""
    return sorted(p.stem for p in (ROOT / "tools" / "kernel_bench").glob("*.py")
                  if not p.stem.startswith("_"))


def _read_json(folder: Path) -> Optional[Dict[str, Any]]:
    files = sorted(folder.glob("*.json"))
    return json.loads(files[-1].read_text()) if files else None


class Deadline:
    """The run's overall time limit: a part gets min(its budget, what is left)."""

    def __init__(self, total_s: float) -> None:
        self.end = time.monotonic() + total_s

    def left(self) -> float:
        return self.end - time.monotonic()

    def limit(self, budget: float) -> float:
        return min(budget, self.left() - 5.0)


def _not_run(name: str, why: str) -> Dict[str, Any]:
    return {"part": name, "command": "", "rc": None, "timed_out": False, "seconds": 0.0,
            "skipped": why, "output_tail": ""}


def run_all(budget_s: float, budgets: Dict[str, float], python: str = sys.executable,
            ops: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the three parts under ``budget_s`` seconds in all; return the report's body."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        return _run_parts(Path(tmp), budget_s, budgets, python, ops)


def _run_parts(work: Path, budget_s: float, budgets: Dict[str, float], python: str,
               ops: Optional[List[str]]) -> Dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    deadline = Deadline(budget_s)
    parts: List[Dict[str, Any]] = []
    body: Dict[str, Any] = {"parts": parts, "tests": None, "ops_rows": [], "model_step": None,
                            "compile_matrix": None}

    # 1. CUDA kernel tests
    files = gpu_test_files()
    try:
        import pytest  # noqa: F401
        has_pytest = True
    except ImportError:
        has_pytest = False
    if not has_pytest:
        parts.append(_not_run("tests", "pytest is not installed on this machine"))
        body["tests"] = {"status": "not run: pytest is not installed"}
    elif deadline.limit(budgets["tests"]) < 10:
        parts.append(_not_run("tests", "out of time"))
    else:
        junit = work / "junit.xml"
        cmd = [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={junit}", *files]
        part = run_part("tests", cmd, deadline.limit(budgets["tests"]), env)
        parts.append(part)
        counts = junit_counts(junit) or summary_counts(part["output_tail"])
        body["tests"] = dict(counts or {"status": "no counts (timed out before the summary)"},
                             files=files)

    # 2. op benchmarks, one process per (op, dtype); unused time rolls over to the next
    names = op_names() if ops is None else ops
    runs = [(n, d) for n in names for d in OP_DTYPES]
    ops_end = time.monotonic() + budgets["ops"]
    for i, (name, dtype) in enumerate(runs):
        weights = [OP_WEIGHTS.get(n, 1.0) * DTYPE_WEIGHTS[d] for n, d in runs[i:]]
        share = (ops_end - time.monotonic()) * weights[0] / sum(weights)
        limit = deadline.limit(share)
        part_name = f"ops:{name}" + ("" if dtype == "bf16" else f":{dtype}")
        if limit < 10:
            parts.append(_not_run(part_name, "out of time"))
            continue
        out_dir = work / f"op_{name}_{dtype}"
        args = ["--device", "cuda", "--quick", "--ops", name, "--out-dir", str(out_dir)]
        cmd = ([python, "tools/bench_kernels.py", *args] if dtype == "bf16" else
               [python, "-c", _FP32_HIGH, *args, "--dtype", "float32"])
        parts.append(run_part(part_name, cmd, limit, env))
        data = _read_json(out_dir)
        if data:
            body["ops_rows"] += [dict(r, dtype=dtype) for r in data.get("rows", [])]

    # 3. the compile matrix's slice for this GPU against the committed prediction
    limit = deadline.limit(budgets["compile_matrix"])
    if limit < 10:
        parts.append(_not_run("compile_matrix", "out of time"))
    else:
        out_dir = work / "compile_matrix"
        cmd = [python, "tools/compile_matrix.py", "--gpu-compare", PREDICTION, "--out-dir",
               str(out_dir), "--name", "check"]
        cm_env = {k: v for k, v in env.items() if k != "TRITON_INTERPRET"}
        parts.append(run_part("compile_matrix", cmd, limit, cm_env))
        js, md = out_dir / "check.json", out_dir / "check.md"
        if js.is_file():
            body["compile_matrix"] = json.loads(js.read_text())
            body["compile_matrix_md"] = md.read_text() if md.is_file() else ""

    # 4. DiNAT-tiny training step vs FlexAttention
    limit = deadline.limit(max(budgets["model_step"], deadline.left()))
    if limit < 20:
        parts.append(_not_run("model_step", "out of time"))
    else:
        out_dir = work / "model_step"
        cmd = [python, "tools/bench_kernels.py", "--model-step", "--quick", "--model-variants",
               MODEL_VARIANTS, "--out-dir", str(out_dir)]
        parts.append(run_part("model_step", cmd, limit, env))
        data = _read_json(out_dir)
        if data:
            body["model_step"] = {k: data.get(k) for k in (
                "model", "batch", "img_size", "dtype", "reps", "warmup", "check_max_abs_diff",
                "rows", "ratios")}
    return body


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def _fmt(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def part_ok(part: Dict[str, Any]) -> bool:
    return part.get("rc") == 0 and not part.get("timed_out")


def render_markdown(report: Dict[str, Any]) -> str:
    """The human-readable report: device, versions, command, parts, tests, every timing."""
    dev = report["device"]
    lines = [f"# GPU check: {dev.get('gpu')} ({report['date']})", "",
             f"- device: {dev.get('gpu')} ({dev.get('capability')}), CUDA {dev.get('cuda')}",
             f"- torch {dev.get('torch')}, triton {dev.get('triton')}, timm {dev.get('timm')}, "
             f"pytest {dev.get('pytest')}, python {dev.get('python')}",
             f"- command: `{report['command']}` (budget {report['budget_s']} s, took "
             f"{report['total_s']} s)", "", "## Parts", "",
             "| part | status | seconds | limit s | command |", "|---|---|---|---|---|"]
    for p in report["parts"]:
        status = (f"not run: {p['skipped']}" if p.get("skipped") else "timed out"
                  if p.get("timed_out") else "ok" if p.get("rc") == 0 else f"failed (rc {p['rc']})")
        lines.append(f"| {p['part']} | {status} | {p['seconds']} | {p.get('limit_s', '-')} | "
                     f"`{p['command']}` |")
    tests = report.get("tests") or {}
    lines += ["", "## CUDA kernel tests", ""]
    if "passed" in tests:
        lines.append(f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} "
                     f"errors, {tests['skipped']} skipped (of {tests['total']}); files: "
                     + ", ".join(tests.get("files", [])))
    else:
        lines.append(str(tests.get("status", "not run")))
    rows = report.get("ops_rows") or []
    lines += ["", "## Kernel benchmarks (quick)", ""]
    if rows:
        lines += ["| op | dtype | case | impl | fwd ms | fwd+bwd ms | peak MiB | speedup |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            up = (f"{r['speedup']:.2f}x vs {r.get('ratio_vs')}"
                  if isinstance(r.get("speedup"), (int, float)) else "-")
            if r.get("error"):
                up = "error: " + str(r["error"])[:120]
            lines.append(f"| {r.get('op')} | {r.get('dtype', 'bf16')} | {r.get('case')} | "
                         f"{r.get('impl')} | "
                         f"{_fmt(r.get('fwd_ms'))} | {_fmt(r.get('fwd_bwd_ms'))} | "
                         f"{_fmt(r.get('peak_mem_mb'), '.1f')} | {up} |")
    else:
        lines.append("no rows")
    cmx = report.get("compile_matrix")
    lines += ["", "## Compile matrix on this GPU", ""]
    if cmx:
        lines.append(f"sm_{cmx.get('arch')}: " + ", ".join(
            f"{n} {k}" for k, n in sorted((cmx.get("summary") or {}).items()))
            + " (kernels compiled here vs the committed prediction; table in the "
            "`-compile-matrix.md` file beside this one)")
    else:
        lines.append("not run")
    step = report.get("model_step")
    lines += ["", "## Training step (model level)", ""]
    if step:
        lines += [f"{step.get('model')}, batch {step.get('batch')} at {step.get('img_size')}, "
                  f"{step.get('dtype')}; guard max |logit diff| "
                  f"{_fmt(step.get('check_max_abs_diff'), '.2e')}", "",
                  "| variant | ms/step | img/s | first step s | peak GiB | error |",
                  "|---|---|---|---|---|---|"]
        for r in step.get("rows") or []:
            lines.append(f"| {r.get('variant')} | {_fmt(r.get('ms_per_step'), '.2f')} | "
                         f"{r.get('img_per_s', '-')} | {r.get('first_step_s', '-')} | "
                         f"{r.get('peak_mem_gib', '-')} | {str(r.get('error', ''))[:120]} |")
        lines += [""] + [f"- {k}: {v:.2f}x" for k, v in (step.get("ratios") or {}).items()]
    else:
        lines.append("no result")
    failing = [p for p in report["parts"] if not part_ok(p) and not p.get("skipped")]
    if failing:
        lines += ["", "## Output of failing parts (tail)", ""]
        for p in failing:
            lines += [f"### {p['part']}", "", "```", p["output_tail"][-1500:], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: Dict[str, Any], out_dir: Path) -> List[Path]:
    """``<out_dir>/<YYYY-MM-DD>-<gpu>.json`` and ``.md`` (and ``-compile-matrix.json`` / ``.md``
    when the compile comparison ran); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{report['date'][:10]}-{_slug(report['device'].get('gpu', 'gpu'))}"
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    cm_md = report.get("compile_matrix_md")
    main = {k: v for k, v in report.items() if k != "compile_matrix_md"}
    js.write_text(json.dumps(main, indent=2))
    md.write_text(render_markdown(main))
    paths = [js, md]
    if report.get("compile_matrix"):
        cjs, cmd = out_dir / f"{stem}-compile-matrix.json", out_dir / f"{stem}-compile-matrix.md"
        cjs.write_text(json.dumps(report["compile_matrix"], indent=2))
        cmd.write_text(cm_md or "")
        paths += [cjs, cmd]
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    for part, sec in DEFAULT_BUDGETS.items():
        p.add_argument(f"--{part.replace('_', '-')}-budget", type=float, default=sec,
                       help=f"seconds for the {part} part (default {sec}; the model step "
                            "also gets whatever the earlier parts left)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    device = cuda_device()
    if device is None:
        print(SKIP_LINE)
        return 0
    print("gpu_check: " + ", ".join(f"{k} {v}" for k, v in device.items()), flush=True)
    command = " ".join(["tools/gpu_check.py"] + (argv if argv is not None else sys.argv[1:]))
    t0 = time.monotonic()
    budgets = {part: getattr(args, f"{part}_budget") for part in DEFAULT_BUDGETS}
    body = run_all(args.budget, budgets)
    report = dict(date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  device=device, command=command, budget_s=args.budget,
                  total_s=round(time.monotonic() - t0, 1), **body)
    for path in write_report(report, Path(args.out_dir)):
        print(f"gpu_check: wrote {path}")
    for part in report["parts"]:
        print(f"gpu_check: {part['part']}: "
              + ("ok" if part_ok(part) else part.get("skipped") or
                 ("timed out" if part["timed_out"] else f"rc {part['rc']}"))
              + f" ({part['seconds']} s)")
    return 0 if all(part_ok(p) or p.get("skipped") == "pytest is not installed on this machine"
                    for p in report["parts"]) else 1


if __name__ == "__main__":
    sys.exit(main())
