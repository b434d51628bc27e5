"""Run a test file's child cases in a fresh process under Triton's CPU interpreter.

Triton reads TRITON_INTERPRET when it is imported, so kernel-vs-reference checks on CPU run in a
child pytest process with it set (and VITZOO_KERNELS=triton); the parent asserts on its output.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def run_interpreted(test_file: str, selector: str, child_flag: str, timeout: int = 600,
                    drop_env: Sequence[str] = ()) -> str:
    """pytest `-k selector` of `test_file` with `child_flag=1`; returns stdout once exactly one test passed."""
    env = dict(os.environ, TRITON_INTERPRET="1", VITZOO_KERNELS="triton", PYTHONWARNINGS="ignore",
               **{child_flag: "1"})
    for name in drop_env:
        env.pop(name, None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
           str(Path(test_file).resolve()), "-k", selector]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    log = res.stdout[-4000:] + res.stderr[-2000:]
    assert res.returncode == 0, log
    assert "1 passed" in res.stdout, log
    return res.stdout
