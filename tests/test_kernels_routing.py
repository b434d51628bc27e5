"""Routed attention op (vitzoo.kernels.routed_attention): reference, Triton, custom op."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interpreter_child import run_interpreted

from vitzoo.kernels import (fvcore_handles, routed_attention, routed_attention_flops,
                            routed_reference)

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
IS_CHILD = os.environ.get("VITZOO_ROUTING_TEST_CHILD") == "1"


# ----------------------------------------------------------------------------------------------
# Inputs and the oracle: dense attention over the whole map with a region mask
# ----------------------------------------------------------------------------------------------
def _routing(B: int, n_win: int, topk: int, seed: int = 0) -> torch.Tensor:
    """A routing index as BiFormer makes it: topk of a region-affinity matrix (distinct)."""
    g = torch.Generator().manual_seed(seed)
    R = n_win * n_win
    return torch.randn(B, R, R, generator=g).topk(topk, dim=-1).indices


def _inputs(B, H, W, nh, dqk, dv=None, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    dv = dqk if dv is None else dv
    q = torch.randn(B, H, W, nh, dqk, generator=g, dtype=dtype)
    k = torch.randn(B, H, W, nh, dqk, generator=g, dtype=dtype)
    v = torch.randn(B, H, W, nh, dv, generator=g, dtype=dtype)
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def dense_routed(q, k, v, r_idx, n_win, scale):
    """Full N x N attention, key masked unless its region is routed from the query's region."""
    B, H, W, nh, _ = q.shape
    rows = torch.arange(H).view(H, 1) // (H // n_win)
    cols = torch.arange(W).view(1, W) // (W // n_win)
    region = (rows * n_win + cols).reshape(-1)                         # [N]
    R = n_win * n_win
    routed = torch.zeros(B, R, R, dtype=torch.bool)
    routed.scatter_(2, r_idx, True)
    allowed = routed[:, region][:, :, region]                          # [B, Nq, Nk]
    qf, kf, vf = (t.reshape(B, H * W, nh, -1) for t in (q, k, v))
    logits = torch.einsum("bqhd,bkhd->bhqk", qf, kf) * scale
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), vf)
    return out.reshape(B, H, W, nh, -1)


# ----------------------------------------------------------------------------------------------
# Reference vs the dense oracle (values and every gradient), and the op vs the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,H,W,n_win,topk,nh,dqk,dv", [
    (2, 6, 6, 3, 2, 2, 8, 8),       # 4 tokens per region
    (1, 8, 4, 2, 1, 1, 4, 6),       # rectangular regions, dv != dqk, topk 1
    (2, 4, 6, 2, 4, 3, 5, 5),       # topk = all regions (full attention)
    (1, 9, 6, 3, 3, 2, 8, 4),       # 3x2 regions
])
def test_reference_matches_dense(B, H, W, n_win, topk, nh, dqk, dv):
    q, k, v = _inputs(B, H, W, nh, dqk, dv)
    r_idx = _routing(B, n_win, topk, seed=H * W)
    out = routed_reference(q, k, v, r_idx, n_win, 0.3)
    want = dense_routed(q, k, v, r_idx, n_win, 0.3)
    assert out.shape == (B, H, W, nh, dv)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), go)
    exp = torch.autograd.grad(want, (q, k, v), go)
    for name, a, b in zip("qkv", got, exp):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("B,H,W,n_win,topk,nh,dqk,dv", [
    (2, 6, 6, 3, 2, 2, 8, 8), (1, 8, 4, 2, 1, 1, 4, 6), (3, 4, 4, 2, 3, 2, 4, 4)])
