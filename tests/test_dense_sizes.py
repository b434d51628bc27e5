"""Every registered model as a dense-prediction backbone: `features_only=True` at detection sizes.

Issue 17: a backbone takes the sizes detection and segmentation give it (250x333, 320x480, ...),
down to its documented minimum (`min_input_size`), and returns one map per `feature_info` entry:
its channels, at its reduction (between floor and ceil of size / reduction, whatever padding the
family does inside). CrossViT follows timm's twin, which rescales every input to each branch's
trained size, so its maps keep the trained-size shape. At the trained size the classifier's
logits and the feature maps are what they were before the change (tests/data/dense_baseline.pt,
recorded from the pre-change code by tests/make_dense_baseline.py; today's code reproduces it bit
for bit on the machine that recorded it). The test allows float32 rounding: another CPU's
kernels sum in another order.

The default run checks one small model per family; `-m slow` every registered model.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the zoo)
from make_dense_baseline import SMALL_MODELS, record, to_nchw, trained_size

BASELINE = torch.load(Path(__file__).parent / "data" / "dense_baseline.pt", weights_only=True)
ALL_MODELS = timm.list_models("vitzoo_*")
DETECTION_SIZES = [(250, 333), (320, 480)]
# families whose maps do not follow the input size (timm's CrossViT rescales the image)
FIXED_GRID = ("vitzoo_crossvit_",)


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=() if n in SMALL_MODELS else pytest.mark.slow) for n in names]


def _min_input_size(name: str) -> int:
    """The smallest side the model documents (ZooModel.min_input_size), read off a meta-device build."""
    with torch.device("meta"):
        return int(getattr(timm.create_model(name, pretrained=False), "min_input_size", 1))


def _check_maps(name: str, features: torch.nn.Module, hw: tuple[int, int]) -> None:
    """One NCHW-convertible map per feature_info entry, its channels, at its reduction of `hw`."""
    h, w = hw
    with torch.no_grad():
        maps = to_nchw(list(features(torch.randn(1, 3, h, w))), features)
    channels, reductions = features.feature_info.channels(), features.feature_info.reduction()
    assert len(maps) == len(channels), f"{name} at {hw}: {len(maps)} maps, feature_info lists {len(channels)}"
    size = trained_size(name)
    for i, (m, c, r) in enumerate(zip(maps, channels, reductions)):
        assert m.shape[:2] == (1, c), f"{name} at {hw}: map {i} is {tuple(m.shape)}, expected {c} channels"
        assert torch.isfinite(m).all(), f"{name} at {hw}: map {i} not finite"
        for got, side in zip(m.shape[2:], (h, w)):
            src = size if name.startswith(FIXED_GRID) else side
            lo, hi = math.floor(src / r), math.ceil(src / r)
            assert lo <= got <= hi, f"{name} at {hw}: map {i} is {tuple(m.shape[2:])}, expected {lo}..{hi} per side"


@pytest.mark.parametrize("name", _params(ALL_MODELS))
def test_features_at_detection_sizes(name, one_thread):
    """250x333 and 320x480, the documented minimum (square and odd-by-even), with default kwargs;
    below the minimum a one-line ValueError naming the size."""
    features = timm.create_model(name, pretrained=False, features_only=True).eval()
    m = _min_input_size(name)
    for hw in [*DETECTION_SIZES, (m, m), (m + 1, m + 2)]:
        _check_maps(name, features, hw)
    if m > 1:
        with pytest.raises(ValueError, match=f"{m - 1}x{m + 5}"):
            features(torch.randn(1, 3, m - 1, m + 5))


# Bit for bit holds only on the arithmetic the baseline was recorded with: two Xeons with the same
# torch and the same AVX-512 capability gave values up to 1.4e-5 apart over the 84 models (other
# MKL/oneDNN kernels), so the test allows float32 rounding, 7x above that and far below what a
# changed path gives (padding at the trained size, another window rule: 1e-2 and more).
RTOL, ATOL = 1e-4, 1e-4


def _assert_same(what: str, n: torch.Tensor, o: torch.Tensor) -> None:
    diff = (n - o).abs().max().item()
    assert torch.allclose(n, o, rtol=RTOL, atol=ATOL), f"{what} values differ (max abs diff {diff:.3g})"


@pytest.mark.parametrize("name", _params(ALL_MODELS))
def test_trained_size_outputs_unchanged(name, one_thread):
    """Logits and features at the trained size equal the recorded ones within float32 rounding."""
    if name not in BASELINE["models"]:
        pytest.skip(f"{name} has no recorded baseline (registered after tests/data/dense_baseline.pt)")
    old = BASELINE["models"][name]
    new = record(name, old["size"])
    assert new["channels"] == old["channels"] and new["reduction"] == old["reduction"]
    pairs = [("logits", old["logits"], new["logits"])]
    assert len(new["features"]) == len(old["features"])
    pairs += [(f"map {i}", o, n) for i, (o, n) in enumerate(zip(old["features"], new["features"]))]
    for what, o, n in pairs:
        assert tuple(n["shape"]) == tuple(o["shape"]), f"{name} {what}: shape {n['shape']} != {o['shape']}"
        for key in ("head", "spread"):
            _assert_same(f"{name} {what}: {key}", n[key], o[key])
        for key in ("sum", "abs_sum"):
            got, want = torch.tensor(n[key]), torch.tensor(o[key])
            tol = RTOL * float(o["abs_sum"]) + ATOL
            assert (got - want).abs().item() <= tol, f"{name} {what}: {key} {n[key]!r} != {o[key]!r}"


def test_baseline_covers_every_registered_model():
    """The recorded baseline lists every model registered today (re-record when adding one)."""
    assert set(SMALL_MODELS) <= set(BASELINE["models"])
    missing = sorted(set(ALL_MODELS) - set(BASELINE["models"]))
    assert not missing, f"no baseline for {missing}: run tests/make_dense_baseline.py on the code before the change"
