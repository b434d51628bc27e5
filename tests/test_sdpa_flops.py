"""SDPA FLOPs: the same count from FlopCounterMode (any backend) and fvcore, forward and backward."""
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import vitzoo  # noqa: F401  (registers the formulas)
from vitzoo.kernels import fvcore_handles, sdpa_backward_macs, sdpa_macs
from vitzoo.kernels.sdpa_flops import _BACKWARD_OPS, _FORWARD_OPS, registered_sdpa_ops

aten = torch.ops.aten
SHAPES = [((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 8)),   # cross-attention, L != S
          ((1, 4, 9, 16), (1, 4, 9, 16), (1, 4, 9, 16))]


def _count(fn) -> dict:
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(k): v for k, v in counter.get_flop_counts()['Global'].items()}


def test_formulas_by_hand():
    q, k, v = SHAPES[0]
    assert sdpa_macs(q, k, v) == 2 * 3 * 5 * 7 * (8 + 8)
    assert sdpa_backward_macs(q, k, v) == 2 * 3 * 5 * 7 * (3 * 8 + 2 * 8)
    assert sdpa_macs((2, 5, 8), (2, 7, 8), (2, 7, 4)) == 2 * 5 * 7 * 12  # 3-D inputs, Ev != E


@pytest.mark.parametrize('shapes', SHAPES)
def test_cpu_fused_sdpa_is_counted_forward_and_backward(shapes):
    q, k, v = (torch.randn(s, requires_grad=True) for s in shapes)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # the CPU fused op torch leaves uncounted
        fwd = _count(lambda: F.scaled_dot_product_attention(q, k, v))
        both = _count(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert sum(fwd.values()) == 2 * sdpa_macs(*shapes)
    assert sum(both.values()) == 2 * (sdpa_macs(*shapes) + sdpa_backward_macs(*shapes))
    assert all('flash_attention_for_cpu' in name for name in both), both  # nothing else counted


@pytest.mark.parametrize('shapes', SHAPES)
def test_count_does_not_depend_on_the_backend(shapes):
    """The CPU fused op, the math fallback and torch's own CUDA-op formulas give one count."""
    q, k, v = (torch.randn(s) for s in shapes)
    with sdpa_kernel(SDPBackend.MATH):
        math = sum(_count(lambda: F.scaled_dot_product_attention(q, k, v)).values())
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        fused = sum(_count(lambda: F.scaled_dot_product_attention(q, k, v)).values())
    assert fused == math == 2 * sdpa_macs(*shapes)
    for op in (aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_flash_attention,
               aten._scaled_dot_product_cudnn_attention):
        assert flop_registry[op](q, k, v) == fused, op
    grad_out = torch.randn(*shapes[0][:-1], shapes[2][-1])
    torch_bwd = flop_registry[aten._scaled_dot_product_efficient_attention_backward](
        grad_out, q, k, v)
    assert torch_bwd == 2 * sdpa_backward_macs(*shapes)


def _counted_by_torch_alone() -> set:
    """The SDPA backend ops the installed torch counts itself, asked in a process without vitzoo."""
    code = ("import torch; from torch.utils.flop_counter import flop_registry; "
            "print(' '.join(str(op).split('.')[-1] for op in flop_registry "
            "if 'scaled_dot_product' in str(op)))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_registered_only_where_torch_does_not_count():
    """vitzoo registers exactly the SDPA backend ops this torch has and leaves uncounted."""
    torch_counts = _counted_by_torch_alone()
    candidates = _FORWARD_OPS + _BACKWARD_OPS
    expected = {n for n in candidates if hasattr(aten, n) and n not in torch_counts}
    assert set(registered_sdpa_ops()) == expected, (sorted(torch_counts), registered_sdpa_ops())
    # torch's own formulas are left alone (ours would double count or replace them)
    assert not set(registered_sdpa_ops()) & torch_counts
    assert {'_scaled_dot_product_flash_attention', '_scaled_dot_product_efficient_attention'} <= torch_counts
    # whoever counts it, the CPU fused op is counted once after `import vitzoo`
    for name in ('_scaled_dot_product_flash_attention_for_cpu',
                 '_scaled_dot_product_flash_attention_for_cpu_backward'):
        assert getattr(aten, name) in flop_registry, name


class _Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


def test_fvcore_handle_counts_sdpa_like_flop_counter():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from fvcore.nn import FlopCountAnalysis
    assert 'aten::scaled_dot_product_attention' in fvcore_handles()
    model, x = _Attention().eval(), torch.randn(2, 10, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fv = FlopCountAnalysis(model, x).set_op_handle(**fvcore_handles()) \
            .unsupported_ops_warnings(False).total()
        tf = sum(_count(lambda: model(x)).values()) / 2
    linear_macs = 2 * 10 * (32 * 96 + 32 * 32)
    assert fv == tf == linear_macs + sdpa_macs((2, 4, 10, 8), (2, 4, 10, 8), (2, 4, 10, 8))
