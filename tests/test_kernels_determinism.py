"""Every kernel op's backward is deterministic, on the reference path and on the Triton path.

* CPU: the PyTorch reference backward of na2d, window_attention and routed_attention runs under
  ``torch.use_deterministic_algorithms(True)`` and a ``TorchDispatchMode`` that lists every aten
  op it calls; none of them is an op with a non-deterministic CUDA kernel (``index_add``,
  ``scatter_add``, accumulating ``index_put``, ...), so the same code is deterministic when it is
  the CUDA fallback. Two runs give bit-identical gradients.
* GPU (skipped without CUDA): each op's CUDA path (Triton, and the reference fallback), backward
  twice under deterministic mode, bit-identical; fp32 and bf16.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Tuple

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vitzoo.kernels import na2d, routed_attention, window_attention

#: aten ops whose CUDA kernels use atomics (or are flagged non-deterministic by torch)
_NONDETERMINISTIC = ("index_add", "scatter_add", "scatter_reduce", "index_reduce", "put_",
                     "histc", "bincount", "embedding_dense_backward", "_index_put_impl_")


class _AtenOps(TorchDispatchMode):
    """Records the aten ops (and whether index_put accumulates) called inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name.startswith("index_put") and (kwargs.get("accumulate") or
                                             (len(args) > 3 and args[3])):
            name += "(accumulate)"
        self.ops.append(name)
        return func(*args, **kwargs)


def _cases(device: str, dtype: torch.dtype) -> Dict[str, Tuple[Callable, List[torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device, dt).requires_grad_()

    r_idx = torch.randn(2, 16, 16, generator=g).topk(4, dim=-1).indices.to(device)
    return {
        "na2d": (lambda q, k, v, rpb: na2d(q, k, v, 5, (1, 2), rpb=rpb),
                 [rnd(2, 12, 13, 2, 16), rnd(2, 12, 13, 2, 16), rnd(2, 12, 13, 2, 16),
                  rnd(2, 9, 9, dt=torch.float32)]),
        "window_attention": (lambda qkv, bias: window_attention(qkv, bias, 4, 2),
                             [rnd(2, 12, 12, 3, 2, 16), rnd(2, 16, 16, dt=torch.float32)]),
        "routed_attention": (lambda q, k, v: routed_attention(q, k, v, r_idx, 4, 0.25),
                             [rnd(2, 8, 8, 2, 16), rnd(2, 8, 8, 2, 16), rnd(2, 8, 8, 2, 16)]),
    }


def _grads(op, inputs) -> List[torch.Tensor]:
    out = op(*inputs)
    go = torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape).to(out.dtype)
    return list(torch.autograd.grad(out, inputs, go))


@pytest.fixture
def deterministic():
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(saved)


def _reference_backwards() -> Dict[str, Callable[[], Tuple[torch.Tensor, ...]]]:
    """Each op's reference backward called directly (a dispatch mode sees a custom op as one op,
    not the aten ops inside it)."""
    from vitzoo.kernels import _neighborhood_reference as na_ref
    from vitzoo.kernels import routing, window

    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    q, k, v, go = (rnd(2, 12, 13, 2, 16) for _ in range(4))
    rpb = rnd(2, 9, 9)
    qkv, wgo, bias = rnd(2, 12, 12, 3, 2, 16), rnd(2, 12, 12, 2, 16), rnd(2, 16, 16)
    rq, rk, rv, rgo = (rnd(2, 8, 8, 2, 16) for _ in range(4))
    r_idx = rnd(2, 16, 16).topk(4, dim=-1).indices
    return {
        "na2d": lambda: na_ref.reference_backward(go, q, k, v, rpb, (5, 5), (1, 2), 0.25),
        "window_attention": lambda: window._reference_backward(wgo, qkv, bias, (4, 4), (2, 2),
                                                               (12, 12), 0.25),
        "routed_attention": lambda: routing.reference_backward(rgo, rq, rk, rv, r_idx, 4, 0.25),
    }


@pytest.mark.parametrize("name", ["na2d", "window_attention", "routed_attention"])
def test_reference_backward_uses_no_nondeterministic_op(name, deterministic):
    backward = _reference_backwards()[name]
    first = backward()                  # also builds the cached index tables (CPU, once)
    with _AtenOps() as rec:
        second = backward()
    assert "mm" in rec.ops or "bmm" in rec.ops, f"the dispatch mode missed the matmuls: {rec.ops}"
    bad = sorted({o for o in rec.ops if o.startswith(_NONDETERMINISTIC) or "accumulate" in o})
    assert not bad, f"{name} reference backward calls non-deterministic ops: {bad}"
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_dispatch_mode_sees_index_add(deterministic):
    """The recorder would catch the op the NA reference used to call."""
    x = torch.zeros(4, 3)
    with _AtenOps() as rec:
        x.index_add_(0, torch.tensor([0, 0, 1]), torch.ones(3, 3))
    assert any(o.startswith(_NONDETERMINISTIC) for o in rec.ops), rec.ops


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["na2d", "window_attention", "routed_attention"])
def test_cuda_backward_bit_identical(name, dtype, mode, deterministic, monkeypatch):
    monkeypatch.setenv("VITZOO_KERNELS", mode)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    op, inputs = _cases("cuda", dtype)[name]
    first = _grads(op, inputs)
    second = _grads(op, inputs)
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"{name} {dtype} {mode}: gradient {i} differs between runs"
