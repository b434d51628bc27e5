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
