"""torch.export, torch.compile without graph breaks, channels_last and bf16 autocast, per family.

One shallow model per family (zoo_cases.SMALL). channels_last and autocast run in `make test`;
torch.export and torch.compile (fullgraph, the 'eager' backend: the check is dynamo's capture,
not codegen) run there for the custom-op families and are slow-marked for the rest.
"""
import pytest
import timm
import torch
from zoo_cases import REPRESENTATIVES, SMALL

import vitzoo  # noqa: F401  (registers the zoo)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

#: families whose custom ops (vitzoo::na2d, vitzoo::routed_attention) must trace as one op
FAST = ["vitzoo_nat_mini", "vitzoo_biformer_tiny"]


def _model_and_input(name, batch=2):
    kwargs, size = SMALL[name]
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return model, x


def _cases(fast):
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in REPRESENTATIVES]


@pytest.mark.parametrize("name", _cases(FAST))
def test_torch_export_matches_eager(name):
    model, x = _model_and_input(name)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", _cases(FAST))
def test_torch_compile_fullgraph_matches_eager(name):
    torch._dynamo.reset()
    model, x = _model_and_input(name)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_channels_last_matches(name):
    model, x = _model_and_input(name)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_bf16_autocast_runs_close(name):
    model, x = _model_and_input(name)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.98, f"bf16 autocast output drifted: cosine {cos.item():.4f}"
