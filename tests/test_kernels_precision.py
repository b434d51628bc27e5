"""The one fp32 rule of the three kernel ops (na2d, window_attention, routed_attention).

fp32 dots follow ``torch.get_float32_matmul_precision()``: ``"highest"`` -> IEEE, ``"high"`` /
``"medium"`` -> TF32 tensor-core dots; ``VITZOO_FP32_PRECISION`` overrides it for all three ops.

* plumbing (in-process): the ``PREC`` constexpr the launchers pass follows torch's setting;
* numerics (Triton's CPU interpreter, child process): at ``"highest"`` every op's output and
  gradients stay within 1e-4 of an fp64 reference; at ``"high"`` the error is TF32's (the
  interpreter emulates TF32's 10-bit operands, see ``kernels/_triton_dot.py``), i.e. clearly
  above IEEE's and below 1e-2 (errors relative to max(1, max |reference|)). The child prints the
  measured errors (README "Kernels" quotes them).
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from interpreter_child import run_interpreted

HAS_TRITON = importlib.util.find_spec("triton") is not None
IS_CHILD = os.environ.get("VITZOO_PRECISION_CHILD") == "1"


@pytest.fixture
def matmul_precision():
    saved = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(saved)


def test_fp32_rule_follows_torch(matmul_precision, monkeypatch):
    from vitzoo.kernels._precision import dot_precision, fp32_precision

    monkeypatch.delenv("VITZOO_FP32_PRECISION", raising=False)
    monkeypatch.delenv("VITZOO_NA_FP32_PRECISION", raising=False)
    for setting, want in (("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")):
        matmul_precision(setting)
        assert fp32_precision() == want, setting
        assert dot_precision(torch.float32) == want
        assert dot_precision(torch.bfloat16) == "tf32"      # 16-bit dots: always tensor cores
    matmul_precision("high")
    monkeypatch.setenv("VITZOO_FP32_PRECISION", "ieee")      # the override wins, both ways
    assert fp32_precision() == "ieee"
    matmul_precision("highest")
    monkeypatch.setenv("VITZOO_FP32_PRECISION", "tf32")
    assert fp32_precision() == "tf32"
    monkeypatch.setenv("VITZOO_FP32_PRECISION", "fast")
    with pytest.raises(ValueError, match="VITZOO_FP32_PRECISION='fast' is not one of"):
        fp32_precision()


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_dot_meta_and_launch_config_follow_torch(matmul_precision, monkeypatch):
    """The constexpr every launcher passes (``dot_meta``) and the tile table it picks change with
    torch's setting: IEEE fp32 NA tiles are 4x8, TF32 ones 8x8."""
    from vitzoo.kernels._launch_config import launch_config
    from vitzoo.kernels._triton_dot import dot_meta

    monkeypatch.delenv("VITZOO_FP32_PRECISION", raising=False)
    monkeypatch.delenv("VITZOO_NA_FP32_PRECISION", raising=False)
    monkeypatch.delenv("VITZOO_NA_TILE", raising=False)
    shape = dict(H=56, W=56, kernel_size=(7, 7), dilation=(1, 1), head_dim=32)
    matmul_precision("highest")
    assert dot_meta(torch.float32)["PREC"] == "ieee"
    assert launch_config("na", "fwd", 90, torch.float32, **shape)["TH"] == 4
    matmul_precision("high")
    assert dot_meta(torch.float32)["PREC"] == "tf32"
    assert launch_config("na", "fwd", 90, torch.float32, **shape)["TH"] == 8


# ----------------------------------------------------------------------------------------------
# Numerics under Triton's CPU interpreter
# ----------------------------------------------------------------------------------------------
def _errors(run_op, inputs64):
    """Max abs error of the output and of every gradient, each divided by max(1, max |ref|)
    (fp32 kernel vs fp64 reference), and whether all meet ``assert_close(rtol=atol=1e-4)``."""
    g = torch.Generator().manual_seed(0)
    xs32 = [x.float().requires_grad_(x.requires_grad) for x in inputs64]
    xs64 = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs64]
    os.environ["VITZOO_KERNELS"] = "triton"
    out = run_op(*xs32)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, [x for x in xs32 if x.requires_grad], go.float())
    os.environ["VITZOO_KERNELS"] = "reference"
    want = run_op(*xs64)
    wgrads = torch.autograd.grad(want, [x for x in xs64 if x.requires_grad], go)
    os.environ["VITZOO_KERNELS"] = "triton"
    pairs = [(out.double(), want)] + [(a.double(), b) for a, b in zip(grads, wgrads)]
    errs = [((a - b).abs().max() / b.abs().max().clamp(min=1)).item() for a, b in pairs]
    close = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in pairs)
    return errs, close


def _cases():
    from vitzoo.kernels import na2d, routed_attention, window_attention

    g = torch.Generator().manual_seed(1)

    def rnd(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)

    r_idx = torch.randn(1, 4, 4, generator=g).topk(2, dim=-1).indices
    return {
        "na2d": (lambda q, k, v, rpb: na2d(q, k, v, 5, 1, rpb=rpb),
                 [rnd(1, 9, 10, 1, 32), rnd(1, 9, 10, 1, 32), rnd(1, 9, 10, 1, 32),
                  rnd(1, 9, 9)]),
        "window_attention": (lambda qkv, bias: window_attention(qkv, bias, 7, 3),
                             [rnd(1, 14, 14, 3, 1, 32), rnd(1, 49, 49)]),
        "routed_attention": (lambda q, k, v: routed_attention(q, k, v, r_idx, 2, 32 ** -0.5),
                             [rnd(1, 8, 8, 1, 32), rnd(1, 8, 8, 1, 32), rnd(1, 8, 8, 1, 32)]),
    }


