"""tools/bench_cpu_parity.py: zoo vs timm on the same weights, outputs checked, files written."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_parity_tool_times_both_on_the_same_weights(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_cpu_parity", ROOT / "tools" / "bench_cpu_parity.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    stem = tmp_path / "parity"
    assert tool.main(["--models", "efficientvit_m0", "--batches", "1", "--warmup", "1", "--repeats", "2",
                      "--out", str(stem)]) == 0
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["max_abs_diff"] < 1e-4 and rows[0]["ratio"] > 0
    assert "| efficientvit_m0 | 1 |" in stem.with_suffix(".md").read_text()
