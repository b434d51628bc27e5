"""The compile matrix (``tools/compile_matrix.py``): models' launches x GPU targets x dtypes.

Default run: the checks' logic on made-up rows, the committed table's own consistency, and a
representative slice compiled for real (one model per kernel family, sm_80 and sm_89, all four
dtypes, one specialisation per kernel and dtype). ``-m slow``: the full matrix, every model,
target and specialisation, must pass with as many kernels passed as attempted.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
COMMITTED = ROOT / "benchmarks" / "results" / "compile_matrix.json"
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs the triton package")


@pytest.fixture(scope="module")
def cm():
    spec = importlib.util.spec_from_file_location("compile_matrix_tool",
                                                  ROOT / "tools" / "compile_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(**kw):
    row = dict(kernel="_na_fwd_kernel", target=89, dtype="bf16", key="k1", regs=128, spills=0,
               local=0, smem=53248, smem_limit=101376, tc=["mma.sync.aligned.m16n8k16"],
               error=None, meta={"TH": 8, "num_warps": 4}, models=["vitzoo_nat_mini"])
    row.update(kw)
    return row


def test_checks_spills_smem_and_tensor_cores(cm):
    assert cm.check_row(_row()) == []
    assert cm.check_row(_row(spills=332)) == ["332 B spilled"]
    assert cm.check_row(_row(smem=101377)) == ["smem 101377 B > 101376 B"]
    assert cm.check_row(_row(tc=[])) == ["no tensor-core instruction"]
    assert cm.check_row(_row(tc=[], dtype="fp32-high")) == ["no tensor-core instruction"]
    # IEEE fp32 and the delta preprocess need no tensor cores
    assert cm.check_row(_row(tc=[], dtype="fp32-highest")) == []
    assert cm.check_row(_row(tc=[], kernel="_attn_bwd_preprocess")) == []
    assert cm.check_row(_row(error="PTXASError: boom"))[0].startswith("compile error")


def test_counts_per_target_and_failures_in_the_report(cm):
    rows = [_row(), _row(target=80, key="k2"), _row(target=80, key="k3", spills=44)]
    for r in rows:
        r["failures"] = cm.check_row(r)
    result = {"models": ["vitzoo_nat_mini", "vitzoo_caformer_s18"], "dtypes": list(cm.DTYPES),
              "rows": rows, "record_errors": {}, "worker_errors": {}, "reference_calls": {},
              "no_launch_models": ["vitzoo_caformer_s18"],
              "targets": {"80": {"ptxas": "ptxas", "ptxas_version": "12.9", "refused": None},
                          "89": {"ptxas": "ptxas", "ptxas_version": "12.9", "refused": None},
                          "120": {"ptxas": "ptxas", "ptxas_version": "12.4",
                                  "refused": "ptxas 12.4 refuses sm_120a"}},
              "seconds": {"total": 1.0, "record": 0.5}}
    c = cm.counts(result)
    assert c == {"sm_89": {"attempted": 1, "passed": 1}, "sm_80": {"attempted": 2, "passed": 1},
                 "all": {"attempted": 3, "passed": 2}}
    md = cm.render_markdown(result, "python tools/compile_matrix.py", {"triton": "3.8.0"}, "today")
    assert "**3 attempted, 2 passed**" in md and "`python tools/compile_matrix.py`" in md
    assert "sm_80 bf16 `_na_fwd_kernel`" in md and "44 B spilled" in md
    assert "not compiled: ptxas 12.4 refuses sm_120a" in md and "caformer_s18" in md
    # a model whose recording failed is a failure, not a silent gap
    result["record_errors"] = {"vitzoo_x": "RuntimeError: no"}
    assert cm.counts(result)["all"] == {"attempted": 4, "passed": 2}


def test_gpu_comparison_against_the_prediction(cm):
    predicted = [_row(key="a", regs=128), _row(key="b", regs=140, meta={"TH": 4, "num_warps": 8}),
                 _row(key="c", kernel="_na_bwd_dq_kernel", regs=150)]
    actual = [_row(key="a-new-triton", regs=128, device={"n_regs": 128, "n_spills": 0,
                                                         "shared": 53248}),
              _row(key="b", regs=150, meta={"TH": 4, "num_warps": 8}),
              _row(key="z", kernel="_win_fwd_kernel")]
    got = cm.compare_rows(predicted, actual)
    assert [g["status"] for g in got] == ["same", "differs", "not predicted"]
    assert got[1]["predicted"]["regs"] == 140 and got[1]["actual"]["regs"] == 150
    assert got[0]["driver"]["n_regs"] == 128
    md = cm.render_comparison({"gpu": "NVIDIA H100", "arch": 90, "date": "d", "command": "c",
                               "versions": {"triton": "3.8.0"}, "prediction": "p.json",
                               "prediction_versions": {}, "models": ["vitzoo_nat_mini"],
                               "summary": {"same": 1, "differs": 1, "not predicted": 1},
                               "comparison": got})
    assert "| _na_fwd_kernel | bf16 | TH=8 num_warps=4 | 128/0/53248 | 128/0/53248 | " \
           "128/0/53248 | same |" in md
    assert "not predicted" in md


def test_fp16_calls_are_the_bf16_recording_with_the_other_type():
    sys.path.insert(0, str(ROOT / "tests"))
    import model_launches as ml
    call = {"op": "na2d", "args": [{"tensor": [[1, 7, 7, 2, 32], [3136, 448, 64, 32, 1], 32,
                                               "bfloat16"]},
                                   {"tensor": [[2, 13, 13], [169, 13, 1], 0, "float32"]}, [7, 7]]}
    got = ml.with_dtype(call, "bfloat16", "float16")
    assert got["args"][0]["tensor"][3] == "float16" and got["args"][1]["tensor"][3] == "float32"
    assert got["args"][2] == [7, 7] and call["args"][0]["tensor"][3] == "bfloat16"


def test_committed_table_counts_what_it_attempted():
    """The committed table's headline equals its rows: nothing attempted is missing from it."""
    if not COMMITTED.is_file():
        pytest.skip("no committed compile matrix yet")
    data = json.loads(COMMITTED.read_text())
    md = COMMITTED.with_suffix(".md").read_text()
    rows = data["rows"]
    attempted = len(rows) + len(data.get("record_errors", {})) + len(data.get("worker_errors", {}))
    passed = sum(not r["failures"] for r in rows)
    assert data["counts"]["all"] == {"attempted": attempted, "passed": passed}
    assert f"**{attempted} attempted, {passed} passed**" in md
    assert md.count("\n| _") == len(rows)                 # one table line per compiled kernel
    assert {"80", "86", "89", "90"} <= set(data["targets"])
    assert set(data["dtypes"]) == {"bf16", "fp16", "fp32-highest", "fp32-high"}