def test_op_analytic_backward_matches_reference_autograd(B, H, W, n_win, topk, nh, dqk, dv):
    q, k, v = _inputs(B, H, W, nh, dqk, dv, seed=1)
    r_idx = _routing(B, n_win, topk, seed=5)
    out = routed_attention(q, k, v, r_idx, n_win, 0.45)
    want = routed_reference(q, k, v, r_idx, n_win, 0.45)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(out)
    for name, a, b in zip("qkv", torch.autograd.grad(out, (q, k, v), go),
                          torch.autograd.grad(want, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"d{name}: {m}")


def test_reference_chunks_batches(monkeypatch):
    """A tiny chunk budget splits the batch; results and gradients do not change."""
    import vitzoo.kernels.routing as routing

    q, k, v = _inputs(3, 4, 4, 2, 4, seed=2)
    r_idx = _routing(3, 2, 2, seed=3)
    want = routed_attention(q, k, v, r_idx, 2, 0.5)
    gw = torch.autograd.grad(want.sum(), (q, k, v))
    monkeypatch.setattr(routing, "_CHUNK_ELEMENTS", 1)
    assert routing._chunk(q, v, 2, 2) == 1
    out = routed_attention(q, k, v, r_idx, 2, 0.5)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), gw):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_reference_strided_views_int32_index_and_half():
    qkv = torch.randn(2, 6, 6, 3, 2, 8)
    q, k, v = qkv.unbind(3)  # strided views, as a qkv Linear gives them
    r_idx = _routing(2, 3, 2)
    out = routed_attention(q, k, v, r_idx, 3, 0.25)
    want = dense_routed(q.double(), k.double(), v.double(), r_idx, 3, 0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed_attention(q, k, v, r_idx.int(), 3, 0.25), out)
    out_bf16 = routed_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), r_idx, 3, 0.25)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.double(), want, rtol=3e-2, atol=3e-2)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def test_validation_errors():
    q = torch.randn(1, 6, 6, 2, 16)
    r = _routing(1, 3, 2)
    with pytest.raises(ValueError, match="5-D heads-last"):
        routed_attention(q[0], q[0], q[0], r, 3, 0.1)
    with pytest.raises(ValueError, match=r"map 6x6 is not divisible by n_win=4"):
        routed_attention(q, q, q, _routing(1, 4, 2), 4, 0.1)
    with pytest.raises(ValueError, match=r"map 7x6 is not divisible by n_win=3"):
        q7 = torch.randn(1, 7, 6, 2, 16)
        routed_attention(q7, q7, q7, r, 3, 0.1)
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        routed_attention(q, q[..., :8], q, r, 3, 0.1)
    with pytest.raises(ValueError, match="v must be"):
        routed_attention(q, q, q[:, :, :, :1], r, 3, 0.1)
    with pytest.raises(TypeError, match="share a dtype"):
        routed_attention(q, q, q.double(), r, 3, 0.1)
    with pytest.raises(TypeError, match="r_idx must be int64"):
        routed_attention(q, q, q, r.float(), 3, 0.1)
    with pytest.raises(ValueError, match=r"r_idx must be \[B, n_win\*n_win, topk\] = \[1, 9"):
        routed_attention(q, q, q, r[:, :4], 3, 0.1)
    with pytest.raises(ValueError, match=r"topk must be in \[1, 9\]"):
        routed_attention(q, q, q, torch.zeros(1, 9, 10, dtype=torch.long), 3, 0.1)
    with pytest.raises(ValueError, match=r"indices in \[0, 9\), got values in \[5, 13\]"):
        routed_attention(q, q, q, r + 5, 3, 0.1)
    with pytest.raises(ValueError, match="n_win must be a positive int"):
        routed_attention(q, q, q, r, 0, 0.1)


