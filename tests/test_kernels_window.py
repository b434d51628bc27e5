"""Window attention op (vitzoo.kernels.window_attention): index rules, reference vs the Swin
mixer's timm-order path, the Triton kernels in the interpreter, the custom op, and Swin on it."""
from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

from interpreter_child import run_interpreted
import torch.nn.functional as F

from vitzoo.kernels import (fvcore_handles, window_attention, window_flops, window_reference,
                            window_source_index)
from vitzoo.kernels.window import window_region_ids, window_triton_unsupported
from vitzoo.layers.window import relative_position_bias, shifted_window_mask
from vitzoo.layers.window_attention import ShiftedWindowAttention

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
IS_CHILD = os.environ.get("VITZOO_WINDOW_TEST_CHILD") == "1"

# (B, H, W, heads, head_dim, window, shift, qkv_bias): the cases of KERNELS.md 3.4
MIXER_CASES = [
    (2, 14, 14, 2, 8, 7, 3, True),
    (2, 10, 10, 2, 8, 4, 2, True),     # padding 10 -> 12: padded tokens hold the qkv bias
    (2, 10, 10, 2, 8, 4, 2, False),
    (1, 24, 24, 2, 8, 12, 6, True),    # 144 tokens: several blocks
    (1, 14, 14, 1, 8, 7, 0, True),     # one head, B = 1, unshifted
    (1, 9, 13, 2, 8, (3, 5), (1, 2), True),  # rectangular window and shift, padding on both axes
]


