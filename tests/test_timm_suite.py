"""timm's own model test suite (tests/test_models.py), applied to the zoo's finished families.

For the smallest model of each in-scope family this runs what timm's suite runs on timm's models:
TorchScript forward, FX forward/backward through torchvision's feature extractor with timm's
tracer settings, the default-cfg checks (the "standard" version for spatial models, the
"non-standard" one timm applies to its own ViT/DeiT/CrossViT token models) and a backward pass
reaching every parameter. Sizes follow the suite: 128 px unless the model has a fixed input size.
Our test code, timm's facts (sizes, checks, tracer kwargs). Differences from timm's file: the FX
forward and backward checks share one traced model (tracing dominates the runtime), and CrossViT
(240 px, fixed) runs the FX checks although timm skips fixed sizes above 224 there.
"""
import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._registry import get_pretrained_cfg_value

import vitzoo  # noqa: F401  (registers the zoo)

fx = pytest.importorskip("torchvision.models.feature_extraction")

torch.set_num_threads(1)

TARGET_SIZE = 128  # timm: TARGET_JIT_SIZE, TARGET_BWD_SIZE, TARGET_FWD_FX_SIZE, TARGET_BWD_FX_SIZE
MAX_FWD_OUT_SIZE = 448

#: spatial models: timm's "standard" default-cfg test applies (4-D features with pool_size)
STD_MODELS = [
    "vitzoo_poolformer_s12",
    "vitzoo_poolformerv2_s12",
    "vitzoo_convformer_s18",
    "vitzoo_caformer_s18",
    "vitzoo_spectformer_h_s",
]
#: token models: timm puts its own vit_*/deit*/crossvit_* under the "non-standard" test
NON_STD_MODELS = [
    "vitzoo_spectformer_ti",
    "vitzoo_evit_deit_tiny_patch16_224",
    "vitzoo_crossvit_tiny_240",
]
ALL = STD_MODELS + NON_STD_MODELS


def _input_size(name: str, target: int | None = TARGET_SIZE) -> tuple[int, ...]:
    """timm's `_get_input_size`: the cfg size, clipped to `target` unless the size is fixed."""
    size = tuple(get_pretrained_cfg_value(name, "input_size"))
    if get_pretrained_cfg_value(name, "fixed_input_size") or target is None:
        return size
    min_size = get_pretrained_cfg_value(name, "min_input_size")
    if min_size and max(size) > target:
        return tuple(min_size)
    return tuple(min(s, target) for s in size)


def _seed_input(size: tuple[int, ...], batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch, *size), generator=g)


# ---- TorchScript -----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # deprecated, still works
@pytest.mark.parametrize("name", ALL)
def test_model_forward_torchscript(name):
    """timm's test, plus: the scripted model's logits equal the eager model's."""
    size = _input_size(name)
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False).eval()
    x = _seed_input(size, 1)
    with torch.no_grad():
        ref = model(x)
        scripted = torch.jit.script(model)
        out = scripted(x)
    assert out.shape == ref.shape == (1, model.num_classes)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


# ---- FX --------------------------------------------------------------------------------------
def _tracer_kwargs() -> dict:
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                param_shapes_constant=True)


def _create_fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's `_create_fx_model`: a feature extractor returning the node(s) feeding the graph output."""
    kwargs = _tracer_kwargs()
    train_nodes, eval_nodes = fx.get_graph_node_names(model, tracer_kwargs=kwargs)
    eval_return = [eval_nodes[-1]]
    train_return = [train_nodes[-1]]
    if train:
        graph = fx.NodePathTracer(**kwargs).trace(model)
        nodes = list(reversed(graph.nodes))
        out_names = [n.name for n in nodes[0]._input_nodes.keys()]
        node_names = [n.name for n in nodes]
        train_return = [train_nodes[-node_names.index(n)] for n in out_names]
    return fx.create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=eval_return,
                                       tracer_kwargs=kwargs)


