"""The tensor-core dot every vitzoo Triton kernel uses, and the launch constexprs that go with it.

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

__all__ = ["mma", "dot_meta"]


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
