"""tools/gpu_check.py (``make gpu-check``) on a machine without a GPU.

The skip must be clean (one line, exit 0); the orchestration is checked with a fake part runner,
the report writer with fake results, and the process-group timeout with a sleeping child.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU skip")


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@NO_CUDA
def test_skips_with_one_line_without_cuda(tmp_path):
    res = subprocess.run([sys.executable, "tools/gpu_check.py", "--out-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines() == ["gpu_check: skipped: no CUDA device"]
    assert not list(tmp_path.iterdir())


@NO_CUDA
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_skips_cleanly():
    """The target uses the system python3 (no venv, no pip): it must skip, torch or not.

    Run as a top-level make: under `make test-newest` pytest inherits MAKEFLAGS/MAKELEVEL, and a
    nested make would add its "Entering/Leaving directory" lines to the output.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    res = subprocess.run(["make", "-s", "--no-print-directory", "gpu-check"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "gpu_check: skipped: no CUDA device"


def test_module_imports_nothing_outside_the_standard_library(gc):
    src = (ROOT / "tools" / "gpu_check.py").read_text()
    top = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert not [ln for ln in top if any(m in ln for m in ("torch", "fvcore", "timm", "vitzoo"))]


def test_run_part_kills_the_process_group_on_timeout(gc):
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', " \
           "'import time; time.sleep(60)']); print('started', flush=True); time.sleep(60)"
    part = gc.run_part("sleepy", [sys.executable, "-c", code], timeout=3)
    assert part["timed_out"] and part["rc"] != 0 and part["seconds"] < 30
    assert "started" in part["output_tail"] and not gc.part_ok(part)
    ok = gc.run_part("fine", [sys.executable, "-c", "print('hi')"], timeout=60)
    assert gc.part_ok(ok) and ok["output_tail"].strip() == "hi"


def test_pytest_counts_from_junit_and_from_the_summary_line(gc, tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="7" failures="1" errors="1" '
                   'skipped="2"></testsuite></testsuites>')
    assert gc.junit_counts(xml) == dict(passed=3, failed=1, errors=1, skipped=2, total=7)
    assert gc.junit_counts(tmp_path / "missing.xml") is None
    out = "....\n=== 4 passed, 1 failed, 2 skipped, 10 deselected in 3.1s ==="
    assert gc.summary_counts(out) == dict(passed=4, failed=1, errors=0, skipped=2, total=7)
    assert gc.summary_counts("Traceback ...") is None


def test_run_all_orchestrates_parts_and_collects_results(gc, monkeypatch):
    """A fake part runner: every part 'succeeds' and the benchmarks leave their JSON behind."""
    calls = []

    def fake_run_part(name, cmd, timeout, env=None):
        calls.append((name, list(cmd), timeout))
        assert env["PYTHONPATH"].split(":")[0] == str(ROOT)
        if "--out-dir" in cmd:
            out = Path(cmd[cmd.index("--out-dir") + 1])
            out.mkdir(parents=True)
            if "--gpu-compare" in cmd:
                assert "TRITON_INTERPRET" not in env
                (out / "check.json").write_text(json.dumps(
                    {"arch": 90, "summary": {"same": 9, "differs": 1}, "comparison": []}))
                (out / "check.md").write_text("# Compile matrix on a GPU\n")
            else:
                data = ({"rows": [{"variant": "vitzoo", "ms_per_step": 10.0}],
                         "ratios": {"flex/vitzoo": 1.4}, "model": "vitzoo_dinat_tiny"}
                        if "--model-step" in cmd else
                        {"rows": [{"op": cmd[cmd.index("--ops") + 1], "case": "c",
                                   "impl": "triton", "fwd_ms": 1.0, "fwd_bwd_ms": 2.0,
                                   "peak_mem_mb": 3.0}]})
                (out / "x.json").write_text(json.dumps(data))
        return {"part": name, "command": " ".join(cmd), "rc": 0, "timed_out": False,
                "seconds": 1.0, "limit_s": timeout, "output_tail": "5 passed in 1s"}

    monkeypatch.setattr(gc, "run_part", fake_run_part)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    body = gc.run_all(480, {"tests": 100, "ops": 120, "compile_matrix": 60, "model_step": 100},
                      ops=["neighborhood", "window"])
    names = [c[0] for c in calls]
    assert names == ["tests", "ops:neighborhood", "ops:neighborhood:fp32-high", "ops:window",
                     "ops:window:fp32-high", "compile_matrix", "model_step"]
    test_cmd = calls[0][1]
    assert test_cmd[1:3] == ["-m", "pytest"] and "gpu" in test_cmd
    assert "tests/test_kernels_neighborhood.py" in test_cmd
    # ops share 120 s by weight (neighborhood 2, others 1; fp32 runs 0.6 of their op's bf16),
    # unused time rolling over (the fake parts take none); the model step gets what is left
    na_bf16, na_fp32, win_bf16, win_fp32 = (c[2] for c in calls[1:5])
    assert 48 <= na_bf16 <= 50 and 49 <= na_fp32 <= 52 and 72 <= win_bf16 <= 75
    assert 115 <= win_fp32 <= 120
    assert calls[5][2] <= 60 and 250 <= calls[6][2] <= 480
    assert calls[6][1][calls[6][1].index("--model-variants") + 1] == "vitzoo,flex"
    for c in calls[1:5]:
        assert "--device" in c[1] and "--quick" in c[1]
    # bf16 runs the script; fp32 sets torch's precision to "high" first, then runs it in fp32
    assert calls[1][1][1] == "tools/bench_kernels.py" and "--dtype" not in calls[1][1]
    fp32 = calls[2][1]
    assert fp32[1] == "-c" and "set_float32_matmul_precision('high')" in fp32[2]
    assert fp32[fp32.index("--dtype") + 1] == "float32"
    cm_cmd = calls[5][1]
    assert cm_cmd[1] == "tools/compile_matrix.py"
    assert cm_cmd[cm_cmd.index("--gpu-compare") + 1] == "benchmarks/results/compile_matrix.json"
    assert body["tests"]["passed"] == 5  # no junit file: from the summary line
    assert [(r["op"], r["dtype"]) for r in body["ops_rows"]] == [
        ("neighborhood", "bf16"), ("neighborhood", "fp32-high"), ("window", "bf16"),
        ("window", "fp32-high")]
    assert body["compile_matrix"]["summary"] == {"same": 9, "differs": 1}
    assert body["compile_matrix_md"].startswith("# Compile matrix on a GPU")
    assert body["model_step"]["ratios"] == {"flex/vitzoo": 1.4}


def test_the_fp32_high_wrapper_sets_the_precision_before_the_script(gc, tmp_path):
    """The ``-c`` wrapper really runs the script with its arguments after torch's setting."""
    script = tmp_path / "tools" / "bench_kernels.py"
    script.parent.mkdir()
    script.write_text("import sys, torch\nprint(torch.get_float32_matmul_precision(), "
                      "sys.argv[1:])\n")
    res = subprocess.run([sys.executable, "-c", gc._FP32_HIGH, "--dtype", "float32"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "high ['--dtype', 'float32']"


def test_gpu_test_files_are_the_kernel_tests_and_gpu_marked_files(gc):
    files = gc.gpu_test_files()
    assert "tests/test_kernels_neighborhood.py" in files and "tests/test_gpu_check.py" not in files
    for f in files:
        text = (ROOT / f).read_text()
        assert Path(f).name.startswith("test_kernels_") or "@pytest.mark.gpu" in text


def test_out_of_time_parts_are_recorded_not_run(gc, monkeypatch):
    monkeypatch.setattr(gc, "run_part", lambda *a, **k: pytest.fail("nothing should run"))
    body = gc.run_all(12, {"tests": 100, "ops": 100, "compile_matrix": 60, "model_step": 100},
                      ops=["neighborhood"])
    assert [(p["part"], p["skipped"]) for p in body["parts"]] == [
        ("tests", "out of time"), ("ops:neighborhood", "out of time"),
        ("ops:neighborhood:fp32-high", "out of time"), ("compile_matrix", "out of time"),
        ("model_step", "out of time")]


def _fake_report():
    return {
        "date": "2026-11-30T22:00:00+00:00",
        "device": {"gpu": "NVIDIA H200", "capability": "sm_90", "torch": "2.9.0",
                   "triton": "3.5.0", "timm": "1.0.31", "pytest": "8.3", "cuda": "12.8",
                   "python": "3.12.3"},
        "command": "tools/gpu_check.py", "budget_s": 480, "total_s": 312.5,
        "parts": [
            {"part": "tests", "command": "python -m pytest -m gpu", "rc": 0, "timed_out": False,
             "seconds": 40.2, "limit_s": 150, "output_tail": ""},
            {"part": "ops:neighborhood", "command": "bench --ops neighborhood", "rc": 1,
             "timed_out": False, "seconds": 120.0, "limit_s": 190,
             "output_tail": "RuntimeError: out of resources"},
            {"part": "ops:window", "command": "", "rc": None, "timed_out": False,
             "seconds": 0.0, "skipped": "out of time", "output_tail": ""},
        ],
        "tests": {"passed": 12, "failed": 1, "errors": 0, "skipped": 2, "total": 15,
                  "files": ["tests/test_kernels_neighborhood.py"]},
        "ops_rows": [
            {"op": "neighborhood", "case": "map 56 heads 2 dil 1 batch 32", "impl": "triton",
             "fwd_ms": 0.25, "fwd_bwd_ms": 0.9, "peak_mem_mb": 512.0, "ratio_vs": "flex",
             "speedup": 1.72},
            {"op": "neighborhood", "case": "map 56 heads 2 dil 1 batch 32", "impl": "flex",
             "fwd_ms": 0.4, "fwd_bwd_ms": 1.548, "peak_mem_mb": 600.0},
            {"op": "neighborhood", "dtype": "fp32-high", "case": "map 56 heads 2 dil 1 batch 32",
             "impl": "triton", "fwd_ms": 0.5, "fwd_bwd_ms": 1.8, "peak_mem_mb": 900.0},
        ],
        "compile_matrix": {"arch": 90, "summary": {"same": 30, "differs": 2,
                                                   "failing checks": 0}},
        "compile_matrix_md": "# Compile matrix on a GPU: NVIDIA H200 (sm_90)\n",
        "model_step": {"model": "vitzoo_dinat_tiny", "batch": 32, "img_size": 224,
                       "dtype": "bfloat16", "check_max_abs_diff": 3e-6,
                       "rows": [{"variant": "vitzoo", "ms_per_step": 80.0, "img_per_s": 400.0},
                                {"variant": "flex", "ms_per_step": 110.0, "img_per_s": 290.9}],
                       "ratios": {"flex/vitzoo": 1.375}},
    }


def test_report_writer(gc, tmp_path):
    report = _fake_report()
    js, md, cjs, cmd = gc.write_report(report, tmp_path)
    assert js.name == "2026-11-30-nvidia-h200.json" and md.name == "2026-11-30-nvidia-h200.md"
    assert cjs.name == "2026-11-30-nvidia-h200-compile-matrix.json"
    assert json.loads(cjs.read_text()) == report["compile_matrix"]
    assert cmd.read_text() == report["compile_matrix_md"]
    assert json.loads(js.read_text()) == {k: v for k, v in report.items()
                                          if k != "compile_matrix_md"}
    text = md.read_text()
    assert "NVIDIA H200 (sm_90)" in text and "torch 2.9.0, triton 3.5.0, timm 1.0.31" in text
    assert "`tools/gpu_check.py`" in text
    assert "12 passed, 1 failed, 0 errors, 2 skipped (of 15)" in text
    assert "| tests | ok | 40.2 |" in text and "| ops:neighborhood | failed (rc 1) |" in text
    assert "| ops:window | not run: out of time |" in text
    assert "| neighborhood | bf16 | map 56 heads 2 dil 1 batch 32 | triton | 0.250 | 0.900 | " \
           "512.0 | 1.72x vs flex |" in text
    assert "| neighborhood | fp32-high | map 56 heads 2 dil 1 batch 32 | triton | 0.500 |" in text
    assert "sm_90: 2 differs, 0 failing checks, 30 same" in text
    assert "| vitzoo | 80.00 | 400.0 |" in text and "flex/vitzoo: 1.38x" in text
    assert "RuntimeError: out of resources" in text  # failing part's tail is in the report


def test_report_without_results_still_renders(gc, tmp_path):
    report = dict(_fake_report(), tests={"status": "not run: pytest is not installed"},
                  ops_rows=[], model_step=None, compile_matrix=None)
    text = gc.render_markdown(report)
    assert "not run: pytest is not installed" in text and text.count("no rows") == 1
    assert "no result" in text and "## Compile matrix on this GPU\n\nnot run" in text
    paths = gc.write_report(report, tmp_path)
    assert len(paths) == 2  # no compile comparison file when it did not run


def test_main_with_a_device_writes_the_report_and_fails_on_a_failed_part(gc, tmp_path,
                                                                         monkeypatch, capsys):
    fake = _fake_report()
    monkeypatch.setattr(gc, "cuda_device", lambda: fake["device"])
    seen = {}

    def fake_run_all(budget_s, budgets):
        seen.update(budget=budget_s, **budgets)
        return {k: fake[k] for k in ("parts", "tests", "ops_rows", "model_step",
                                     "compile_matrix", "compile_matrix_md")}

    monkeypatch.setattr(gc, "run_all", fake_run_all)
    assert gc.main(["--budget", "300", "--ops-budget", "99", "--compile-matrix-budget", "45",
                    "--out-dir", str(tmp_path)]) == 1
    assert seen == dict(budget=300.0, tests=100, ops=99.0, compile_matrix=45.0, model_step=90)
    assert (tmp_path / "2026-11-30-nvidia-h200-compile-matrix.md").is_file() or \
        list(tmp_path.glob("*-nvidia-h200-compile-matrix.md"))
    out = capsys.readouterr().out
    assert "gpu_check: gpu NVIDIA H200" in out and "ops:neighborhood: rc 1" in out
    (js,) = list(tmp_path.glob("*-nvidia-h200.json"))
    data = json.loads(js.read_text())
    assert data["command"].endswith("--out-dir " + str(tmp_path)) and data["budget_s"] == 300
    assert data["ops_rows"] == fake["ops_rows"] and data["date"][:4].isdigit()
