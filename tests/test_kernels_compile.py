"""sm_90 / sm_80 ahead-of-time compiles of every Triton kernel, with the launches' real arguments.

This is the CI evidence that the kernels run on tensor cores: each op's call below goes through
the public op (forward and backward) with ``VITZOO_KERNELS=triton``; every launch it makes is
captured (``tests/triton_aot.py``), compiled for Hopper and Ampere, and its PTX must contain
``wgmma`` (sm_90) or ``mma.sync`` (sm_80), and the ptxas that Triton itself chose for the target
(``ptxas`` or, on Triton 3.9+, ``ptxas-blackwell``; never a path of ours) must report no spills.
An element-wise kernel (FMA + shuffles) fails this test. fp32 cases set
``torch.set_float32_matmul_precision("high")``: the kernels' TF32 path, on tensor cores.

Add a kernel op by adding one entry to ``CALLS``: a function that calls the op forward and
backward at the shapes the models use. Every registered model's launches, on every target and
dtype, are in the compile matrix (``tools/compile_matrix.py``, ``tests/test_compile_matrix.py``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
IS_CHILD = os.environ.get("VITZOO_COMPILE_CHILD") == "1"
MAX_REGISTERS = 255


def _randn(*shape, dtype, grad=True):
    import torch
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def _na2d_call(dtype_name: str, shapes) -> Callable[[], None]:
    def call():
        import torch
        from vitzoo.kernels import na2d
        dtype = getattr(torch, dtype_name)
        for (B, H, W, nh, d, ks, dil, with_rpb) in shapes:
            q, k, v = (_randn(B, H, W, nh, d, dtype=dtype) for _ in range(3))
            rpb = _randn(nh, 2 * ks - 1, 2 * ks - 1, dtype=torch.float32) if with_rpb else None
            out = na2d(q, k, v, ks, dil, rpb=rpb)
            out.float().sum().backward()
    return call


# NAT/DiNAT-tiny layer shapes at 224 px (batch 2 keeps tensors small; launches are recorded,
# not run): stage 1 dil 1 / dil 8, stage 2 dil 4, stage 3 dil 1 / dil 2, stage 4 (7x7).
_NA_SHAPES = [
    (2, 56, 56, 2, 32, 7, 1, True), (2, 56, 56, 2, 32, 7, 8, True),
    (2, 28, 28, 4, 32, 7, 4, True), (2, 14, 14, 8, 32, 7, 1, True),
    (2, 14, 14, 8, 32, 7, 2, True), (2, 7, 7, 16, 32, 7, 1, True),
    (2, 56, 56, 2, 64, 7, 1, False),
    # the rest of the supported range: head_dim 64/128, dense groups at 64/128, k 11/13
    (2, 14, 14, 4, 64, 7, 2, True), (2, 14, 14, 4, 128, 7, 2, True),
    (2, 28, 28, 4, 32, 11, 1, True), (2, 28, 28, 4, 128, 13, 1, True),
]

def _window_call(dtype_name: str, shapes) -> Callable[[], None]:
    def call():
        import torch
        from vitzoo.kernels import window_attention
        dtype = getattr(torch, dtype_name)
        for (B, H, W, nh, d, ws, shift) in shapes:
            qkv = _randn(B, H, W, 3, nh, d, dtype=dtype)
            bias = _randn(nh, ws * ws, ws * ws, dtype=torch.float32)
            window_attention(qkv, bias, ws, shift).float().sum().backward()
    return call


# Swin-T stages at 224 (window 7, unshifted and shifted; 7x7 has no shift) and a window-12
# stage of the 384 models (several key blocks, online softmax, blocked backward)
_WINDOW_SHAPES = [
    (2, 56, 56, 3, 32, 7, 0), (2, 56, 56, 3, 32, 7, 3), (2, 28, 28, 6, 32, 7, 3),
    (2, 14, 14, 12, 32, 7, 3), (2, 7, 7, 24, 32, 7, 0), (2, 48, 48, 4, 32, 12, 6),
]

def _routed_call(dtype_name: str, shapes) -> Callable[[], None]:
    def call():
        import torch
        from vitzoo.kernels import routed_attention
        dtype = getattr(torch, dtype_name)
        for (B, H, W, n_win, topk, nh, d) in shapes:
            q, k, v = (_randn(B, H, W, nh, d, dtype=dtype) for _ in range(3))
            r_idx = torch.randn(B, n_win ** 2, n_win ** 2).topk(topk, dim=-1).indices
            out = routed_attention(q, k, v, r_idx, n_win, (nh * d) ** -0.5)
            out.float().sum().backward()
    return call


# BiFormer-T routed stages at 224 (n_win 7): 64 tokens/region topk 1, 16 topk 4, 4 topk 16
_ROUTED_SHAPES = [(2, 56, 56, 7, 1, 2, 32), (2, 28, 28, 7, 4, 4, 32), (2, 14, 14, 7, 16, 8, 32)]

CALLS: Dict[str, Callable[[], None]] = {
    "na2d_bf16": _na2d_call("bfloat16", _NA_SHAPES),
    "na2d_fp32_tf32": _na2d_call("float32", _NA_SHAPES[:2]),
    "routed_bf16": _routed_call("bfloat16", _ROUTED_SHAPES),
    "routed_fp32_tf32": _routed_call("float32", _ROUTED_SHAPES[:1]),
    "window_bf16": _window_call("bfloat16", _WINDOW_SHAPES),
    "window_fp32_tf32": _window_call("float32", _WINDOW_SHAPES[1:2]),
}


def _child(case: str, arch: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from triton_aot import capture, compile_launch

    os.environ["VITZOO_KERNELS"] = "triton"
    os.environ["VITZOO_KERNEL_TARGET"] = str(arch)     # the launchers' tile table for this target
    for name in ("VITZOO_FP32_PRECISION", "VITZOO_NA_FP32_PRECISION"):
        os.environ.pop(name, None)
    torch.set_float32_matmul_precision("high")          # fp32 cases: the TF32 tensor-core path
    launches = capture(CALLS[case])
    reports = []
    for launch in launches:
        r = compile_launch(launch, arch)
        reports.append(dict(name=r.name, tc=r.tensor_core_ops, regs=r.registers,
                            spills=r.spill_bytes, local=r.local_bytes, smem=r.shared,
                            ptxas=r.ptxas, ptxas_version=r.ptxas_version,
                            meta={k: repr(v) for k, v in r.meta.items()}))
    print("REPORT" + json.dumps(reports))


def _run_child(case: str, arch: int):
    env = dict(os.environ, VITZOO_COMPILE_CHILD="1", PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_kernels_compile as t; t._child({case!r}, {arch})")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=900, cwd=str(ROOT))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


@pytest.mark.skipif(not HAS_TRITON or IS_CHILD, reason="needs the triton package")
@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("case", sorted(CALLS))
def test_every_kernel_compiles_to_tensor_cores(case, arch):
    reports = _run_child(case, arch)
    assert reports, f"{case}: no Triton launch was captured (did the op take the Triton path?)"
    want = "wgmma" if arch == 90 else "mma.sync"
    assemblers = {(r["ptxas"], r["ptxas_version"]) for r in reports}
    print(f"sm_{arch}: assembled by " + ", ".join(f"{p} (CUDA {v})" for p, v in assemblers))
    lines = [f"{r['name']}: regs={r['regs']} spills={r['spills']} local={r['local']} "
             f"smem={r['smem']} tc={r['tc']} meta={r['meta']}" for r in reports]
    print("\n".join(lines))
    for r, line in zip(reports, lines):
        if r["name"].endswith("_preprocess") or "delta" in r["name"]:
            continue  # delta = rowsum(dO * O) has no matmul by nature
        assert any(want in op for op in r["tc"]) or (arch == 90 and r["tc"]), \
            f"{case} sm_{arch}: no tensor-core instruction in {line}"
        assert r["spills"] == 0 and r["local"] == 0, f"{case} sm_{arch}: spills in {line}"
        assert r["regs"] <= MAX_REGISTERS, line


@pytest.mark.skipif(not HAS_TRITON or IS_CHILD, reason="needs the triton package")
@pytest.mark.parametrize("arch", [80, 90, 100, 120])
def test_the_assembler_is_the_one_triton_chose(arch):
    """Triton 3.9 emits PTX for ``ptxas-blackwell`` and ships an older ``ptxas`` beside it: the
    compile tests must run (and report) the one Triton's own backend picks for the target."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import triton_aot
    from triton.backends.nvidia import compiler as nv

    path, version = triton_aot.ptxas_for(arch)
    assert os.path.isfile(path) and os.access(path, os.X_OK), path
    assert version.replace(".", "").isdigit(), version
    if hasattr(nv, "get_ptxas"):
        getter = nv.get_ptxas
        tool = getter(arch) if getter.__code__.co_argcount else getter()
        assert (path, version) == (tool.path, tool.version)
    out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    assert f"release {version}" in out, out
