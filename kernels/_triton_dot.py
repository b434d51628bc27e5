"""What every vitzoo attention kernel shares: the tensor-core dot, its launch constexprs, and the
backward's delta = rowsum(dO * O) preprocess.

Shared by the neighborhood, window and routed-attention kernels so the precision rule and the
interpreter workaround live in one place:

* ``PREC``: ``tl.dot``'s ``input_precision``. fp32 inputs default to ``"ieee"`` (``tl.dot`` would
  use TF32 on sm_80+ and miss the 1e-4 tests); 16-bit inputs ignore it.
* ``UPCAST``: set only when the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)
  on 16-bit inputs. Triton 3.8's interpreter computes bf16 dots wrongly, so there the operands,
  already rounded to 16 bits, are multiplied in fp32. Compiled kernels never take that branch.
"""
from __future__ import annotations

from typing import Dict

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["mma", "dot_meta", "row_delta"]


@triton.jit
def mma(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``tl.dot(a, b)`` with fp32 accumulation (see the module doc for ``PREC``/``UPCAST``)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


def dot_meta(dtype: torch.dtype, fp32_precision: str = "ieee") -> Dict[str, object]:
    """``PREC`` and ``UPCAST`` for kernels whose dot inputs have ``dtype``.

    The interpreter is detected from the kernels themselves (``@triton.jit`` gave interpreter
    objects), not from the environment, so a compile-only capture of the launches never sets
    ``UPCAST``.
    """
    interpreted = type(mma).__name__ == "InterpretedFunction"
    return dict(PREC=fp32_precision if dtype == torch.float32 else "tf32",
                UPCAST=dtype != torch.float32 and interpreted)


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
