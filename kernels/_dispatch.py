"""One backend rule for every vitzoo kernel op (neighborhood, window, routing, ...).

Rule: use Triton when every tensor is on CUDA, triton imports, and the op says the shape/dtype is
supported; otherwise use the PyTorch reference. ``VITZOO_KERNELS=reference|triton|auto`` (read at
every call) overrides it. ``triton`` never falls back silently: if Triton cannot run, the call
raises and says why. Under ``TRITON_INTERPRET=1`` Triton runs on CPU tensors through its
interpreter, so with ``VITZOO_KERNELS=triton`` CPU tensors go to Triton (this is how CI tests the
kernels without a GPU). In ``auto`` mode CPU tensors always take the reference.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Iterable, Literal, Optional

import torch

Backend = Literal["reference", "triton"]
_MODES = ("auto", "reference", "triton")

__all__ = ["kernel_mode", "triton_interpreting", "triton_available", "select_backend"]


def kernel_mode() -> str:
    """The current ``VITZOO_KERNELS`` setting (``auto`` when unset)."""
    mode = os.environ.get("VITZOO_KERNELS", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"VITZOO_KERNELS={mode!r} is not one of {_MODES}")
    return mode


def triton_interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def _device_problem(tensors: Iterable[torch.Tensor]) -> Optional[str]:
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return None
    if devices == {"cpu"} and triton_interpreting():
        return None
    where = ", ".join(sorted(devices))
    return (f"the tensors are on {where}; the Triton kernels need CUDA tensors "
            "(or CPU tensors with TRITON_INTERPRET=1)")


def select_backend(op_name: str, tensors: Iterable[Optional[torch.Tensor]],
                   unsupported: Optional[str] = None) -> Backend:
    """Pick ``"triton"`` or ``"reference"`` for one call of ``op_name``.

    ``unsupported`` is the op's own reason why Triton cannot take this shape/dtype (``None`` when
    it can). With ``VITZOO_KERNELS=triton`` any reason to refuse Triton raises ``RuntimeError``.
    """
    mode = kernel_mode()
    if mode == "reference":
        return "reference"
    tensors = [t for t in tensors if t is not None]
    if mode == "auto" and any(t.device.type != "cuda" for t in tensors):
        return "reference"
    if not triton_available():
        problem: Optional[str] = "the triton package is not installed"
    else:
        problem = _device_problem(tensors) or unsupported
    if problem is None:
        return "triton"
    if mode == "triton":
        raise RuntimeError(f"VITZOO_KERNELS=triton but {op_name} cannot run its Triton kernel: "
                           f"{problem}. Unset VITZOO_KERNELS (or set it to 'auto'/'reference') "
                           "to use the PyTorch reference.")
    return "reference"
