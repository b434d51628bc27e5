"""vitzoo kernels: attention ops as plain functions on tensors.

Layout: heads-last, ``[B, *spatial, heads, head_dim]`` (``[B, H, W, heads, d]`` for 2-D ops,
``[B, L, heads, d]`` for 1-D), exactly what a qkv ``Linear`` followed by a reshape produces, so
no permute copies are needed between the projection and the kernel.

Dispatch (one rule for every op, see ``kernels/_dispatch.py``): the fused Triton kernels
run when the tensors are on CUDA and the shape/dtype is supported, otherwise the PyTorch
reference runs (CPU included). ``VITZOO_KERNELS=reference|triton|auto`` overrides it at call
time; ``triton`` raises instead of falling back when Triton cannot run. With
``TRITON_INTERPRET=1`` and ``VITZOO_KERNELS=triton`` the Triton kernels run on CPU tensors in
Triton's interpreter (how the tests check them without a GPU).

``window_attention`` (Swin's shifted-window attention) reads ``[B, Hp, Wp, 3, heads, d]`` straight
from the qkv projection and writes ``[B, Hp, Wp, heads, d]`` in place order.

Every op is a ``torch.library.custom_op`` (``vitzoo::na1d``, ``vitzoo::na2d``,
``vitzoo::window_attention``) with a fake
implementation, autograd and a FLOP formula, so ``torch.compile(fullgraph=True)`` and
``torch.utils.flop_counter.FlopCounterMode`` see one op; ``fvcore_handles()`` gives fvcore the
same counts: ``FlopCountAnalysis(model, x).set_op_handle(**fvcore_handles())``.
"""
from ._dispatch import kernel_mode, select_backend, triton_available, triton_interpreting
from ._flops import fvcore_handles
from .sdpa_flops import sdpa_backward_macs, sdpa_macs  # also registers SDPA's FLOP formulas
from .neighborhood import (na1d, na2d, na_flops, na_reference, neighbor_index, rpb_index,
                           window_start)
from .window import window_attention, window_flops, window_reference, window_source_index
from .routing import routed_attention, routed_attention_flops, routed_reference
from .onnx import exportable, onnx_decompositions, register_onnx_decomposition  # after the ops it registers

__all__ = [
    "na1d", "na2d", "na_reference", "na_flops", "window_start", "neighbor_index", "rpb_index",
    "routed_attention", "routed_reference", "routed_attention_flops",
    "window_attention", "window_reference", "window_flops", "window_source_index",
    "fvcore_handles", "sdpa_macs", "sdpa_backward_macs", "kernel_mode", "select_backend",
    "triton_available", "triton_interpreting",
    "exportable", "onnx_decompositions", "register_onnx_decomposition",
]
