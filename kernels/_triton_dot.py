"""What every vitzoo attention kernel shares: the tensor-core dot, its launch constexprs, and the
backward's delta = rowsum(dO * O) preprocess.

Shared by the neighborhood, window and routed-attention kernels so the precision rule and the
interpreter workaround live in one place:

* ``PREC``: ``tl.dot``'s ``input_precision``. fp32 inputs follow the one fp32 rule of
  ``_precision.py`` (torch's ``get_float32_matmul_precision``: ``"highest"`` -> ``"ieee"``,
  ``"high"``/``"medium"`` -> ``"tf32"`` tensor-core dots); 16-bit inputs ignore it.
* ``UPCAST``: set only when the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``),
  on 16-bit inputs or on fp32 inputs with ``PREC="tf32"``. Triton 3.8's interpreter computes bf16
  dots wrongly and ignores ``input_precision`` (its TF32 dots are IEEE), so there the operands
  are multiplied in fp32 after cutting them to TF32's 10-bit mantissa (exact for 16-bit
  operands). Truncation, not rounding: Triton 3.8 hands the fp32 registers to ``mma.sync`` /
  ``wgmma`` ``.tf32`` with no ``cvt.rna.tf32.f32`` (checked in sm_80/sm_90 PTX), and the tensor
  cores ignore the low 13 bits. The interpreter thus shows TF32's real error. Compiled kernels
  never take that branch.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._precision import dot_precision

__all__ = ["mma", "dot_meta", "row_delta"]


@triton.jit
def _round_tf32(x):
    """fp32 ``x`` cut to TF32 (10-bit mantissa, low 13 bits dropped, as the tensor cores do)."""
    bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
    return (bits & 0xFFFFE000).to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``tl.dot(a, b)`` with fp32 accumulation (see the module doc for ``PREC``/``UPCAST``)."""
    if UPCAST:
        if PREC == "tf32":
            return tl.dot(_round_tf32(a), _round_tf32(b), input_precision="ieee")
        else:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


def dot_meta(dtype: torch.dtype, fp32_precision: Optional[str] = None) -> Dict[str, object]:
    """``PREC`` and ``UPCAST`` for kernels whose dot inputs have ``dtype``.

    ``fp32_precision`` forces the fp32 choice; by default it is ``_precision.fp32_precision()``,
    read at every call.

    The interpreter is detected from the kernels themselves (``@triton.jit`` gave interpreter
    objects), not from the environment, so a compile-only capture of the launches never sets
    ``UPCAST``.
    """
    interpreted = type(mma).__name__ == "InterpretedFunction"
    prec = dot_precision(dtype, fp32_precision)
    return dict(PREC=prec, UPCAST=interpreted and (dtype != torch.float32 or prec == "tf32"))


@triton.jit
def _attn_bwd_preprocess(O, DO, DELTA, ROWS, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_R: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.arange(0, BLOCK_D)
    mask = (r < ROWS)[:, None] & (d < HEAD_DIM)[None, :]
    off = r[:, None] * HEAD_DIM + d[None, :]
    o = tl.load(O + off, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + r, tl.sum(o * do, 1), mask=r < ROWS)


def row_delta(out: Tensor, grad_out: Tensor, delta: Tensor, head_dim: int, block_d: int) -> Tensor:
    """``delta[row] = sum_d dO[row, d] * O[row, d]`` in fp32 for contiguous ``[rows, head_dim]``
    ``out``/``grad_out``, written into ``delta`` (``rows`` elements), read once each."""
    rows = delta.numel()
    block_r = 64
    _attn_bwd_preprocess[(triton.cdiv(rows, block_r),)](
        out, grad_out, delta, rows, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_R=block_r, num_warps=4)
    return delta
