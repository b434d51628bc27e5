"""ONNX export of every family, checked in onnxruntime against PyTorch (max abs diff <= 1e-4).

One small model per family (the representative, made shallow so export stays quick). The
TorchScript exporter (`dynamo=False`) runs inside `vitzoo.kernels.exportable()`, which routes the
zoo's custom ops to their registered decompositions; the dynamo exporter (`dynamo=True`, torch's
default) needs nothing: the decompositions are in the table it reads. In `make test`: the
TorchScript exporter for every family it supports, the dynamo one for the custom-op families and
SpectFormer (whose FFT only that exporter translates); the dynamo export of the rest is slow-marked.
"""
import warnings

import pytest
import timm
import torch
from zoo_cases import REPRESENTATIVES, SMALL

import vitzoo
from vitzoo.kernels import exportable

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[dev]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[dev]')")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

#: models whose ops only the dynamo exporter translates
DYNAMO_ONLY = {"vitzoo_spectformer_h_s": "torch.fft.rfft2", "vitzoo_spectformer_ti": "torch.fft.rfft2"}
#: dynamo export in `make test`: the custom-op families (the op decompositions) and the FFT ones
DYNAMO_FAST = {"vitzoo_nat_mini", "vitzoo_biformer_tiny", "vitzoo_spectformer_ti"}


def _model_and_input(name):
    kwargs, size = SMALL[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, x


def _check_in_onnxruntime(path, model, x):
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert out.shape == tuple(ref.shape)
    diff = abs(out - ref.numpy()).max()
    assert diff <= 1e-4, f"onnxruntime differs from PyTorch by {diff}"


def test_every_family_has_a_case():
    assert set(SMALL) == set(REPRESENTATIVES)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_torchscript_onnx_export_matches(name, tmp_path):
    if name in DYNAMO_ONLY:
        pytest.skip(f"the TorchScript ONNX exporter has no translation for {DYNAMO_ONLY[name]} (dynamo does)")
    model, x = _model_and_input(name)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings(), exportable():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17)
    _check_in_onnxruntime(path, model, x)


def _dynamo_export(name, tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install -e '.[dev]')")
    model, x = _model_and_input(name)
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)  # no context: plain user call
    program.save(str(path))
    _check_in_onnxruntime(path, model, x)


@pytest.mark.parametrize("name", sorted(DYNAMO_FAST))
def test_dynamo_onnx_export_matches(name, tmp_path):
    _dynamo_export(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in REPRESENTATIVES if n not in DYNAMO_FAST])
def test_dynamo_onnx_export_matches_slow(name, tmp_path):
    _dynamo_export(name, tmp_path)


def test_decompositions_equal_the_ops():
    """Each registered decomposition computes its op's outputs (NA 2-D/1-D with dilation and bias)."""
    from vitzoo.kernels.onnx import na1d_decomposition, na2d_decomposition
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 11, 3, 8, generator=g) for _ in range(3))
    rpb = torch.randn(3, 5, 5, generator=g)
    for got, ref in zip(na2d_decomposition(q, k, v, rpb, [3, 3], [2, 3], 0.3),
                        torch.ops.vitzoo.na2d(q, k, v, rpb, [3, 3], [2, 3], 0.3)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    q, k, v = (torch.randn(2, 13, 3, 8, generator=g) for _ in range(3))
    rpb = torch.randn(3, 9, generator=g)
    for got, ref in zip(na1d_decomposition(q, k, v, rpb, [5], [2], 0.3),
                        torch.ops.vitzoo.na1d(q, k, v, rpb, [5], [2], 0.3)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    ops = {str(op) for op in vitzoo.kernels.onnx_decompositions()}
    assert {"vitzoo.na2d.default", "vitzoo.na1d.default"} <= ops


def test_compile_still_sees_the_op():
    """The decomposition is for export only: FlopCounterMode (and torch.compile) still see vitzoo::na2d."""
    from torch.utils.flop_counter import FlopCounterMode
    model, x = _model_and_input("vitzoo_nat_mini")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert any("na2d" in str(op) for op in counter.get_flop_counts()["Global"])
