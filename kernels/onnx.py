"""ONNX export of the zoo's custom ops: one functional decomposition per op, in plain torch ops.

Each ``vitzoo::*`` op registers one function (``register_onnx_decomposition``) that computes its
outputs from its own arguments with standard torch ops. That one function serves both exporters:

* ``torch.onnx.export(model, args, dynamo=True)`` (torch's default): the function is put in
  ``torch._decomp.decomposition_table``, which the ONNX exporter's decomposition step reads, so
  the op is lowered to ONNX-supported ops with no extra argument. (torch.compile and
  ``torch.export`` keep the op: they do not decompose custom ops with that table.)
* ``torch.onnx.export(model, args, dynamo=False)`` (the TorchScript exporter): run it inside
  ``with vitzoo.kernels.onnx.exportable():``, which routes each registered op to its function
  while the model is traced.

The neighborhood ops are written here as a gather over each query's neighbors (the kernels' own
index tables), which ONNX expresses with Gather/Mul/ReduceSum/Softmax; ops of other modules
register their own functions the same way (their functional reference computation).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ._neighborhood_index import _axis_tables

__all__ = ["register_onnx_decomposition", "onnx_decompositions", "exportable"]

_DECOMPOSITIONS: dict = {}


def _op(qualname: str) -> torch._ops.OpOverload:
    ns, name = qualname.split("::")
    return getattr(getattr(torch.ops, ns), name).default


def register_onnx_decomposition(qualname: str, fn: Callable) -> None:
    """Register `fn(*op_args)` (same arguments and outputs as op `qualname`, functional torch ops only)."""
    op = _op(qualname)
    _DECOMPOSITIONS[op] = fn
    torch._decomp.decomposition_table[op] = fn  # read by torch.onnx's dynamo exporter


def onnx_decompositions() -> dict:
    """`{op overload: function}` of every registered op, e.g. for `ExportedProgram.run_decompositions`."""
    return dict(_DECOMPOSITIONS)


class _RouteToDecompositions(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        fn = _DECOMPOSITIONS.get(func)
        if fn is None and isinstance(func, torch._ops.OpOverloadPacket):
            fn = _DECOMPOSITIONS.get(getattr(func, "default", None))
        if fn is not None:
            return fn(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def exportable() -> Iterator[None]:
    """While active, every registered op runs as its decomposition (for the TorchScript ONNX exporter)."""
    with _RouteToDecompositions():
        yield


# ---- neighborhood attention ----------------------------------------------------------------------
def na2d_decomposition(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int],
                       dilation: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """`vitzoo::na2d` as a gather over each query's `kh*kw` neighbors: `(out, logsumexp fp32)`."""
    B, H, W, nh, d = q.shape
    kh, kw = kernel_size
    rows, brows = _axis_tables(H, kh, dilation[0])  # [H, kh] key rows, rpb rows
    cols, bcols = _axis_tables(W, kw, dilation[1])  # [W, kw]
    keys = (rows[:, None, :, None] * W + cols[None, :, None, :]).reshape(H * W, kh * kw).to(q.device)
    kn = k.reshape(B, H * W, nh, d)[:, keys]  # [B, HW, KK, h, d]
    vn = v.reshape(B, H * W, nh, d)[:, keys]
    logits = (q.reshape(B, H * W, 1, nh, d).float() * kn.float()).sum(-1) * scale  # [B, HW, KK, h]
    if rpb is not None:
        bias_idx = (brows[:, None, :, None] * (2 * kw - 1) + bcols[None, :, None, :]).reshape(H * W, kh * kw)
        bias = rpb.reshape(nh, -1)[:, bias_idx.to(rpb.device)]  # [h, HW, KK]
        logits = logits + bias.permute(1, 2, 0).float()
    lse = torch.logsumexp(logits, dim=2)
    p = torch.softmax(logits, dim=2)
    out = (p.unsqueeze(-1) * vn.float()).sum(2)
    return out.reshape(B, H, W, nh, d).to(q.dtype), lse.reshape(B, H, W, nh)


def na1d_decomposition(q: Tensor, k: Tensor, v: Tensor, rpb: Optional[Tensor], kernel_size: List[int],
                       dilation: List[int], scale: float) -> Tuple[Tensor, Tensor]:
    """`vitzoo::na1d` as the 2-D decomposition on a `1 x L` map."""
    rpb2 = None if rpb is None else rpb.reshape(rpb.shape[0], 1, -1)
    out, lse = na2d_decomposition(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), rpb2,
                                  [1, int(kernel_size[0])], [1, int(dilation[0])], scale)
    return out.squeeze(1), lse.squeeze(1)


register_onnx_decomposition("vitzoo::na2d", na2d_decomposition)
register_onnx_decomposition("vitzoo::na1d", na1d_decomposition)


# ---- the other ops: their own functional reference computations -----------------------------------
def _register_reference(qualname: str, module: str, attr: str) -> None:
    """Register `module.attr` (the op's reference forward, same signature and outputs) for `qualname`."""
    import importlib
    try:
        fn = getattr(importlib.import_module(f".{module}", __package__), attr)
        _op(qualname)
    except (ImportError, AttributeError):  # the op (or its reference) is not in this build: nothing to export
        return
    register_onnx_decomposition(qualname, fn)


_register_reference("vitzoo::window_attention", "window", "_reference")
_register_reference("vitzoo::routed_attention", "routing", "reference_forward")