# ----------------------------------------------------------------------------------------------
# The custom op: opcheck, FLOP counters, torch.compile, meta tensors
# ----------------------------------------------------------------------------------------------
def test_opcheck(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    q, k, v = _inputs(2, 4, 6, 2, 8, 4, dtype=torch.float32)
    r_idx = _routing(2, 2, 3)
    torch.library.opcheck(torch.ops.vitzoo.routed_attention.default, (q, k, v, r_idx, 2, 0.3))
    qkv = torch.randn(1, 6, 6, 3, 2, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.vitzoo.routed_attention.default,
                          (*qkv.unbind(3), _routing(1, 3, 1), 3, 0.3))


def test_flop_counter_mode_counts_routed_attention():
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = _inputs(2, 6, 6, 2, 8, 4, dtype=torch.float32)
    r_idx = _routing(2, 3, 2)
    with FlopCounterMode(display=False) as counter:
        routed_attention(q, k, v, r_idx, 3, 0.3).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    fwd = 2 * (2 * 6 * 6) * 2 * (2 * 4) * (8 + 4)  # 2 * tokens * heads * keys * (dqk + dv)
    assert routed_attention_flops(q.shape, v.shape, 2, 3) == fwd
    assert counts[torch.ops.vitzoo.routed_attention] == fwd
    assert counts[torch.ops.vitzoo.routed_attention_backward] == 2 * fwd


def test_fvcore_handle_counts_macs():
    fvcore = pytest.importorskip("fvcore.nn")

    class Mixer(torch.nn.Module):
        def forward(self, x, r_idx):
            q = x.view(x.shape[0], x.shape[1], x.shape[2], 2, 16)
            return routed_attention(q, q, q, r_idx, 3, 0.25)

    handles = fvcore_handles()
    assert "vitzoo::routed_attention" in handles
    x, r_idx = torch.randn(1, 6, 9, 32), _routing(1, 3, 4)
    analysis = fvcore.FlopCountAnalysis(Mixer(), (x, r_idx)).set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    macs = 6 * 9 * 2 * (4 * 2 * 3) * (16 + 16)  # tokens * heads * keys * (dqk + dv)
    assert analysis.total() == macs
    assert "vitzoo::routed_attention" not in analysis.unsupported_ops()


def test_torch_compile_fullgraph(monkeypatch):
    # aot_eager: dynamo + AOTAutograd (no graph break allowed) without the slow CPU inductor
    # compile; routing (region means, affinity, topk) is traced in the same graph.
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    torch._dynamo.reset()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(32, 96)

        def forward(self, x):
            B, H, W, C = x.shape
            q, k, v = self.qkv(x).view(B, H, W, 3, 2, 16).unbind(3)
            qr = q.reshape(B, 3, H // 3, 3, W // 3, C).mean((2, 4)).reshape(B, 9, C)
            kr = k.reshape(B, 3, H // 3, 3, W // 3, C).mean((2, 4)).reshape(B, 9, C)
            r_idx = (qr @ kr.transpose(1, 2)).topk(2, dim=-1).indices.detach()
            return routed_attention(q, k, v, r_idx, 3, C ** -0.5).reshape(B, H, W, C)

    block = Block()
    x = torch.randn(2, 6, 6, 32)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    g_compiled = block.qkv.weight.grad.clone()
    block.qkv.weight.grad = None
    ref = block(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g_compiled, block.qkv.weight.grad)
    torch._dynamo.reset()


def test_meta_tensors():
    q = torch.empty(2, 56, 56, 2, 32, device="meta")
    v = torch.empty(2, 56, 56, 2, 16, device="meta")
    r_idx = torch.empty(2, 49, 1, dtype=torch.long, device="meta")
    out = routed_attention(q, q, v, r_idx, 7, 64 ** -0.5)
    assert out.device.type == "meta" and out.shape == (2, 56, 56, 2, 16)


def test_explicit_triton_raises_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    q = torch.randn(1, 4, 4, 1, 16)
    with pytest.raises(RuntimeError, match="routed_attention cannot run its Triton kernel"):
        routed_attention(q, q, q, _routing(1, 2, 1), 2, 0.25)


# ----------------------------------------------------------------------------------------------
# Triton kernels in the interpreter (CPU), in a child process so TRITON_INTERPRET=1 is set
# before triton is imported. The same r_idx goes to the kernel and the fp64 reference.
# ----------------------------------------------------------------------------------------------
INTERP_CASES = [
    # (B, H, W, n_win, topk, heads, dqk, dv, dtype)
    (1, 14, 14, 7, 4, 1, 16, 16, "float32"),    # 4 tokens/region (16-row padding), topk 4
    (1, 28, 28, 7, 2, 1, 32, 32, "float32"),    # 16 tokens/region, topk 2
    (1, 14, 14, 7, 4, 1, 32, 32, "bfloat16"),
    (1, 28, 28, 7, 2, 1, 16, 16, "bfloat16"),
    (2, 24, 12, 2, 3, 1, 24, 16, "float32"),    # 72 tokens: 2 query blocks, 3 key blocks;
                                                # head dims padded (24 -> 32), dv != dqk
    (1, 8, 8, 2, 2, 2, 16, 16, "float16"),
]


def _check_triton_case(B, H, W, n_win, topk, nh, dqk, dv, dtype, device, r_idx=None):
    """Triton (forced through the custom op) vs the fp64 reference in values and gradients."""
    import vitzoo.kernels._routing_triton as tri

    dtype = getattr(torch, dtype)
    calls = []
    fwd, bwd = tri.routed_triton_forward, tri.routed_triton_backward
    tri.routed_triton_forward = lambda *a: calls.append("f") or fwd(*a)
    tri.routed_triton_backward = lambda *a: calls.append("b") or bwd(*a)
    try:
        base = _inputs(B, H, W, nh, dqk, dv, dtype=torch.float32, seed=H * W + topk, grad=False)
        r_idx = _routing(B, n_win, topk, seed=H + W) if r_idx is None else r_idx
        go = torch.randn(B, H, W, nh, dv, generator=torch.Generator().manual_seed(7))
        scale = (nh * dqk) ** -0.5
        q, k, v = (t.to(device, dtype).requires_grad_() for t in base)
        out = routed_attention(q, k, v, r_idx.to(device), n_win, scale)
        grads = torch.autograd.grad(out, (q, k, v), go.to(device, dtype))
        assert calls == ["f", "b"], f"Triton path not taken: {calls}"
        qr, kr, vr = (t.to(dtype).double().requires_grad_() for t in base)
        want = routed_reference(qr, kr, vr, r_idx, n_win, scale)
        wgrads = torch.autograd.grad(want, (qr, kr, vr), go.to(dtype).double())
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
        torch.testing.assert_close(out.double().cpu(), want, **tol)
        for name, a, b in zip(("dq", "dk", "dv"), grads, wgrads):
            torch.testing.assert_close(a.double().cpu(), b, **tol, msg=lambda m: f"{name}: {m}")
    finally:
        tri.routed_triton_forward, tri.routed_triton_backward = fwd, bwd


@pytest.mark.skipif(not IS_CHILD, reason="runs inside test_triton_interpreter_matches_reference")
def test_interp_child_cases():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert os.environ.get("VITZOO_KERNELS") == "triton"
    for case in INTERP_CASES:
        _check_triton_case(*case, device="cpu")  # CPU tensors can only run in the interpreter
        print("ok", case, flush=True)
    # a region listed twice counts twice (it appears twice in the inverse routing list)
    r_idx = torch.tensor([[[0, 0], [3, 1], [2, 2], [1, 0]]])
    _check_triton_case(1, 4, 8, 2, 2, 2, 16, 16, "float32", device="cpu", r_idx=r_idx)
    print("ok duplicates", flush=True)
    # every query region routed to the same two key regions: 49 query regions (4 tokens each)
    # in key region 0's inverse list = several stacked 64-row query blocks, the last partial
    hot = torch.tensor([0, 5]).expand(1, 49, 2).contiguous()
    _check_triton_case(1, 14, 14, 7, 2, 1, 16, 16, "float32", device="cpu", r_idx=hot)
    print("ok hot regions", flush=True)
    # strided q/k/v views straight from a fused qkv tensor, int32 index
    qkv = torch.randn(1, 8, 8, 3, 2, 16)
    r32 = _routing(1, 2, 2).int()
    torch.testing.assert_close(routed_attention(*qkv.unbind(3), r32, 2, 0.2),
                               routed_reference(*qkv.unbind(3), r32, 2, 0.2),
                               rtol=1e-4, atol=1e-4)
    print("ok strided", flush=True)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.skipif(IS_CHILD, reason="parent test")
def test_triton_interpreter_matches_reference():
    out = run_interpreted(__file__, "test_interp_child_cases", "VITZOO_ROUTING_TEST_CHILD", timeout=600)
    assert out.count("ok (") == len(INTERP_CASES), out[-4000:]
    assert all(f"ok {x}" in out for x in ("duplicates", "hot regions", "strided")), out[-4000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", INTERP_CASES + [
    (4, 56, 56, 7, 1, 2, 32, 32, "bfloat16"), (4, 28, 28, 7, 4, 4, 32, 32, "bfloat16"),
    (4, 14, 14, 7, 16, 8, 32, 32, "bfloat16"), (2, 14, 14, 7, 16, 8, 32, 32, "float32")])
def test_triton_cuda_matches_reference(case, monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    _check_triton_case(*case, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_cuda_backward_is_deterministic(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    q, k, v = (t.cuda().bfloat16().requires_grad_()
               for t in _inputs(4, 28, 28, 4, 32, dtype=torch.float32, grad=False))
    r_idx = _routing(4, 7, 4).cuda()
    out = routed_attention(q, k, v, r_idx, 7, 128 ** -0.5)
    go = torch.randn_like(out)
    g1 = torch.autograd.grad(out, (q, k, v), go, retain_graph=True)
    g2 = torch.autograd.grad(out, (q, k, v), go)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ----------------------------------------------------------------------------------------------
# Benchmark module (tools/kernel_bench/routing.py) on CPU
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routing_bench():
    spec = importlib.util.spec_from_file_location("bench_kernels_routing",
                                                  ROOT / "tools" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    module = bench.kernel_bench.load("routing")
    assert module is not None and module.OP == "routing"
    return bench.kernel_bench, module


def test_bench_official_path_matches_reference(routing_bench):
    """The benchmark's official gather-then-attention computes the op (values and gradients)."""
    _, mod = routing_bench
    q, k, v = _inputs(2, 6, 9, 2, 8, 4, seed=4)
    r_idx = _routing(2, 3, 3, seed=2)
    out = mod.official_routed_attention(q, k, v, r_idx, 3, 0.3)
    want = routed_reference(q, k, v, r_idx, 3, 0.3)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), go),
                    torch.autograd.grad(want, (q, k, v), go)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_bench_run_cpu_rows(routing_bench):
    kb, mod = routing_bench
    rows = kb.call_run(mod, "cpu", torch.bfloat16, True)
    assert {r["impl"] for r in rows} == {"official", "reference"}   # no Triton timing on CPU
    assert len(rows) == 2 * len(mod.configs("cpu", True))
    for r in rows:
        assert set(kb.REQUIRED_KEYS) <= set(r) and r["op"] == "routing", r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["dtype"] == "float32", r
    assert all(r["max_abs_diff"] < 1e-5 for r in rows if r["impl"] == "reference")
    assert [c[:3] for c in mod.configs("cuda", False)] == [(56, 2, 64), (28, 4, 128),
                                                          (14, 8, 256)]


def test_triton_module_is_imported_lazily():
    code = ("import sys, torch; import vitzoo.kernels as k; "
            "q = torch.randn(1, 4, 4, 1, 16); r = torch.zeros(1, 4, 1, dtype=torch.long); "
            "k.routed_attention(q, q, q, r, 2, 0.25); "
            "print('vitzoo.kernels._routing_triton' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items()
                                           if k not in ("VITZOO_KERNELS", "TRITON_INTERPRET")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_refuses_unsupported_head_dims(monkeypatch):
    """The dispatch reason names the head dim; auto mode falls back to the reference."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")   # lets CPU tensors pass the device check
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    r_idx = _routing(1, 2, 1)
    for dqk, dv, bad in ((20, 16, "qk head_dim 20 is not a multiple of 8 in \\[16, 128\\]"),
                         (16, 12, "v head_dim 12 is below the kernels' minimum 16"),
                         (16, 136, "v head_dim 136 is above the kernels' maximum 128"),
                         (8, 16, "qk head_dim 8 is below the kernels' minimum 16")):
        q, k, v = _inputs(1, 4, 4, 1, dqk, dv, dtype=torch.float32, grad=False)
        with pytest.raises(RuntimeError, match=bad):
            routed_attention(q, k, v, r_idx, 2, 0.25)
    monkeypatch.setenv("VITZOO_KERNELS", "auto")
    q, k, v = _inputs(1, 4, 4, 1, 12, 16, dtype=torch.float32, grad=False)
    assert routed_attention(q, k, v, r_idx, 2, 0.25).shape == (1, 4, 4, 1, 16)
