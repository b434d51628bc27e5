"""Neighborhood attention ops (vitzoo.kernels.na1d / na2d): index rules, reference, Triton, op."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interpreter_child import run_interpreted

from vitzoo.kernels import (fvcore_handles, na1d, na2d, na_flops, na_reference, neighbor_index,
                            rpb_index, select_backend, window_start)

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
IS_CHILD = os.environ.get("VITZOO_NA_TEST_CHILD") == "1"


# ----------------------------------------------------------------------------------------------
# Oracles: NATTEN 0.17's per-axis rules written out case by case, and a dense masked attention.
# ----------------------------------------------------------------------------------------------
def natten_window_start(i: int, L: int, k: int, d: int) -> int:
    r = k // 2
    if d == 1:
        start = max(i - r, 0)
        return start + (L - i - r - 1 if i + r >= L else 0)
    if i - r * d < 0:
        return i % d
    if i + r * d >= L:
        full = (L // d) * d
        rest = L - full
        if i % d < rest:
            return L - rest + i % d - 2 * r * d
        return full + i % d - k * d
    return i - r * d


def natten_pb_start(i: int, L: int, k: int, d: int) -> int:
    r = k // 2
    if d == 1:
        out = r
        if i < r:
            out += r - i
        if i + r >= L:
            out += L - i - 1 - r
        return out
    if i - r * d < 0:
        return k - 1 - i // d
    if i + r * d >= L:
        return (L - i - 1) // d
    return r


def dense_na2d(q, k, v, ks, dil, rpb, scale):
    """Full N x N attention with a mask built from the per-axis tables (tiny maps only)."""
    B, H, W, nh, D = q.shape
    keys_h, bias_h = neighbor_index(H, ks[0], dil[0]), rpb_index(H, ks[0], dil[0])
    keys_w, bias_w = neighbor_index(W, ks[1], dil[1]), rpb_index(W, ks[1], dil[1])
    bias = torch.full((nh, H, W, H, W), float("-inf"), dtype=q.dtype)
    i, j, a, c = torch.meshgrid(torch.arange(H), torch.arange(W), torch.arange(ks[0]),
                                torch.arange(ks[1]), indexing="ij")
    val = rpb[:, bias_h[i, a], bias_w[j, c]] if rpb is not None else 0.0
    bias[:, i, j, keys_h[i, a], keys_w[j, c]] = val  # each (query, neighbour) pair, no loops
    logits = torch.einsum("bijhd,bxyhd->bhijxy", q, k) * scale + bias
    p = logits.reshape(B, nh, H, W, H * W).softmax(-1).reshape(logits.shape)
    return torch.einsum("bhijxy,bxyhd->bijhd", p, v)


def _inputs(shape, dtype=torch.float64, rpb_shape=None, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g, dtype=dtype).requires_grad_(grad) for _ in range(3))
    rpb = None
    if rpb_shape is not None:
        rpb = torch.randn(rpb_shape, generator=g, dtype=dtype).requires_grad_(grad)
    return q, k, v, rpb


# ----------------------------------------------------------------------------------------------
# (2) Index rules: hand-computed cases
# ----------------------------------------------------------------------------------------------
def test_index_rules_no_dilation_hand_computed():
    # L=7, k=3: windows clamp at both borders, bias shifts there (NATTEN pb_start 2 / 1 / 0).
    assert neighbor_index(7, 3).tolist() == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4],
                                             [3, 4, 5], [4, 5, 6], [4, 5, 6]]
    assert rpb_index(7, 3).tolist() == [[2, 3, 4]] + [[1, 2, 3]] * 5 + [[0, 1, 2]]
    # k=5 on L=5: every query sees the whole axis; bias index = key - query + 4.
    assert neighbor_index(5, 5).tolist() == [[0, 1, 2, 3, 4]] * 5
    assert rpb_index(5, 5)[0].tolist() == [4, 5, 6, 7, 8]
    assert rpb_index(5, 5)[4].tolist() == [0, 1, 2, 3, 4]


def test_index_rules_dilation_non_divisible_hand_computed():
    # L=7, k=3, d=2: group 0 = (0,2,4,6) (length 4), group 1 = (1,3,5) (length 3).
    assert neighbor_index(7, 3, 2).tolist() == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5],
                                                [2, 4, 6], [1, 3, 5], [2, 4, 6]]
    assert rpb_index(7, 3, 2).tolist() == [[2, 3, 4], [2, 3, 4], [1, 2, 3], [1, 2, 3],
                                           [1, 2, 3], [0, 1, 2], [0, 1, 2]]
    # L=10, k=3, d=3: groups (0,3,6,9) / (1,4,7) / (2,5,8).
    keys, bias = neighbor_index(10, 3, 3), rpb_index(10, 3, 3)
    assert keys[9].tolist() == [3, 6, 9] and bias[9].tolist() == [0, 1, 2]
    assert keys[6].tolist() == [3, 6, 9] and bias[6].tolist() == [1, 2, 3]
    assert keys[7].tolist() == [1, 4, 7] and bias[7].tolist() == [0, 1, 2]  # short group's end
    assert keys[4].tolist() == [1, 4, 7] and bias[4].tolist() == [1, 2, 3]
    assert keys[0].tolist() == [0, 3, 6] and bias[0].tolist() == [2, 3, 4]
    assert window_start(8, 10, 3, 3) == 2 and window_start(9, 10, 3, 3) == 3


@pytest.mark.parametrize("L,k,d", [(L, k, d) for L in (7, 10, 13, 16, 23) for k in (3, 5, 7)
                                   for d in (1, 2, 3, 4) if k * d <= L])
def test_index_rules_match_natten_formulas(L, k, d):
    keys, bias = neighbor_index(L, k, d), rpb_index(L, k, d)
    for i in range(L):
        start = natten_window_start(i, L, k, d)
        assert window_start(i, L, k, d) == start
        assert keys[i].tolist() == [start + t * d for t in range(k)]
        pb = natten_pb_start(i, L, k, d)
        assert bias[i].tolist() == [pb + t for t in range(k)]
        assert i in keys[i].tolist()  # a query always sees itself


# ----------------------------------------------------------------------------------------------
# (1) Reference vs dense masked attention (values and every gradient)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,ks,dil,use_rpb", [
    ((7, 9), (3, 3), (1, 1), True),
    ((9, 11), (3, 3), (2, 3), True),     # dilation, non-divisible groups
    ((12, 10), (5, 3), (2, 3), False),   # rectangular kernel, no rpb
    ((7, 7), (7, 7), (1, 1), True),      # map exactly k
    ((14, 10), (7, 5), (2, 2), True),    # map exactly k*d
    ((15, 8), (3, 5), (5, 1), True),
])
def test_reference_matches_dense(hw, ks, dil, use_rpb):
    nh = 2
    q, k, v, rpb = _inputs((2, *hw, nh, 8), rpb_shape=(nh, 2 * ks[0] - 1, 2 * ks[1] - 1)
                           if use_rpb else None)
    out = na2d(q, k, v, ks, dil, rpb=rpb, scale=0.7)
    want = dense_na2d(q, k, v, ks, dil, rpb, 0.7)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    params = [t for t in (q, k, v, rpb) if t is not None]
    go = torch.randn_like(out)
    got = torch.autograd.grad(out, params, go)
    exp = torch.autograd.grad(want, params, go)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_reference_1d_matches_dense():
    q, k, v, rpb = _inputs((2, 13, 2, 8), rpb_shape=(2, 9))
    out = na1d(q, k, v, 5, 2, rpb=rpb)
    want = dense_na2d(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), (1, 5), (1, 2),
                      rpb.unsqueeze(1), 8 ** -0.5).squeeze(1)
    torch.testing.assert_close(out, want)
    got = torch.autograd.grad(out.sum(), (q, rpb))
    exp = torch.autograd.grad(want.sum(), (q, rpb))
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b)


def test_reference_float32_and_noncontiguous_inputs():
    qkv = torch.randn(1, 8, 9, 3, 2, 16)
    q, k, v = qkv.unbind(3)  # strided views, as a qkv Linear gives them
    out = na2d(q, k, v, 3, 2)
    want = dense_na2d(q.double(), k.double(), v.double(), (3, 3), (2, 2), None, 0.25)
    assert out.dtype == torch.float32 and out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, na_reference(q, k, v, 3, 2))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def test_validation_errors():
    q = torch.randn(1, 6, 7, 2, 16)
    with pytest.raises(ValueError, match="5-D heads-last"):
        na2d(q[0], q[0], q[0], 3)
    with pytest.raises(ValueError, match="same shape"):
        na2d(q, q, q[:, :5], 3)
    with pytest.raises(ValueError, match="odd"):
        na2d(q, q, q, 4)
    with pytest.raises(ValueError, match="odd"):
        na2d(q, q, q, 15)
    with pytest.raises(ValueError, match=r"3 \* 3 = 9 exceeds the feature map size 6.*pad"):
        na2d(q, q, q, 3, 3)
    with pytest.raises(ValueError, match=r"rpb must have shape .*\[2, 5, 5\]"):
        na2d(q, q, q, 3, rpb=torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="4-D heads-last"):
        na1d(q, q, q, 3)
    with pytest.raises(TypeError, match="dtype"):
        na2d(q, q, q.double(), 3)
    with pytest.raises(ValueError, match="rpb must have shape"):
        na1d(q[:, 0], q[:, 0], q[:, 0], 3, rpb=torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------
# (3) Triton kernels in the interpreter (CPU). Runs in child processes so TRITON_INTERPRET=1 is
# set before triton (imported by torch) is loaded. ``tile`` "4x4" sets VITZOO_NA_TILE so tiny
# maps span several query/key tiles and the chunk loops run several times; "" = the launcher's
# own tile table (8x8 tiles, the dense single-chunk path for groups <= 8x8); "ieee" = the table
# for IEEE fp32 dots (4x8 tiles). In the interpreter "" runs fp32 with the TF32 setting, whose
# tiles the tensor-core path uses: the interpreter computes every dot in full fp32 anyway.
# ----------------------------------------------------------------------------------------------
INTERP_CASES = [
    # (tile, B, H, W, heads, head_dim, ks, dil, rpb, dtype)
    ("4x4", 1, 5, 6, 2, 16, (3, 3), (1, 1), True, "float32"),     # borders, non-square
    ("4x4", 1, 9, 7, 1, 16, (3, 3), (3, 2), True, "float32"),     # dilation, unequal groups
    ("4x4", 2, 13, 10, 1, 8, (5, 3), (2, 3), False, "float32"),   # head_dim 8, rect. kernel
    ("4x4", 1, 12, 12, 1, 32, (7, 7), (1, 1), True, "float32"),   # k 7: multi-chunk regions
    ("4x4", 1, 16, 9, 1, 16, (3, 3), (4, 3), True, "float32"),    # dilation 4
    ("4x4", 1, 14, 14, 1, 64, (7, 7), (2, 2), True, "float32"),   # k*d = map side, head_dim 64
    ("4x4", 1, 11, 20, 1, 16, (3, 9), (1, 2), True, "float32"),   # wide kernel: column chunks
    ("", 1, 14, 14, 2, 32, (7, 7), (2, 2), True, "float32"),      # dense path (groups = window)
    ("", 1, 7, 7, 1, 16, (5, 5), (1, 1), True, "float32"),        # dense path, clamped windows
    ("", 1, 10, 17, 1, 16, (5, 5), (1, 1), True, "float32"),      # 8x8 tiles
    ("", 1, 20, 18, 1, 24, (11, 13), (1, 1), True, "float32"),    # k 13: 32-wide chunks
    ("ieee", 1, 11, 13, 1, 16, (5, 7), (1, 1), True, "float32"),  # IEEE fp32 tiles
    ("4x4", 1, 9, 10, 1, 16, (3, 3), (1, 2), True, "bfloat16"),
    ("", 1, 14, 14, 1, 32, (7, 7), (2, 2), True, "bfloat16"),     # dense path in bf16
    ("4x4", 1, 8, 9, 1, 16, (5, 3), (1, 1), False, "float16"),
]


def _check_triton_case(tile, B, H, W, nh, hd, ks, dil, use_rpb, dtype, device):
    """Triton (forced through the custom op) vs the fp64 reference on the same rounded inputs:
    output and every gradient (1e-4 for fp32, 3e-2 for 16-bit)."""
    import vitzoo.kernels._neighborhood_triton as tri

    dtype = getattr(torch, dtype)
    calls = []
    fwd, bwd = tri.na2d_triton_forward, tri.na2d_triton_backward
    tri.na2d_triton_forward = lambda *a: calls.append("f") or fwd(*a)
    tri.na2d_triton_backward = lambda *a: calls.append("b") or bwd(*a)
    old_tile = os.environ.pop("VITZOO_NA_TILE", None)
    old_prec = os.environ.pop("VITZOO_FP32_PRECISION", None)
    if tile not in ("", "ieee"):
        os.environ["VITZOO_NA_TILE"] = tile
    if tile == "" and device == "cpu":   # 8x8 tiles (fewer programs), IEEE-exact in the interpreter
        os.environ["VITZOO_FP32_PRECISION"] = "tf32x3"
    try:
        g = torch.Generator().manual_seed(B * 100 + H * 10 + W)
        base = [torch.randn(B, H, W, nh, hd, generator=g) for _ in range(3)]
        rpb0 = torch.randn(nh, 2 * ks[0] - 1, 2 * ks[1] - 1, generator=g) if use_rpb else None
        go = torch.randn(B, H, W, nh, hd, generator=g)
        q, k, v = (t.to(device, dtype).requires_grad_() for t in base)
        rpb = rpb0.to(device).requires_grad_() if use_rpb else None
        out = na2d(q, k, v, ks, dil, rpb=rpb)
        grads = torch.autograd.grad(out, [t for t in (q, k, v, rpb) if t is not None],
                                    go.to(device, dtype))
        assert calls == ["f", "b"], f"Triton path not taken: {calls}"
        qr, kr, vr = (t.to(dtype).double().requires_grad_() for t in base)
        rr = rpb0.double().requires_grad_() if use_rpb else None
        want = na_reference(qr, kr, vr, ks, dil, rpb=rr)
        wgrads = torch.autograd.grad(want, [t for t in (qr, kr, vr, rr) if t is not None],
                                     go.to(dtype).double())
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
        torch.testing.assert_close(out.double().cpu(), want, **tol)
        for name, a, b in zip(("dq", "dk", "dv", "drpb"), grads, wgrads):
            torch.testing.assert_close(a.double().cpu(), b, **tol, msg=lambda m: f"{name}: {m}")
    finally:
        tri.na2d_triton_forward, tri.na2d_triton_backward = fwd, bwd
        os.environ.pop("VITZOO_NA_TILE", None)
        os.environ.pop("VITZOO_FP32_PRECISION", None)
        if old_tile is not None:
            os.environ["VITZOO_NA_TILE"] = old_tile
        if old_prec is not None:
            os.environ["VITZOO_FP32_PRECISION"] = old_prec


def _check_1d_strided_deterministic():
    """na1d (1 x L map; 1x16 and 1x64 tiles), strided qkv views, bit-identical reruns."""
    for tile, L, ks, dil in (("4x4", 40, 5, 2), ("", 70, 13, 1)):
        os.environ.pop("VITZOO_NA_TILE", None)
        if tile:
            os.environ["VITZOO_NA_TILE"] = tile
        q, k, v, rpb = _inputs((2, L, 2, 16), dtype=torch.float64, rpb_shape=(2, 2 * ks - 1))
        want = na_reference(q, k, v, ks, dil, rpb=rpb)
        exp = torch.autograd.grad(want.sum(), (q, k, v, rpb))
        q32, k32, v32, r32 = (t.detach().float().requires_grad_() for t in (q, k, v, rpb))
        out = na1d(q32, k32, v32, ks, dil, rpb=r32)
        got = torch.autograd.grad(out.sum(), (q32, k32, v32, r32))
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
        for a, b in zip(got, exp):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)
    os.environ["VITZOO_NA_TILE"] = "4x4"
    qkv = torch.randn(1, 9, 7, 3, 2, 16).requires_grad_()
    q, k, v = qkv.unbind(3)                      # heads-last views with a 3x row stride
    assert not q.is_contiguous()
    rpb = torch.randn(2, 5, 5, requires_grad=True)
    out = na2d(q, k, v, 3, (2, 1), rpb=rpb)
    torch.testing.assert_close(out, na_reference(q, k, v, 3, (2, 1), rpb=rpb), rtol=1e-4,
                               atol=1e-4)
    go = torch.randn_like(out)
    first = torch.autograd.grad(out, (qkv, rpb), go, retain_graph=True)
    second = torch.autograd.grad(out, (qkv, rpb), go)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    os.environ.pop("VITZOO_NA_TILE", None)


def _check_models():
    """NAT-mini and DiNAT-tiny forward + backward: Triton kernels == the reference path.

    Shrunken depths (every stage kept, dilated and plain blocks alternating in DiNAT) and a 64 px
    input keep the interpreter run short; the kernels see the models' real heads, head_dim 32,
    kernel 7, padded small maps and DiNAT's dilations.
    """
    import timm

    from vitzoo.models.nat import dinat_dilations

    shrunk = {"vitzoo_nat_mini": dict(depths=(1, 1, 1, 1)),
              "vitzoo_dinat_tiny": dict(depths=(2, 2, 2, 2),
                                        dilations=dinat_dilations((2, 2, 2, 2), (8, 4, 2, 1)))}
    # the tensor-core fp32 tile table (8x8 tiles) keeps the number of interpreted programs, and
    # the run time, down; tf32x3 is computed as IEEE by the interpreter (plain tf32 is emulated)
    os.environ["VITZOO_FP32_PRECISION"] = "tf32x3"
    for name, args in shrunk.items():
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10, drop_path_rate=0.0, **args).eval()
        x = torch.randn(1, 3, 64, 64)
        results = {}
        for mode in ("reference", "triton"):
            os.environ["VITZOO_KERNELS"] = mode
            model.zero_grad()
            out = model(x)
            out.square().sum().backward()
            results[mode] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                            if p.grad is not None})
        os.environ["VITZOO_KERNELS"] = "triton"
        (ref_out, ref_g), (tri_out, tri_g) = results["reference"], results["triton"]
        torch.testing.assert_close(tri_out, ref_out, rtol=1e-4, atol=1e-4)
        assert ref_g.keys() == tri_g.keys() and any("rpb" in n for n in ref_g)
        for n in ref_g:
            torch.testing.assert_close(tri_g[n], ref_g[n], rtol=1e-3, atol=1e-4,
                                       msg=lambda m: f"{name} {n}: {m}")
        print("ok model", name, flush=True)


@pytest.mark.skipif(not IS_CHILD, reason="runs inside test_triton_interpreter_matches_reference")
@pytest.mark.parametrize("part", ["ops", "models"])
def test_interp_child(part):
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert os.environ.get("VITZOO_KERNELS") == "triton"
    if part == "ops":
        for case in INTERP_CASES:
            _check_triton_case(*case, device="cpu")  # CPU tensors can only run in the interpreter
            print("ok", case, flush=True)
        _check_1d_strided_deterministic()
        print("ok 1d/strided/deterministic", flush=True)
    else:
        _check_models()


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.skipif(IS_CHILD, reason="parent test")
@pytest.mark.parametrize("part", ["ops", "models"])
def test_triton_interpreter_matches_reference(part):
    out = run_interpreted(__file__, f"test_interp_child and {part}", "VITZOO_NA_TEST_CHILD", timeout=600,
                          drop_env=("VITZOO_NA_TILE",))
    if part == "ops":
        assert out.count("ok (") == len(INTERP_CASES), out[-4000:]
        assert "ok 1d/strided/deterministic" in out, out[-4000:]
    else:
        assert out.count("ok model") == 2, out[-4000:]


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("hw,ks,dil,head_dim", [
    ((56, 56), (7, 7), (1, 1), 32), ((56, 56), (7, 7), (8, 8), 32), ((14, 14), (7, 7), (1, 1), 64),
    ((28, 28), (13, 13), (1, 1), 128), ((1, 300), (1, 9), (1, 3), 8),
    ((12, 40), (3, 11), (2, 1), 16),
])
def test_tile_config_dot_shapes(hw, ks, dil, head_dim, monkeypatch):
    """Every tl.dot has M, N, K >= 16 (Triton 3.1's minimum) in every tile configuration."""
    from vitzoo.kernels._launch_config import TARGETS
    from vitzoo.kernels._neighborhood_triton import tile_config

    for tile in ("", "4x4", "2x8"):
        monkeypatch.setenv("VITZOO_NA_TILE", tile)
        for elem_bytes, ieee in ((2, False), (4, False), (4, True)):
            for target in TARGETS:
                cfgs = tile_config(*hw, ks, dil, head_dim, elem_bytes, ieee, target)
                for cfg in cfgs.values():
                    assert cfg["TH"] * cfg["TW"] >= 16 and cfg["RPC"] * cfg["CW"] >= 16, cfg
                    assert cfg["BLOCK_D"] >= max(16, head_dim), cfg
                    assert cfg["num_warps"] in (2, 4, 8) and cfg["num_stages"] >= 1, cfg
    monkeypatch.setenv("VITZOO_NA_TILE", "3x3")
    with pytest.raises(ValueError, match="VITZOO_NA_TILE"):
        tile_config(*hw, ks, dil, head_dim)


# ----------------------------------------------------------------------------------------------
# (4) The same kernel checks on a GPU (skipped without one)
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", [c[:9] for c in INTERP_CASES] +
                         [("", 2, 14, 14, 4, 32, (7, 7), (2, 2), True),
                          ("", 2, 56, 56, 2, 32, (7, 7), (1, 1), True),
                          ("", 1, 28, 20, 2, 128, (13, 13), (1, 1), True)])