@pytest.mark.parametrize("name", ALL)
def test_model_forward_backward_fx(name):
    """timm's test_model_forward_fx and test_model_backward_fx, on one traced model (tracing is the cost).

    Eval graph: output equal to the eager model's. Train graph: a backward reaches every parameter.
    """
    model = timm.create_model(name, pretrained=False, num_classes=42)
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _create_fx_model(model, train=True)

    x = _seed_input(_input_size(name), 1)
    model.eval()
    fx_model.eval()
    with torch.no_grad():
        ref = model(x)
        out = torch.cat(tuple(fx_model(x).values()))
    assert out.shape == ref.shape == (1, 42)
    assert torch.equal(out, ref), f"max abs diff {(out - ref).abs().max().item()}"

    fx_model.train()
    out = torch.cat(tuple(fx_model(_seed_input(_input_size(name), 2)).values()))
    out.mean().backward()
    for n, p in fx_model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()


# ---- backward --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_model_backward(name):
    model = timm.create_model(name, pretrained=False, num_classes=42).train()
    out = model(_seed_input(_input_size(name), 2))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()


# ---- default cfgs ----------------------------------------------------------------------------
def _check_cfg_names(model: torch.nn.Module) -> None:
    """The cfg's classifier and first_conv name parameters of the model as built."""
    cfg, state = model.pretrained_cfg, model.state_dict()
    if cfg.get("num_classes"):
        classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
        for c in classifiers:
            assert c + ".weight" in state, f"classifier {c} not in model params"
    first = cfg["first_conv"] if isinstance(cfg["first_conv"], (tuple, list)) else (cfg["first_conv"],)
    for c in first:
        assert c + ".weight" in state, f"first_conv {c} not in model params"


@pytest.mark.parametrize("name", STD_MODELS)
def test_model_default_cfgs(name):
    """timm's standard version: unpooled features match `pool_size` in the model's `output_fmt`."""
    model = timm.create_model(name, pretrained=False).eval()
    _check_cfg_names(model)
    cfg = model.pretrained_cfg
    pool_size = cfg["pool_size"]
    assert pool_size is not None, "spatial model without pool_size in its cfg"
    output_fmt = getattr(model, "output_fmt", "NCHW")
    feat_axis, spatial_axis = get_channel_dim(output_fmt), get_spatial_dim(output_fmt)
    size = tuple(min(s, MAX_FWD_OUT_SIZE) for s in cfg["input_size"])
    x = _seed_input(size, 1)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert feats.ndim == 4
        assert (feats.shape[spatial_axis[0]], feats.shape[spatial_axis[1]]) == tuple(pool_size)
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
        assert (out.shape[spatial_axis[0]], out.shape[spatial_axis[1]]) == tuple(pool_size)

        model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
        out = model(x)
        assert out.ndim == 4
        assert (out.shape[spatial_axis[0]], out.shape[spatial_axis[1]]) == tuple(pool_size)


@pytest.mark.parametrize("name", NON_STD_MODELS)
def test_model_default_cfgs_non_std(name):
    """timm's non-standard version (its ViT/DeiT/CrossViT): feature dim and pooled sizes only."""
    model = timm.create_model(name, pretrained=False).eval()
    _check_cfg_names(model)
    x = _seed_input(_input_size(name, target=None), 1)
    with torch.no_grad():
        feats = model.forward_features(x)
        if isinstance(feats, (tuple, list)):  # CrossViT: one [B, N_b, C_b] per branch, C_b sum to num_features
            assert sum(f.shape[-1] for f in feats) == model.num_features
        else:
            feat_dim = -1 if feats.ndim == 3 else 1  # tokens [B, N, C] or maps [B, C, H, W]
            assert feats.shape[feat_dim] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)

        model.reset_classifier(0)
        out = model(x)
        assert out.shape == (1, model.head_hidden_size)

        model = timm.create_model(name, pretrained=False, num_classes=0).eval()
        out = model(x)
        assert out.shape == (1, model.num_features)
