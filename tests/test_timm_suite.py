"""The TorchScript and FX parts of timm's own model test suite (tests/test_models.py) on the zoo.

For one representative of each architecture (tests/zoo_cases.py): TorchScript forward, equal to
eager; FX forward/backward through torchvision's feature extractor with timm's tracer settings
(leaf modules, autowrapped functions, constant param shapes). The forward/backward/default-cfg
parts of timm's suite are in test_contract.py. Our test code, timm's facts. Differences from
timm's file: the FX forward and backward checks share one traced model (tracing is the cost),
and CrossViT (240 px, fixed) runs FX although timm skips fixed sizes above 224 there.
"""
import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from zoo_cases import REPRESENTATIVES, input_size, seeded_input

import vitzoo  # noqa: F401  (registers the zoo)

fx = pytest.importorskip("torchvision.models.feature_extraction")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing the model in eval mode:UserWarning"),
]




# ---- TorchScript -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_model_forward_torchscript(name):
    """timm's test, plus: the scripted model's logits equal the eager model's."""
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False).eval()
    x = seeded_input(input_size(name), 1)
    with torch.no_grad():
        ref = model(x)
        out = torch.jit.script(model)(x)
    assert out.shape == ref.shape == (1, model.num_classes)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---- FX --------------------------------------------------------------------------------------
def _tracer_kwargs() -> dict:
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                param_shapes_constant=True)


def _create_fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """timm's `_create_fx_model(train=True)`: return the nodes feeding the graph output (train and eval)."""
    kwargs = _tracer_kwargs()
    train_nodes, eval_nodes = fx.get_graph_node_names(model, tracer_kwargs=kwargs)
    graph = fx.NodePathTracer(**kwargs).trace(model)
    nodes = list(reversed(graph.nodes))
    node_names = [n.name for n in nodes]
    train_return = [train_nodes[-node_names.index(n.name)] for n in nodes[0]._input_nodes.keys()]
    return fx.create_feature_extractor(
        model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_model_forward_backward_fx(name):
    """timm's test_model_forward_fx and test_model_backward_fx on one traced model.

    Eval graph: the eager model's output exactly. Train graph: a backward reaches every parameter.
    """
    model = timm.create_model(name, pretrained=False, num_classes=42)
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _create_fx_model(model)
    size = input_size(name)

    model.eval()
    fx_model.eval()
    x = seeded_input(size, 1)
    with torch.no_grad():
        ref = model(x)
        out = torch.cat(tuple(fx_model(x).values()))
    assert out.shape == ref.shape == (1, 42)
    assert torch.equal(out, ref), f"max abs diff {(out - ref).abs().max().item()}"

    fx_model.train()
    out = torch.cat(tuple(fx_model(seeded_input(size, 2)).values()))
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()


# ---- the size-dependent paths (padding, clamped windows, odd maps) under TorchScript and FX ------
_PADDED = {
    # 92x156: maps 23x39 (window padding, odd -> PatchMerging pads), 12x20, 6x10, 3x5 (window clamped to 3x5)
    "vitzoo_swin_tiny_patch4_window7_224": dict(
        img_size=(92, 156), embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)),
    # 96x160 through DiNAT-s: maps 24x40 (dilation 8: padded to 56x56), ..., 3x5 (padded to 7x7)
    "vitzoo_dinat_s_tiny": dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                dilations=((1, 8), (1, 4), (1, 2), (1, 1))),
    # 100x150: maps 7x10 (windows 7 padded), 4x5, 2x3 (window clamped to 2)
    "vitzoo_efficientvit_m0": dict(img_size=100, embed_dim=(16, 32, 48), depth=(1, 1, 1), num_heads=(2, 2, 2)),
}
_PADDED_INPUT = {"vitzoo_dinat_s_tiny": (3, 96, 160), "vitzoo_efficientvit_m0": (3, 100, 150)}


@pytest.mark.parametrize("name", list(_PADDED))
def test_scripted_and_traced_match_eager_on_padded_sizes(name):
    """TorchScript (mask rebuilt, op called directly) and FX (leaf mixers) equal eager where maps get padded."""
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False, num_classes=5, **_PADDED[name]).eval()
    x = seeded_input(_PADDED_INPUT.get(name, (3, 92, 156)), 2)
    fx_model = fx.create_feature_extractor(
        model, return_nodes=[fx.get_graph_node_names(model, tracer_kwargs=_tracer_kwargs())[1][-1]],
        tracer_kwargs=_tracer_kwargs()).eval()
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.script(model)(x)
        traced = torch.cat(tuple(fx_model(x).values()))
    assert ref.shape == (2, 5)
    torch.testing.assert_close(scripted, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(traced, ref)
