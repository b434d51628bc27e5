"""FLOP accounting shared by the vitzoo kernel ops (torch FlopCounterMode and fvcore).

Each op file registers its formula for ``torch.utils.flop_counter`` itself and adds an fvcore
handle here with :func:`add_fvcore_handle`; :func:`fvcore_handles` hands them all to
``FlopCountAnalysis(model, x).set_op_handle(**fvcore_handles())``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

__all__ = ["add_fvcore_handle", "fvcore_handles"]

_FVCORE_HANDLES: Dict[str, Callable[[List[Any], List[Any]], int]] = {}


def add_fvcore_handle(traced_name: str, handle: Callable[[List[Any], List[Any]], int]) -> None:
    """Register ``handle(inputs, outputs) -> flops`` for the TorchScript node ``traced_name``."""
    _FVCORE_HANDLES[traced_name] = handle


def fvcore_handles() -> Dict[str, Callable[[List[Any], List[Any]], int]]:
    """Op name (as traced, e.g. ``"vitzoo::na2d"``) -> fvcore FLOP handle, for every vitzoo op."""
    return dict(_FVCORE_HANDLES)


def jit_shape(value: Any) -> List[int]:
    """Shape of a TorchScript value (``torch._C.Value``) from fvcore's traced graph."""
    return list(value.type().sizes())


def jit_constant(value: Any) -> Any:
    """Python value of a constant TorchScript input (int lists come as ``prim::ListConstruct``)."""
    ivalue = value.toIValue()
    if ivalue is not None:
        return ivalue
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return [jit_constant(x) for x in node.inputs()]
    raise ValueError(f"fvcore handle: expected a constant, got a {node.kind()} node")
