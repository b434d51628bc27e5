"""The kernel-op calls a registered model makes, and the Triton launches they become per GPU target.

Two steps, both on CPU, neither running a kernel:

1. :func:`record_model_calls` builds a zoo model on the meta device, moves it to fake CPU
   tensors (``FakeTensorMode``: shapes, strides and dtypes without data or compute) and runs
   forward + backward at batch 1. Every ``vitzoo::*`` custom-op call is recorded as plain data
   (tensor shape / stride / storage offset / dtype, other arguments as values). The model's own
   dispatch questions (e.g. the Swin mixer's ``window_uses_triton``) are answered as on a CUDA
   device: Triton wherever the op supports the shape. 16-bit runs use autocast (the AMP path
   of training: activations in 16 bits, parameters such as the relative-position tables in
   fp32). A large model costs seconds, not the minutes a real CPU forward would.
2. :func:`replay` calls one recorded op on real CPU tensors of the recorded layout under
   ``tests/triton_aot.capture_launches`` with ``VITZOO_KERNEL_TARGET`` set, so the launcher picks
   the tile table of that target and the fp32 precision rule sees the requested
   ``torch.set_float32_matmul_precision``. Storage offsets are kept, so the pointer-alignment
   specialisation is the one a real run gets.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Tuple

__all__ = ["record_model_calls", "replay", "call_key", "with_dtype", "model_input_size"]

_FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def model_input_size(name: str) -> int:
    """The model's default resolution (its pretrained config's input size; 384 for 384 variants)."""
    import timm
    cfg = timm.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


def _describe(x: Any) -> Any:
    import torch
    if isinstance(x, torch.Tensor):
        return {"tensor": [list(x.shape), list(x.stride()), int(x.storage_offset()),
                           str(x.dtype).replace("torch.", "")]}
    if isinstance(x, (list, tuple)):
        return [_describe(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _describe(v) for k, v in x.items()}
    if isinstance(x, (int, float, bool, str)) or x is None:
        return x
    raise TypeError(f"cannot record an argument of type {type(x).__name__}")


def call_key(call: Dict[str, Any]) -> str:
    return json.dumps(call, sort_keys=True)


@contextlib.contextmanager
def _triton_where_supported() -> Iterator[None]:
    """Answer every ``select_backend`` as on a CUDA device in ``auto`` mode."""
    import vitzoo.kernels._dispatch as dispatch

    real = dispatch.select_backend

    def select(op_name, tensors, unsupported=None):
        return "triton" if unsupported is None and dispatch.triton_available() else "reference"

    patched = []
    for name, mod in list(sys.modules.items()):
        if (name == "vitzoo" or name.startswith("vitzoo.")) and \
                getattr(mod, "select_backend", None) is real:
            patched.append(mod)
            mod.select_backend = select
    try:
        yield
    finally:
        for mod in patched:
            mod.select_backend = real


def record_model_calls(name: str, img_size: Optional[int] = None, dtype: str = "float32",
                       batch: int = 1) -> List[Dict[str, Any]]:
    """Distinct ``vitzoo::*`` op calls of ``name``'s forward + backward (see module doc).

    ``dtype``: ``"float32"`` (plain fp32) or ``"bfloat16"`` / ``"float16"`` (autocast).
    ``batch``: 1 is enough (tiles depend on shapes, not batch); models whose training-mode
    BatchNorm needs two samples (EfficientViT's head) are recorded at 2 by the caller.
    """
    import timm
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    import vitzoo  # noqa: F401  (registers the models and ops)

    calls: List[Dict[str, Any]] = []
    seen = set()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if getattr(func, "namespace", "") == "vitzoo":
                call = {"op": func.name().split("::", 1)[1].split(".")[0],
                        "args": _describe(list(args)), "kwargs": _describe(kwargs or {})}
                key = call_key(call)
                if key not in seen:
                    seen.add(key)
                    calls.append(call)
            return func(*args, **(kwargs or {}))

    size = img_size or model_input_size(name)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    model.train()
    amp = dtype != "float32"
    with _triton_where_supported(), FakeTensorMode(allow_non_fake_inputs=True):
        model._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype))
        x = torch.randn(batch, 3, size, size)
        with Recorder():
            with torch.autocast("cpu", dtype=getattr(torch, dtype), enabled=amp):
                out = model(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            out.float().sum().backward()
    return calls


def with_dtype(call: Dict[str, Any], src: str, dst: str) -> Dict[str, Any]:
    """``call`` with every ``src``-dtype tensor made ``dst`` (fp16 runs from a bf16 recording:
    autocast changes only the 16-bit type)."""
    def sub(x):
        if isinstance(x, dict) and "tensor" in x:
            shape, stride, offset, dt = x["tensor"]
            return {"tensor": [shape, stride, offset, dst if dt == src else dt]}
        if isinstance(x, list):
            return [sub(v) for v in x]
        if isinstance(x, dict):
            return {k: sub(v) for k, v in x.items()}
        return x
    return sub(call)


# ----------------------------------------------------------------------------------------------
# Replay
# ----------------------------------------------------------------------------------------------
def _make_tensor(desc, gen):
    import torch
    shape, stride, offset, dtype = desc
    dt = getattr(torch, dtype)
    span = 1 + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else 0
    base = torch.empty(offset + span, dtype=dt)
    view = base.as_strided(shape, stride, offset)
    if dt.is_floating_point:
        base.normal_(generator=gen)
    elif len(shape) >= 2 and shape[-1] <= shape[-2]:
        # routing indices [..., regions, topk]: distinct in-range regions per row, as topk gives
        view.copy_(torch.randn(*shape[:-1], shape[-2], generator=gen).topk(shape[-1]).indices)
    else:
        base.zero_()
    return view


def _build(x, gen):
    if isinstance(x, dict) and "tensor" in x:
        return _make_tensor(x["tensor"], gen)
    if isinstance(x, list):
        return [_build(v, gen) for v in x]
    if isinstance(x, dict):
        return {k: _build(v, gen) for k, v in x.items()}
    return x


@contextlib.contextmanager
def _env(**values: Optional[str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def replay(call: Dict[str, Any], arch: int, fp32_precision: str = "highest"
           ) -> Tuple[List[Any], Optional[str]]:
    """The distinct Triton launches of one recorded op call on ``sm_<arch>``.

    Returns ``(launches, None)``, or ``([], reason)`` when the op keeps this call on its PyTorch
    reference (the op's own one-line reason).
    """
    import torch

    import triton_aot
    import vitzoo  # noqa: F401  (registers every vitzoo:: op)

    op = getattr(torch.ops.vitzoo, call["op"]).default
    gen = torch.Generator().manual_seed(0)
    args, kwargs = _build(call["args"], gen), _build(call.get("kwargs", {}), gen)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(fp32_precision)
    try:
        with _env(VITZOO_KERNEL_TARGET=str(arch), VITZOO_KERNELS="triton",
                  VITZOO_FP32_PRECISION=None, VITZOO_NA_FP32_PRECISION=None), \
                torch.no_grad(), triton_aot.capture_launches() as launches:
            try:
                op(*args, **kwargs)
            except RuntimeError as exc:
                if "cannot run its Triton kernel" in str(exc):
                    return [], str(exc).split(": ", 1)[-1].split(". Unset")[0]
                raise
    finally:
        torch.set_float32_matmul_precision(prev)
    return triton_aot.unique_launches(launches), None