def _mixer(nh, hd, window, shift, qkv_bias, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = ShiftedWindowAttention(nh * hd, nh, window, shift, qkv_bias=qkv_bias).to(dtype)
    with torch.no_grad():
        m.relative_position_bias_table.normal_()  # large enough that a wrong index shows
        if qkv_bias:
            m.qkv.bias.normal_()
    return m


# ----------------------------------------------------------------------------------------------
# Index rules
# ----------------------------------------------------------------------------------------------
def test_source_index_hand_computed():
    # 3x3 map padded to 4x4, window 2, shift 1: rolled row i < 3 reads row (i + 1) % 3
    idx = window_source_index((3, 3), (4, 4), (2, 2), (1, 1))
    assert idx.shape == (4, 4)
    # window (0, 0) holds rolled (0,0) (0,1) (1,0) (1,1) = source (1,1) (1,2) (2,1) (2,2)
    assert idx[0].tolist() == [1 * 4 + 1, 1 * 4 + 2, 2 * 4 + 1, 2 * 4 + 2]
    # window (1, 1): rolled (2,2) -> source (0,0); (2,3), (3,2), (3,3) are padded tokens, each
    # axis mapped on its own (a padded column keeps the rolled row: (2,3) -> (0,3))
    assert idx[3].tolist() == [0, 0 * 4 + 3, 3 * 4 + 0, 3 * 4 + 3]
    # every padded position is read exactly once
    assert sorted(idx.flatten().tolist()) == list(range(16))


@pytest.mark.parametrize("hp,wp,win,shift", [(14, 14, (7, 7), (3, 3)), (12, 12, (4, 4), (2, 2)),
                                              (9, 15, (3, 5), (1, 2)), (8, 8, (4, 4), (0, 2))])
def test_region_ids_reproduce_timm_mask(hp, wp, win, shift):
    region = window_region_ids((hp, wp), win, shift)
    mask = (region[:, :, None] != region[:, None, :]).float() * -100.0
    torch.testing.assert_close(mask, shifted_window_mask(hp, wp, win, shift))


# ----------------------------------------------------------------------------------------------
# Reference op vs the mixer's timm-order path (fp64, values and every gradient)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", MIXER_CASES)
def test_fused_mixer_path_matches_timm_order(case, monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    B, H, W, nh, hd, window, shift, qkv_bias = case
    m = _mixer(nh, hd, window, shift, qkv_bias)
    x = torch.randn(B, H, W, nh * hd, dtype=torch.float64, requires_grad=True)
    want = m(x)
    got = m.forward_fused(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    params = [x] + [p for p in m.parameters()]
    go = torch.randn_like(want)
    g_want = torch.autograd.grad(want, params, go)
    g_got = torch.autograd.grad(got, params, go)
    for (name, _), a, b in zip([("x", x)] + list(m.named_parameters()), g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda s: f"{name}: {s}")


def test_reference_float32_and_lse(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    qkv = torch.randn(2, 8, 8, 3, 2, 16)
    bias = torch.randn(2, 16, 16)
    out, lse = torch.ops.vitzoo.window_attention(qkv, bias, [4, 4], [2, 2], [8, 8], 0.25)
    assert out.shape == (2, 8, 8, 2, 16) and lse.shape == (2, 8, 8, 2)
    assert lse.dtype == torch.float32
    assert torch.equal(out, window_reference(qkv, bias, 4, 2, scale=0.25))
    # token (0, 0) sits in the last window of the rolled map with source rows 0..1 + 6..7 region mix
    q, k = qkv[0, :, :, 0, 1], qkv[0, :, :, 1, 1]
    idx = window_source_index((8, 8), (8, 8), (4, 4), (2, 2))
    region = window_region_ids((8, 8), (4, 4), (2, 2))
    w, t = divmod(int((idx.flatten() == 0).nonzero()), 16)
    keys = k.reshape(64, 16)[idx[w]]
    logits = keys @ q.reshape(64, 16)[0] * 0.25 + bias[1, t] + (region[w] != region[w, t]) * -100.0
    torch.testing.assert_close(lse[0, 0, 0, 1], torch.logsumexp(logits, 0))


# ----------------------------------------------------------------------------------------------
# Validation and dispatch
# ----------------------------------------------------------------------------------------------
def test_validation_errors():
    qkv = torch.randn(1, 8, 8, 3, 2, 16)
    with pytest.raises(ValueError, match=r"\[B, Hp, Wp, 3, heads, head_dim\]"):
        window_attention(qkv[..., 0, :, :], None, 4)
    with pytest.raises(ValueError, match="padded up to the next multiple of the window"):
        window_attention(qkv, None, 3)
    with pytest.raises(ValueError, match="padded up to the next multiple"):
        window_attention(qkv, None, 4, map_size=(4, 8))  # a whole window of padding
    with pytest.raises(ValueError, match=r"shift_size \(4, 4\) must lie in"):
        window_attention(qkv, None, 4, 4)
    with pytest.raises(ValueError, match=r"bias must have shape \[heads, N, N\] = \[2, 16, 16\]"):
        window_attention(qkv, torch.zeros(2, 16, 15), 4)
    with pytest.raises(TypeError, match="floating point"):
        window_attention(qkv.long(), None, 4)
    with pytest.raises(ValueError, match="window_size must have 2 entries"):
        window_attention(qkv, None, (4, 4, 4))


def test_triton_support_rule():
    assert window_triton_unsupported(32, 49, torch.bfloat16) is None
    assert window_triton_unsupported(8, 144, torch.float32) is None
    assert "float64" in window_triton_unsupported(32, 49, torch.float64)
    assert "head_dim 12" in window_triton_unsupported(12, 49, torch.float16)
    assert "256" in window_triton_unsupported(32, 289, torch.float16)


def test_attn_drop_falls_back_with_one_warning(monkeypatch):
    wa = sys.modules[ShiftedWindowAttention.__module__]
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors count as launchable; nothing runs
    monkeypatch.setattr(wa, "_DROPOUT_WARNED", False)
    m = ShiftedWindowAttention(16, 2, 4, 2, attn_drop=0.1)
    x = torch.randn(1, 8, 8, 16)
    assert m.eval().use_fused(x)
    m.train()
    with pytest.warns(UserWarning, match="attn_drop=0.1 .* reference path"):
        assert not m.use_fused(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not m.use_fused(x)  # once only
    assert ShiftedWindowAttention(16, 2, 4, 2).train().use_fused(x)  # no dropout: fused in training


# ----------------------------------------------------------------------------------------------
# The custom op: opcheck, FLOP counters, torch.compile, meta tensors
# ----------------------------------------------------------------------------------------------
def test_opcheck(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    qkv = torch.randn(1, 8, 8, 3, 2, 8, requires_grad=True)
    bias = torch.randn(2, 16, 16, requires_grad=True)
    op = torch.ops.vitzoo.window_attention.default
    torch.library.opcheck(op, (qkv, bias, [4, 4], [2, 2], [7, 7], 0.3))
    torch.library.opcheck(op, (qkv, None, [4, 4], [0, 0], [8, 8], 0.3))


def test_flop_counter_and_fvcore_count_the_op():
    from torch.utils.flop_counter import FlopCounterMode

    qkv = torch.randn(2, 8, 8, 3, 2, 16, requires_grad=True)
    bias = torch.randn(2, 16, 16, requires_grad=True)
    fwd = 4 * 2 * 64 * 2 * 16 * 16
    assert window_flops(qkv.shape, (4, 4)) == fwd
    with FlopCounterMode(display=False) as counter:
        window_attention(qkv, bias, 4, 2).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.vitzoo.window_attention] == fwd
    assert counts[torch.ops.vitzoo.window_attention_backward] == 2 * fwd

    fvcore = pytest.importorskip("fvcore.nn")

    class Mixer(torch.nn.Module):
        def forward(self, x):
            return window_attention(x.reshape(1, 8, 8, 3, 2, 16), None, 4, 2, map_size=(8, 8))

    handles = fvcore_handles()
    assert "vitzoo::window_attention" in handles
    analysis = fvcore.FlopCountAnalysis(Mixer(), torch.randn(1, 8, 8, 96)).set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert analysis.total() == 2 * 1 * 64 * 2 * 16 * 16  # B = 1, one per multiply-add
    assert "vitzoo::window_attention" not in analysis.unsupported_ops()


def test_torch_compile_fullgraph(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    torch._dynamo.reset()
    m = _mixer(2, 8, 4, 2, True, dtype=torch.float32)
    x = torch.randn(2, 10, 10, 16)
    compiled = torch.compile(m.forward_fused, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    g = m.relative_position_bias_table.grad.clone()
    m.zero_grad()
    ref = m(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, m.relative_position_bias_table.grad, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_meta_tensors():
    qkv = torch.empty(2, 56, 56, 3, 3, 32, device="meta")
    out = window_attention(qkv, torch.empty(3, 49, 49, device="meta"), 7, 3)
    assert out.device.type == "meta" and out.shape == (2, 56, 56, 3, 32)


# ----------------------------------------------------------------------------------------------
# Triton kernels in the interpreter (child process: TRITON_INTERPRET=1 before triton loads)
# ----------------------------------------------------------------------------------------------
# (B, H, W, heads, head_dim, window, shift, bias, dtype, forced block)
INTERP_CASES = [
    (1, 14, 14, 2, 16, 7, 3, True, "float32", None),
    (2, 10, 10, 1, 8, 4, 2, True, "float32", None),      # padding, head_dim 8 -> 16, B = 2
    (1, 10, 10, 2, 8, 4, 2, False, "float32", None),     # no bias
    (1, 24, 24, 1, 16, 12, 6, True, "float32", None),    # 3 blocks of 64: online softmax
    (1, 14, 14, 1, 16, 7, 3, True, "float32", 16),       # 4 blocks of 16: multi-block on window 7
    (1, 14, 14, 1, 32, 7, 3, True, "bfloat16", None),
    (1, 24, 24, 1, 16, 12, 6, True, "bfloat16", None),
]


def _check_triton_case(B, H, W, nh, hd, window, shift, use_bias, dtype, block, device):
    """Triton through the custom op vs the fp64 reference on the same (rounded) inputs."""
    import vitzoo.kernels._window_triton as tri

    dtype = getattr(torch, dtype)
    calls = []
    fwd, bwd = tri.window_triton_forward, tri.window_triton_backward
    tri.window_triton_forward = lambda *a: calls.append("f") or fwd(*a)
    tri.window_triton_backward = lambda *a: calls.append("b") or bwd(*a)
    old_block = os.environ.pop("VITZOO_WINDOW_BLOCK", None)
    if block:
        os.environ["VITZOO_WINDOW_BLOCK"] = str(block)
    try:
        g = torch.Generator().manual_seed(H * 10 + W + B)
        Hp, Wp = -(-H // window) * window, -(-W // window) * window
        base = torch.randn(B, Hp, Wp, 3, nh, hd, generator=g)
        bias0 = torch.randn(nh, window ** 2, window ** 2, generator=g) if use_bias else None
        go = torch.randn(B, Hp, Wp, nh, hd, generator=g).to(dtype)
        qkv = base.to(device, dtype).requires_grad_()
        bias = bias0.to(device).requires_grad_() if use_bias else None
        out = window_attention(qkv, bias, window, shift, (H, W))
        grads = torch.autograd.grad(out, [t for t in (qkv, bias) if t is not None], go.to(device))
        assert calls == ["f", "b"], f"Triton path not taken: {calls}"
        qr = base.to(dtype).double().requires_grad_()
        br = bias0.double().requires_grad_() if use_bias else None
        want = window_reference(qr, br, window, shift, (H, W))
        wgrads = torch.autograd.grad(want, [t for t in (qr, br) if t is not None], go.double())
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
        torch.testing.assert_close(out.double().cpu(), want, **tol)
        for name, a, b in zip(("dqkv", "dbias"), grads, wgrads):
            torch.testing.assert_close(a.double().cpu(), b, **tol, msg=lambda m: f"{name}: {m}")
    finally:
        tri.window_triton_forward, tri.window_triton_backward = fwd, bwd
        os.environ.pop("VITZOO_WINDOW_BLOCK", None)
        if old_block is not None:
            os.environ["VITZOO_WINDOW_BLOCK"] = old_block


def _check_swin_parity(device):
    """A real variant's layout on the Triton path: timm's weights, outputs within 1e-4 (fp32);
    a training step's gradients equal those of the reference path."""
    import timm

    import vitzoo  # noqa: F401
    from vitzoo.models.swin import checkpoint_filter_fn

    torch.manual_seed(0)
    t = timm.create_model("swin_tiny_patch4_window7_224", img_size=56).eval()
    m = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", img_size=56)
    m.load_state_dict(checkpoint_filter_fn(t.state_dict(), m))
    m = m.to(device).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(m(x.to(device)).cpu(), t(x), rtol=0, atol=1e-4)
    # dynamic_img_size: odd maps (15x9, 8x5, ...) padded inside the windows
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    from vitzoo.models.swin import SwinTransformer
    small = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7,
                 dynamic_img_size=True, num_classes=5)
    t = TimmSwin(**small).eval()
    m = SwinTransformer(**small)
    m.load_state_dict(checkpoint_filter_fn(t.state_dict(), m))
    m = m.to(device).eval()
    x = torch.randn(1, 3, 60, 36)
    with torch.no_grad():
        torch.testing.assert_close(m(x.to(device)).cpu(), t(x), rtol=0, atol=1e-4)
    # small Swin with padded stages (40 px: maps 10, 5, 3, 2 -> windows 4 shifted over 12)
    torch.manual_seed(1)
    small = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", img_size=40, window_size=4,
                              embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4),
                              drop_path_rate=0.0).to(device)
    x = torch.randn(2, 3, 40, 40, device=device)
    small(x).square().sum().backward()
    fused = {n: p.grad.clone() for n, p in small.named_parameters()}
    small.zero_grad()
    os.environ["VITZOO_KERNELS"] = "reference"
    try:
        small(x).square().sum().backward()
    finally:
        os.environ["VITZOO_KERNELS"] = "triton"
    for n, p in small.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-4, atol=1e-4,
                                   msg=lambda s: f"{n}: {s}")


@pytest.mark.skipif(not IS_CHILD, reason="runs inside test_triton_interpreter_matches_reference")
def test_interp_child_cases():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert os.environ.get("VITZOO_KERNELS") == "triton"
    for case in INTERP_CASES:
        _check_triton_case(*case, device="cpu")
        print("ok", case, flush=True)
    _check_swin_parity("cpu")
    print("ok swin", flush=True)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.skipif(IS_CHILD, reason="parent test")
def test_triton_interpreter_matches_reference():
    out = run_interpreted(__file__, "test_interp_child_cases", "VITZOO_WINDOW_TEST_CHILD", timeout=900)
    assert out.count("ok (") == len(INTERP_CASES) and "ok swin" in out, out[-4000:]


# ----------------------------------------------------------------------------------------------
# The same checks on a GPU (skipped without one), plus determinism
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", INTERP_CASES + [
    (4, 56, 56, 3, 32, 7, 3, True, "bfloat16", None),
    (2, 48, 48, 4, 32, 12, 6, True, "float32", None),
    (2, 14, 14, 4, 128, 7, 3, True, "float16", None),
    (2, 20, 20, 2, 24, 7, 3, True, "float32", None)])
def test_triton_cuda_matches_reference(case, monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    _check_triton_case(*case, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_swin_parity_and_determinism(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 patch-embed conv
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _check_swin_parity("cuda")
    qkv = torch.randn(8, 56, 56, 3, 3, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    bias = torch.randn(3, 49, 49, device="cuda", requires_grad=True)
    go = torch.randn(8, 56, 56, 3, 32, device="cuda", dtype=torch.bfloat16)
    first = torch.autograd.grad(window_attention(qkv, bias, 7, 3), (qkv, bias), go)
    second = torch.autograd.grad(window_attention(qkv, bias, 7, 3), (qkv, bias), go)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("zoo_name,size,timm_kwargs", [
    ("vitzoo_swin_tiny_patch4_window7_224", 224, {}),
    ("vitzoo_swin_tiny_patch4_window12_384", 384, dict(img_size=384, window_size=12))])
def test_cuda_swin_parity_224_384(zoo_name, size, timm_kwargs, monkeypatch):
    """Registered layouts at their sizes (window 7 and 12) on the kernels, fp32, vs timm."""
    import timm

    from vitzoo.models.swin import checkpoint_filter_fn

    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    t = timm.create_model("swin_tiny_patch4_window7_224", **timm_kwargs).cuda().eval()
    m = timm.create_model(zoo_name)
    m.load_state_dict(checkpoint_filter_fn(t.state_dict(), m))
    m = m.cuda().eval()
    x = torch.randn(2, 3, size, size, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), rtol=0, atol=1e-4)


def test_padded_qkv_bias_tokens_take_part(monkeypatch):
    """timm pads the *input*: in unshifted blocks the padded tokens are keys whose k/v are the qkv
    bias (in shifted blocks they form their own mask region). Zeroing the padded rows of qkv
    changes the output, so the op reads them."""
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    m = _mixer(2, 8, 4, 0, True)
    x = F.pad(torch.randn(1, 10, 10, 16, dtype=torch.float64), (0, 0, 0, 2, 0, 2))
    qkv = m.qkv(x).reshape(1, 12, 12, 3, 2, 8)
    bias = relative_position_bias(m.relative_position_bias_table, m.relative_position_index)
    out = window_attention(qkv, bias, 4, 0, (10, 10))
    qkv0 = qkv.clone()
    qkv0[:, 10:] = 0
    qkv0[:, :, 10:] = 0
    out0 = window_attention(qkv0, bias, 4, 0, (10, 10))
    assert not torch.allclose(out[:, 8:10, :10], out0[:, 8:10, :10])
    torch.testing.assert_close(out[:, :8, :8], out0[:, :8, :8])  # windows without padding


def _tiny_swin():
    import timm

    import vitzoo  # noqa: F401
    torch.manual_seed(0)
    return timm.create_model("vitzoo_swin_tiny_patch4_window7_224", img_size=64, embed_dim=16,
                             depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4)).eval()


@pytest.mark.filterwarnings("ignore")
def test_swin_onnx_export_legacy(tmp_path):
    """The reference path exports (the fused op is never traced into an export)."""
    torch.onnx.export(_tiny_swin(), (torch.randn(1, 3, 64, 64),), str(tmp_path / "swin.onnx"),
                      dynamo=False)
    assert (tmp_path / "swin.onnx").stat().st_size > 100_000


@pytest.mark.filterwarnings("ignore")
def test_swin_onnx_export_dynamo():
    """Issue 13: the dynamo exporter used to fail on a view of the head-transposed SDPA output."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    m, x = _tiny_swin(), torch.randn(1, 3, 64, 64)
    proto = torch.onnx.export(m, (x,), dynamo=True).model_proto
    onnx.checker.check_model(proto)
    out = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), m(x).detach(), rtol=1e-4, atol=1e-4)


def test_window_bench_module_on_cpu(monkeypatch):
    """tools/kernel_bench/window.py: the timm and zoo mixers it times compute the same thing, and
    its CPU plumbing run returns complete rows (the GPU run has the same code path)."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    bench = importlib.import_module("kernel_bench.window")
    import kernel_bench

    zoo, blk = bench.paired_mixers(14, 2, 3, "cpu", torch.float32)
    x = torch.randn(2, 14, 14, 64)
    with torch.no_grad():
        torch.testing.assert_close(zoo(x), blk._attn(x), rtol=1e-5, atol=1e-5)
    rows = kernel_bench.call_run(bench, "cpu", torch.float32, True)
    assert {r["impl"] for r in rows} == {"reference", "timm", "timm_fused", "vitzoo"}
    assert all(r["op"] == "window" and "error" not in r for r in rows)
    assert all(r["fwd_bwd_ms"] > 0 for r in rows)
    rows = {"triton": dict(fwd_ms=1.0, fwd_bwd_ms=2.0), "timm": dict(fwd_ms=3.0, fwd_bwd_ms=5.0)}
    bench._add_ratios(rows, {}, ("timm", "timm_fused"))
    assert rows["triton"]["ratio_vs"] == "timm" and rows["triton"]["speedup"] == 2.5
