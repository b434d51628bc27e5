"""The one fp32 rule of every vitzoo kernel (na1d/na2d, window_attention, routed_attention).

fp32 inputs follow PyTorch's own switch, :func:`torch.get_float32_matmul_precision`:

* ``"highest"`` (PyTorch's default) -> ``"ieee"``: exact fp32 dots on FMA units, outputs within
  1e-4 of an fp64 reference;
* ``"high"`` / ``"medium"`` -> ``"tf32"``: TF32 tensor-core dots (10-bit mantissa inputs, fp32
  accumulation), what ``torch.matmul`` does at those settings.

``VITZOO_FP32_PRECISION=ieee|tf32|tf32x3`` (read at every call) overrides torch's setting for all
three ops; ``tf32x3`` is Triton's three-pass split (near-IEEE accuracy on tensor cores). The old
NA-only name ``VITZOO_NA_FP32_PRECISION`` is read as the same override when the new one is unset.

The launchers pass the result to the kernels as the ``PREC`` constexpr of
``_triton_dot.mma``; 16-bit inputs ignore it (their dots are always tensor-core dots).
"""
from __future__ import annotations

import os
from typing import Union

import torch

__all__ = ["FP32_PRECISIONS", "fp32_precision", "dot_precision"]

FP32_PRECISIONS = ("ieee", "tf32", "tf32x3")
_ENV = ("VITZOO_FP32_PRECISION", "VITZOO_NA_FP32_PRECISION")


def fp32_precision() -> str:
    """``"ieee"``, ``"tf32"`` or ``"tf32x3"``: the dot precision fp32 inputs use right now."""
    for name in _ENV:
        value = os.environ.get(name, "").strip().lower()
        if value:
            if value not in FP32_PRECISIONS:
                raise ValueError(f"{name}={value!r} is not one of {FP32_PRECISIONS}")
            return value
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def dot_precision(dtype: Union[torch.dtype, str], fp32: Union[str, None] = None) -> str:
    """``PREC`` for dots on ``dtype`` inputs: the fp32 rule for fp32, ``"tf32"`` (ignored by
    ``tl.dot``) for 16-bit inputs. ``fp32`` forces the fp32 choice (compile enumeration)."""
    if dtype in (torch.float32, "float32", "fp32"):
        return fp32 or fp32_precision()
    return "tf32"