def _run_tool(args, tmp_path, timeout):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run([sys.executable, "tools/compile_matrix.py", *args, "--out-dir",
                          str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    out = tmp_path / "compile_matrix.json"
    assert out.is_file(), res.stdout[-3000:] + res.stderr[-6000:]
    return res, json.loads(out.read_text())


def _assert_all_pass(res, data):
    failing = [f"sm_{r['target']} {r['dtype']} {r['kernel']} {r['meta']}: {r['failures']}"
               for r in data["rows"] if r["failures"]]
    assert not failing, "\n".join(failing)
    assert not data["record_errors"] and not data["worker_errors"], \
        (data["record_errors"], data["worker_errors"])
    total = data["counts"]["all"]
    assert total["attempted"] == total["passed"] == len(data["rows"]) > 0
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]


@needs_triton
def test_representative_slice_compiles_clean(cm, tmp_path):
    """One model per kernel family on sm_80 and sm_89 in bf16, fp16, fp32 "highest" and "high":
    compiles, 0 spills, smem within the target's limit, tensor cores except IEEE fp32."""
    res, data = _run_tool(["--slice"], tmp_path, timeout=1500)
    _assert_all_pass(res, data)
    got = {(r["target"], r["dtype"], r["kernel"]) for r in data["rows"]}
    for arch in cm.SLICE_TARGETS:
        for dtype in cm.DTYPES:
            kernels = {k for (a, d, k) in got if a == arch and d == dtype}
            for family in ("_na_", "_win_", "_routed_"):
                assert any(family in k for k in kernels), (arch, dtype, family, kernels)
    assert set(data["launching_models"]) == set(cm.SLICE_MODELS)
    md = (tmp_path / "compile_matrix.md").read_text()
    n = data["counts"]["all"]["attempted"]
    assert re.search(rf"\*\*{n} attempted, {n} passed\*\*", md)


@pytest.mark.slow
@needs_triton
def test_full_matrix_compiles_clean(tmp_path):
    """Every registered model, every target Triton's ptxas accepts, every dtype, every
    specialisation (hours cold on 2 cores; the compile cache makes reruns minutes)."""
    res, data = _run_tool([], tmp_path, timeout=6 * 3600)
    _assert_all_pass(res, data)
    assert len(data["models"]) >= 80