def test_triton_cuda_matches_reference(case, dtype, monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    _check_triton_case(*case, dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_cuda_backward_is_deterministic(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    q, k, v, rpb = (t.cuda().detach().requires_grad_() if t is not None else None for t in
                    _inputs((2, 56, 56, 2, 32), dtype=torch.float32, rpb_shape=(2, 13, 13)))
    q, k, v = (t.to(torch.bfloat16).detach().requires_grad_() for t in (q, k, v))
    out = na2d(q, k, v, 7, 1, rpb=rpb)
    go = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v, rpb), go, retain_graph=True)
    second = torch.autograd.grad(out, (q, k, v, rpb), go)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ----------------------------------------------------------------------------------------------
# (5) The custom op: opcheck, FLOP counters, torch.compile, meta tensors
# ----------------------------------------------------------------------------------------------
def test_opcheck(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    q, k, v, rpb = _inputs((1, 5, 6, 2, 8), dtype=torch.float32, rpb_shape=(2, 5, 5))
    torch.library.opcheck(torch.ops.vitzoo.na2d.default, (q, k, v, rpb, [3, 3], [1, 2], 0.3))
    torch.library.opcheck(torch.ops.vitzoo.na2d.default, (q, k, v, None, [3, 3], [2, 1], 0.3))
    q1, k1, v1, r1 = _inputs((2, 9, 2, 8), dtype=torch.float32, rpb_shape=(2, 5))
    torch.library.opcheck(torch.ops.vitzoo.na1d.default, (q1, k1, v1, r1, [3], [2], 0.3))


def test_flop_counter_mode_counts_na2d():
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v, rpb = _inputs((2, 7, 8, 2, 16), dtype=torch.float32, rpb_shape=(2, 5, 5))
    with FlopCounterMode(display=False) as counter:
        na2d(q, k, v, 3, rpb=rpb).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    fwd = 4 * 2 * 7 * 8 * 2 * 9 * 16
    assert na_flops(q.shape, (3, 3)) == fwd
    assert counts[torch.ops.vitzoo.na2d] == fwd
    assert counts[torch.ops.vitzoo.na2d_backward] == 2 * fwd
    with FlopCounterMode(display=False) as counter:
        na1d(q[:, 0], k[:, 0], v[:, 0], 5)
    assert counter.get_total_flops() == 4 * 2 * 8 * 2 * 5 * 16


def test_fvcore_handles_count_na2d():
    fvcore = pytest.importorskip("fvcore.nn")

    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rpb = torch.nn.Parameter(torch.zeros(2, 5, 5))

        def forward(self, x):
            q = x.view(x.shape[0], x.shape[1], x.shape[2], 2, 16)
            return na2d(q, q, q, 3, 2, rpb=self.rpb)

    handles = fvcore_handles()
    assert "vitzoo::na2d" in handles and "vitzoo::na1d" in handles
    x = torch.randn(1, 7, 9, 32)
    analysis = fvcore.FlopCountAnalysis(Mixer(), x).set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    assert analysis.total() == na_flops((1, 7, 9, 2, 16), (3, 3)) // 2  # fvcore: MACs
    assert "vitzoo::na2d" not in analysis.unsupported_ops()


def test_torch_compile_fullgraph(monkeypatch):
    # aot_eager: same tracing (dynamo + AOTAutograd, no graph break allowed) without the slow
    # CPU inductor compile; the op itself is opaque to the compiler either way.
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    torch._dynamo.reset()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(32, 96)
            self.rpb = torch.nn.Parameter(torch.randn(2, 5, 5))

        def forward(self, x):
            B, H, W, C = x.shape
            q, k, v = self.qkv(x).view(B, H, W, 3, 2, 16).unbind(3)
            return na2d(q, k, v, 3, (1, 2), rpb=self.rpb).reshape(B, H, W, C)

    block = Block()
    x = torch.randn(2, 6, 7, 32)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    g_compiled = block.rpb.grad.clone()
    block.rpb.grad = None
    ref = block(x)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g_compiled, block.rpb.grad)
    torch._dynamo.reset()


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor(monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    torch._dynamo.reset()
    q, k, v, rpb = _inputs((1, 6, 7, 2, 16), dtype=torch.float32, rpb_shape=(2, 5, 5))
    fn = torch.compile(lambda q, k, v, r: na2d(q * 2, k, v, 3, (2, 1), rpb=r).sin(),
                       fullgraph=True)
    out = fn(q, k, v, rpb)
    out.sum().backward()
    torch.testing.assert_close(out, na2d(q * 2, k, v, 3, (2, 1), rpb=rpb).sin())
    torch._dynamo.reset()


def test_meta_tensors():
    q = torch.empty(2, 56, 56, 2, 32, device="meta")
    rpb = torch.empty(2, 13, 13, device="meta")
    out = na2d(q, q, q, 7, 4, rpb=rpb)
    assert out.device.type == "meta" and out.shape == q.shape
    out1 = na1d(q[:, 0], q[:, 0], q[:, 0], 7, 2)
    assert out1.shape == (2, 56, 2, 32) and out1.device.type == "meta"


# ----------------------------------------------------------------------------------------------
# (6) Dispatch rule
# ----------------------------------------------------------------------------------------------
def test_dispatch_rule(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("VITZOO_KERNELS", raising=False)
    assert select_backend("na2d", [cpu]) == "reference"          # auto + CPU
    monkeypatch.setenv("VITZOO_KERNELS", "reference")
    assert select_backend("na2d", [cpu]) == "reference"
    monkeypatch.setenv("VITZOO_KERNELS", "bogus")
    with pytest.raises(ValueError, match="VITZOO_KERNELS"):
        select_backend("na2d", [cpu])
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="VITZOO_KERNELS=triton but na2d cannot run"):
        select_backend("na2d", [cpu])
    if HAS_TRITON:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert select_backend("na2d", [cpu]) == "triton"          # interpreter takes CPU tensors
        with pytest.raises(RuntimeError, match="head_dim 12"):
            select_backend("na2d", [cpu], "head_dim 12 is not a multiple of 8 in [8, 128]")
        monkeypatch.setenv("VITZOO_KERNELS", "auto")
        assert select_backend("na2d", [cpu]) == "reference"       # auto never picks CPU Triton
    # the NA op's own rule: head_dim a multiple of 8 in [8, 128], fp32/fp16/bf16
    from vitzoo.kernels.neighborhood import _triton_unsupported
    for d in (8, 24, 32, 128):
        assert _triton_unsupported(torch.empty(1, 2, 2, 1, d)) is None
    for d in (4, 12, 136):
        assert f"head_dim {d} is not a multiple of 8" in _triton_unsupported(
            torch.empty(1, 2, 2, 1, d))
    assert "dtype" in _triton_unsupported(torch.empty(1, 2, 2, 1, 8, dtype=torch.float64))


def test_explicit_triton_raises_through_na2d(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("VITZOO_KERNELS", "triton")
    q = torch.randn(1, 5, 5, 1, 16)
    with pytest.raises(RuntimeError, match="Triton kernel"):
        na2d(q, q, q, 3)
    monkeypatch.setenv("VITZOO_KERNELS", "auto")
    assert na2d(q, q, q, 3).shape == q.shape


def test_import_is_lazy_and_quiet():
    code = ("import warnings, sys; warnings.simplefilter('error'); import vitzoo.kernels; "
            "print('vitzoo.kernels._neighborhood_triton' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------
# Benchmark tool smoke test (CPU mode)
# ----------------------------------------------------------------------------------------------
def test_bench_kernels_cpu_smoke(tmp_path):
    """Runs tools/bench_kernels.py in-process (the package is already imported: fast)."""
    spec = importlib.util.spec_from_file_location("bench_kernels",
                                                  ROOT / "tools" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--allow-cpu", "--quick", "--ops", "neighborhood",
                       "--out-dir", str(tmp_path)]) == 0
    results = list(tmp_path.glob("*.json"))
    assert len(results) == 1 and len(list(tmp_path.glob("*.md"))) == 1
    data = json.loads(results[0].read_text())
    assert data["device"] == "cpu" and data["torch"] == torch.__version__ and data["command"]
    rows = data["rows"]
    assert rows and all(r["op"] == "neighborhood" and r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
                        for r in rows)
    assert {"reference", "sdpa"} <= {r["impl"] for r in rows}
    assert {r["dilation"] for r in rows} == {1, 2}


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_bench_flex_mask_matches_reference():
    """The FlexAttention baseline in the benchmark computes the same neighbourhood + bias."""
    flex_mod = pytest.importorskip("torch.nn.attention.flex_attention")
    spec = importlib.util.spec_from_file_location("bench_kernels",
                                                  ROOT / "tools" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    H, W, k, dil, nh = 9, 11, 3, 3, 2
    q, kk, v, rpb = _inputs((1, H, W, nh, 16), dtype=torch.float32, rpb_shape=(nh, 5, 5),
                            grad=False)
    mask_mod, score_mod = bench._neighbourhood_mods(H, W, k, dil, rpb)
    block_mask = flex_mod.create_block_mask(mask_mod, None, None, H * W, H * W, device="cpu")

    def heads_first(x):
        return x.reshape(1, H * W, nh, 16).transpose(1, 2)

    out = flex_mod.flex_attention(heads_first(q), heads_first(kk), heads_first(v),
                                  score_mod=score_mod, block_mask=block_mask, scale=0.25)
    out = out.transpose(1, 2).reshape(q.shape)
    torch.testing.assert_close(out, na_reference(q, kk, v, k, dil, rpb=rpb), rtol=1e-5, atol=1e-5)
