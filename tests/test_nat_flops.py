"""FLOPs of NAT/DiNAT as the papers count them (issue 7).

fvcore counts one multiply-add as one (its matmul/conv handles), and so must the zoo's handle of
``vitzoo::na2d``: the totals then equal the official code's (NAT-mini 2.711, NAT-tiny 4.318,
DiNAT-s-tiny 4.509 GMACs at 224, measured with the official code and NATTEN 0.17's handle).
torch's ``FlopCounterMode`` keeps its own convention, two FLOPs per multiply-add.
"""
from __future__ import annotations

import logging
import warnings

import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.kernels import fvcore_handles, na_flops

OFFICIAL_GMACS_224 = {
    "vitzoo_nat_mini": 2.711,
    "vitzoo_nat_tiny": 4.318,
    "vitzoo_dinat_s_tiny": 4.509,
}


def _fvcore(model: torch.nn.Module, x: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis
        analysis = FlopCountAnalysis(model, x).set_op_handle(**fvcore_handles())
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        analysis.total()  # runs the trace once; by_operator reuses it
    return analysis


@pytest.mark.parametrize("name", sorted(OFFICIAL_GMACS_224))
def test_fvcore_gmacs_match_the_official_totals(name):
    pytest.importorskip("fvcore")
    model = timm.create_model(name).eval()
    analysis = _fvcore(model, torch.randn(1, 3, 224, 224))
    gmacs = analysis.total() / 1e9
    assert gmacs == pytest.approx(OFFICIAL_GMACS_224[name], rel=0.02)
    assert "vitzoo::na2d" not in analysis.unsupported_ops()


def test_fvcore_counts_macs_and_flop_counter_mode_counts_flops():
    """Same model, same input: the NA op is MACs in fvcore, 2x that in FlopCounterMode."""
    pytest.importorskip("fvcore")
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model("vitzoo_nat_mini").eval()
    x = torch.randn(1, 3, 224, 224)
    by_op = _fvcore(model, x).by_operator()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    torch_by_op = counter.get_flop_counts()["Global"]
    # NAT-mini: 4 stages of heads-last q [1, H, W, heads, 32] with 7x7 windows, depths 3/4/6/5
    macs = sum(depth * na_flops((1, hw, hw, heads, 32), (7, 7)) // 2
               for hw, heads, depth in [(56, 2, 3), (28, 4, 4), (14, 8, 6), (7, 16, 5)])
    assert by_op["na2d"] == macs
    assert torch_by_op[torch.ops.vitzoo.na2d] == 2 * macs
    # every op torch counts is 2x fvcore's count of it; fvcore adds the norms torch skips
    assert counter.get_total_flops() == 2 * (sum(by_op.values()) - by_op["layer_norm"])
