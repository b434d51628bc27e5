"""timm's own model test suite (tests/test_models.py) on the Swin, NAT/DiNAT, EfficientViT-MSRA and SHViT families.

For the smallest model of each family this checks what timm's suite checks on timm's models:
TorchScript forward (and equality with eager), FX forward/backward through torchvision's feature
extractor with timm's tracer settings (leaf modules, autowrapped functions, constant param
shapes), the standard default-cfg test (our `vitzoo_` names match none of timm's NON_STD
filters), a backward pass reaching every parameter, and forward equality with grad checkpointing.
Sizes follow the suite: the cfg size clipped to the test's target (128 for TorchScript, FX and
backward, 384 for forward) unless the cfg says `fixed_input_size`. Our code, timm's facts.
"""
from typing import Optional, Tuple

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._registry import get_pretrained_cfg_value

import vitzoo  # noqa: F401  (registers the zoo)

fx = pytest.importorskip("torchvision.models.feature_extraction")

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing the model in eval mode:UserWarning"),
]

TARGET_JIT_SIZE = TARGET_BWD_SIZE = TARGET_FX_SIZE = 128
TARGET_FWD_SIZE = 384
MAX_FWD_OUT_SIZE = 448

#: smallest model of each family; all spatial, so timm's standard default-cfg test applies
MODELS = [
    "vitzoo_swin_tiny_patch4_window7_224",
    "vitzoo_nat_mini",
    "vitzoo_dinat_mini",
    "vitzoo_dinat_s_tiny",
    "vitzoo_nat_isotropic_small",
    "vitzoo_efficientvit_m0",
    "vitzoo_shvit_s1",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread (the CI box is shared); the previous setting is restored afterwards."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _input_size(name: str, target: Optional[int]) -> Tuple[int, ...]:
    """timm's `_get_input_size`: the cfg size, clipped to `target` unless the cfg fixes it."""
    size = tuple(get_pretrained_cfg_value(name, "input_size"))
    if get_pretrained_cfg_value(name, "fixed_input_size") or target is None:
        return size
    min_size = get_pretrained_cfg_value(name, "min_input_size")
    if min_size and max(size) > target:
        return tuple(min_size)
    return tuple(min(s, target) for s in size)


def _randn(size: Tuple[int, ...], batch: int) -> torch.Tensor:
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(0))


# ---- TorchScript -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_model_forward_torchscript(name):
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False).eval()
    x = _randn(_input_size(name, TARGET_JIT_SIZE), 1)
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


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_backward_fx(name):
    """timm's test_model_forward_fx and test_model_backward_fx on one traced model (tracing is the cost).

    Eval graph: the eager model's output exactly. Train graph: a backward reaches every parameter.
    """
    model = timm.create_model(name, pretrained=False, num_classes=42)
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _create_fx_model(model)
    size = _input_size(name, TARGET_FX_SIZE)

    model.eval()
    fx_model.eval()
    x = _randn(size, 1)
    with torch.no_grad():
        ref = model(x)
        out = torch.cat(tuple(fx_model(x).values()))
    assert out.shape == ref.shape == (1, 42)
    assert torch.equal(out, ref), f"max abs diff {(out - ref).abs().max().item()}"

    fx_model.train()
    out = torch.cat(tuple(fx_model(_randn(size, 2)).values()))
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()


# ---- backward / forward ----------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_model_backward(name):
    model = timm.create_model(name, pretrained=False, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    out = model(_randn(_input_size(name, TARGET_BWD_SIZE), 2))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in model.parameters()) == num_params
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_grad_checkpointing(name):
    """timm's test_model_forward: eval forward, then the same output with grad checkpointing on."""
    model = timm.create_model(name, pretrained=False).eval()
    x = _randn(_input_size(name, TARGET_FWD_SIZE), 1)
    out = model(x)
    assert out.shape == (1, model.num_classes)
    assert not torch.isnan(out).any()
    model.set_grad_checkpointing()
    assert all(s.grad_checkpointing for s in model.stages)
    out2 = model(x)
    torch.testing.assert_close(out2, out, rtol=1e-4, atol=1e-5)


# ---- default cfgs ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_model_default_cfgs(name):
    """timm's standard version: unpooled features match `pool_size` in the model's `output_fmt`."""
    model = timm.create_model(name, pretrained=False).eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    for key in ("classifier", "first_conv"):
        names = cfg[key] if isinstance(cfg[key], (tuple, list)) else (cfg[key],)
        for n in names:
            assert n + ".weight" in state, f"cfg {key} {n} not in model params"

    pool_size = cfg["pool_size"]
    assert pool_size is not None, "spatial model without pool_size in its cfg"
    output_fmt = getattr(model, "output_fmt", "NCHW")
    feat_axis, (h_axis, w_axis) = get_channel_dim(output_fmt), get_spatial_dim(output_fmt)
    x = _randn(tuple(min(s, MAX_FWD_OUT_SIZE) for s in cfg["input_size"]), 1)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.ndim == 4
        assert (feats.shape[h_axis], feats.shape[w_axis]) == tuple(pool_size)
        assert feats.shape[feat_axis] == model.num_features
        assert pre.shape == (1, model.head_hidden_size)

        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == (1, model.head_hidden_size)
        torch.testing.assert_close(out, pre)

        model.reset_classifier(0, "")
        out = model(x)
        assert out.ndim == 4
        assert (out.shape[h_axis], out.shape[w_axis]) == tuple(pool_size)
        assert out.shape[feat_axis] == model.num_features

        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
        out = model(x)
        assert out.ndim == 4
        assert (out.shape[h_axis], out.shape[w_axis]) == tuple(pool_size)
        assert out.shape[feat_axis] == model.num_features


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
    x = _randn(_PADDED_INPUT.get(name, (3, 92, 156)), 2)
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
