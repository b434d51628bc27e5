"""FLOP formulas for ``scaled_dot_product_attention`` whatever backend torch picks.

Why: ``F.scaled_dot_product_attention`` is composite; ``FlopCounterMode`` sees the backend op it
dispatches to. torch counts the CUDA flash / memory-efficient / cuDNN ops and the math fallback
(its ``bmm``), but not the fused CPU op (``_scaled_dot_product_flash_attention_for_cpu``, what
torch 2.x runs for fp32/bf16 on CPU) nor the "overrideable" op of out-of-tree backends, so every
attention of every zoo model counted as zero there. fvcore traces the composite op itself
(``aten::scaled_dot_product_attention``) and has no handle for it either.

Convention (torch's own, for the ops it does count): q·kᵀ and attn·v are counted, the softmax,
scale and mask are not, a causal mask does not halve the count; the backward counts torch's five
matmuls (scores recomputed, dV, dP, dQ, dK). A formula is registered only for an op that the
installed torch leaves uncounted, so nothing is counted twice on a torch that adds its own.
"""
from __future__ import annotations

import math
from typing import Any, List, Sequence

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from ._flops import add_fvcore_handle, jit_shape

__all__ = ["sdpa_macs", "sdpa_backward_macs", "registered_sdpa_ops"]

aten = torch.ops.aten


def sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """Multiply-adds of one attention forward: ``batch·heads · L · S · (E + Ev)``.

    ``q [..., L, E]``, ``k [..., S, E]``, ``v [..., S, Ev]``; the leading dims of q (batch and
    query heads, so grouped-query attention counts every query head) multiply.
    """
    lead = math.prod(q_shape[:-2])
    n_q, e = q_shape[-2], q_shape[-1]
    n_k, e_v = k_shape[-2], v_shape[-1]
    return lead * n_q * n_k * (e + e_v)


def sdpa_backward_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    """Multiply-adds of one attention backward, as torch counts its fused backward ops.

    Scores recomputed (L·S·E), dP = dO·vᵀ and dV = Pᵀ·dO (L·S·Ev each), dQ = dS·k and
    dK = dSᵀ·q (L·S·E each): ``batch·heads · L · S · (3E + 2Ev)``.
    """
    lead = math.prod(q_shape[:-2])
    n_q, e = q_shape[-2], q_shape[-1]
    n_k, e_v = k_shape[-2], v_shape[-1]
    return lead * n_q * n_k * (3 * e + 2 * e_v)


# FlopCounterMode counts two FLOPs per multiply-add.
def _forward_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_macs(query_shape, key_shape, value_shape)


def _backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                   **kwargs) -> int:
    return 2 * sdpa_backward_macs(query_shape, key_shape, value_shape)


_FORWARD_OPS = ("_scaled_dot_product_flash_attention_for_cpu",
                "_scaled_dot_product_fused_attention_overrideable",
                "_scaled_dot_product_attention_math_for_mps")
_BACKWARD_OPS = ("_scaled_dot_product_flash_attention_for_cpu_backward",
                 "_scaled_dot_product_fused_attention_overrideable_backward")


def _register_missing() -> List[str]:
    """Register the formulas for the SDPA backend ops this torch has and does not count."""
    done = []
    for names, formula in ((_FORWARD_OPS, _forward_flop), (_BACKWARD_OPS, _backward_flop)):
        for name in names:
            op = getattr(aten, name, None)
            if op is None or op in flop_registry:
                continue
            register_flop_formula(op)(formula)
            done.append(name)
    return done


_REGISTERED = _register_missing()


def registered_sdpa_ops() -> List[str]:
    """The aten SDPA ops whose FLOP formula vitzoo registered (those torch left uncounted)."""
    return list(_REGISTERED)


def _fvcore_sdpa_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle (multiply-adds, fvcore's unit) for ``aten::scaled_dot_product_attention``."""
    return sdpa_macs(jit_shape(inputs[0]), jit_shape(inputs[1]), jit_shape(inputs[2]))


add_fvcore_handle("aten::scaled_dot_product_attention", _fvcore_sdpa_handle)