@pytest.mark.skipif(not IS_CHILD, reason="runs inside test_fp32_precision_numerics")
def test_precision_child():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    for name, (op, inputs) in _cases().items():
        for setting in ("highest", "high"):
            torch.set_float32_matmul_precision(setting)
            errs, close = _errors(op, inputs)
            print(f"ERR {name} {setting} out={errs[0]:.1e} grads={max(errs[1:]):.1e}", flush=True)
            if setting == "highest":
                assert close and max(errs) <= 1e-5, (name, setting, errs)
            else:   # TF32 really happened (10-bit operands), and stays small
                assert 1e-5 < max(errs) <= 1e-2, (name, setting, errs)
    torch.set_float32_matmul_precision("highest")


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.skipif(IS_CHILD, reason="parent test")
def test_fp32_precision_numerics():
    out = run_interpreted(__file__, "test_precision_child", "VITZOO_PRECISION_CHILD",
                          timeout=600, drop_env=("VITZOO_FP32_PRECISION", "VITZOO_NA_FP32_PRECISION",
                                                 "VITZOO_NA_TILE", "VITZOO_WINDOW_BLOCK"))
    lines = [x for x in out.splitlines() if x.startswith("ERR ")]
    print("\n".join(lines))
    assert len(lines) == 6, out[-3000:]


# ----------------------------------------------------------------------------------------------
# Per-target launch configurations (pure Python, no GPU)
# ----------------------------------------------------------------------------------------------
_NA_SHAPES = [(56, 56, 7, 1, 32), (56, 56, 7, 8, 32), (7, 7, 7, 1, 32), (28, 28, 11, 1, 64),
              (28, 28, 13, 1, 128), (1, 300, 9, 3, 64)]
_MODES = [("bfloat16", None), ("float16", None), ("float32", "ieee"), ("float32", "tf32")]


def test_launch_config_every_target_and_dtype():
    """Every (op, kernel, target, dtype) has a config whose dots are >= 16 on each side, and the
    ~99 KB shared-memory parts never get more pipeline stages than sm_80 / sm_90."""
    from vitzoo.kernels._launch_config import KERNELS, SMEM_BYTES, TARGETS, launch_config

    assert {80, 86, 89, 90, 100, 120} <= set(TARGETS) and SMEM_BYTES[89] < SMEM_BYTES[80]
    seen = set()
    for dtype, fp32 in _MODES:
        for (H, W, k, dil, d) in _NA_SHAPES:
            ks = (1, k) if H == 1 else (k, k)
            shape = dict(H=H, W=W, kernel_size=ks, dilation=(1, dil) if H == 1 else (dil, dil),
                         head_dim=d)
            for kernel in ("fwd", "bwd"):
                cfgs = {t: launch_config("na", kernel, t, dtype, fp32, **shape) for t in TARGETS}
                for c in cfgs.values():
                    assert c["TH"] * c["TW"] >= 16 and c["RPC"] * c["CW"] >= 16, c
                    assert c["BLOCK_D"] >= max(16, d), c
                assert cfgs[89]["num_stages"] <= cfgs[80]["num_stages"] <= cfgs[90]["num_stages"]
                seen.add(("na", kernel))
        for tokens, d in ((49, 32), (144, 32), (49, 64), (144, 128)):
            for kernel in ("fwd", "bwd"):
                cfgs = {t: launch_config("window", kernel, t, dtype, fp32, tokens=tokens, head_dim=d)
                        for t in TARGETS}
                for c in cfgs.values():
                    assert c["BLOCK"] >= 16 and c["NB"] * c["BLOCK"] >= tokens, c
                assert cfgs[89]["num_stages"] <= cfgs[80]["num_stages"]
                seen.add(("window", kernel))
        for w2, topk, dqk in ((64, 1, 32), (16, 4, 32), (4, 16, 64), (64, 4, 128)):
            for kernel in ("fwd", "dq", "dkdv"):
                cfgs = {t: launch_config("routed", kernel, t, dtype, fp32, w2=w2, topk=topk,
                                         dqk=dqk, dv=dqk) for t in TARGETS}
                for c in cfgs.values():
                    assert min(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_DQK"]) >= 16, c
                assert cfgs[89]["num_stages"] <= cfgs[80]["num_stages"]
                seen.add(("routed", kernel))
    assert seen == set(KERNELS)
    with pytest.raises(ValueError, match="unknown"):
        launch_config("flash", "fwd", 90, "bfloat16")


def test_launch_config_follows_the_device_target(monkeypatch):
    """The runtime target: VITZOO_KERNEL_TARGET when set, else the device's capability (CPU
    tensors: the default table)."""
    from vitzoo.kernels._launch_config import DEFAULT_TARGET, device_target

    monkeypatch.delenv("VITZOO_KERNEL_TARGET", raising=False)
    assert device_target(torch.device("cpu")) == DEFAULT_TARGET
    monkeypatch.setenv("VITZOO_KERNEL_TARGET", "sm_89")
    assert device_target(torch.device("cpu")) == 89
    monkeypatch.setenv("VITZOO_KERNEL_TARGET", "ampere")
    with pytest.raises(ValueError, match="VITZOO_KERNEL_TARGET"):
        device_target(torch.device("cpu"))
