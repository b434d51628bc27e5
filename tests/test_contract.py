"""timm's model contract, checked on the zoo the way timm's own model tests check timm.

Cheap checks (pretrained cfg, meta-device build, classifier / first-conv names) run for every
registered zoo model. Forward / backward / feature / default-cfg checks run for one
representative of each architecture (tests/zoo_cases.py), at the sizes timm's suite uses.
"""
import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from zoo_cases import REPRESENTATIVES, SPATIAL_MODELS, TARGET_FEAT_SIZE, input_size, seeded_input

import vitzoo
from vitzoo.models import FAMILY_MODULES

ALL_MODELS = vitzoo.list_models()
REQUIRED_CFG_KEYS = ("input_size", "mean", "std", "num_classes", "first_conv", "classifier", "crop_pct", "interpolation")


def _module_of(name: str) -> str:
    return timm.models._registry._model_to_module[name]


def test_every_family_has_a_representative():
    assert {_module_of(n) for n in REPRESENTATIVES} == set(FAMILY_MODULES)


# ---- every model -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_MODELS)
def test_pretrained_cfg_and_meta_build(name):
    model = timm.create_model(name, device="meta")
    cfg = model.pretrained_cfg
    for key in REQUIRED_CFG_KEYS:
        assert cfg.get(key) is not None, f"{name}: pretrained_cfg lacks {key!r}"
    hub = cfg.get("hf_hub_id")
    assert not hub or (hub.startswith("timm/") and "vitzoo" not in hub), f"{name}: hub id {hub!r} is not a timm id"
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors), f"{name}: a tensor was not built on meta"
    state = model.state_dict()
    for key in ("first_conv", "classifier"):
        names = cfg[key] if isinstance(cfg[key], (tuple, list)) else (cfg[key],)
        for n in names:
            assert n + ".weight" in state, f"{name}: cfg {key} {n!r} not in the state dict"
    assert model.num_classes == cfg["num_classes"]
    assert model.num_features > 0 and model.head_hidden_size > 0
    assert len(model.feature_info) >= 1


# ---- one representative per architecture ---------------------------------------------------------
@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_forward_and_grad_checkpointing(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = seeded_input(input_size(name), 1)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes)
        assert torch.isfinite(out).all()
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(seeded_input(input_size(name), 2))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_default_cfg_features_head_and_reset(name):
    """timm's default-cfg test: the "standard" version for spatial models, "non-standard" for token models."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = seeded_input(input_size(name, None), 1)
    fmt = getattr(model, "output_fmt", "NCHW")
    spatial = name in SPATIAL_MODELS
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        if isinstance(feats, (list, tuple)):  # multi-branch models (CrossViT): one token tensor per branch
            assert sum(f.shape[-1] for f in feats) == model.num_features
        elif spatial:
            assert feats.ndim == 4 and feats.shape[get_channel_dim(fmt)] == model.num_features
            h, w = get_spatial_dim(fmt)
            assert cfg.get("pool_size"), "spatial model without pool_size in its cfg"
            assert (feats.shape[h], feats.shape[w]) == tuple(cfg["pool_size"])
        else:
            assert feats.shape[-1] == model.num_features

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        torch.testing.assert_close(pooled, pre)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
        if spatial:
            model.reset_classifier(0, "")
            assert model(x).shape == feats.shape
            unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
            assert unpooled(x).shape == feats.shape
        else:
            headless = timm.create_model(name, num_classes=0).eval()
            assert headless(x).shape == (1, model.num_features)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_forward_intermediates_match_forward_features(name):
    model = timm.create_model(name).eval()
    x = seeded_input(input_size(name, TARGET_FEAT_SIZE), 1)
    info = timm.models.FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == len(model.feature_info)
        for c, r, t in zip(info.channels(), info.reduction(), inter):
            if t.ndim == 4:
                assert t.shape[1] == c
                assert t.shape[2] <= math.ceil(x.shape[2] / r) + 1 and t.shape[3] <= math.ceil(x.shape[3] / r) + 1
            else:
                assert t.shape[-1] == c
        torch.testing.assert_close(final, model.forward_features(x))


def o_fmt(model) -> str:
    return getattr(model, "output_fmt", "NCHW")


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    x = seeded_input(input_size(name, TARGET_FEAT_SIZE), 1)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(model.feature_info.channels())
    # NHWC where timm's twin gives NHWC (Swin), NCHW elsewhere: the layout the model declares
    channel_dim = -1 if o_fmt(model) == "NHWC" else 1
    for c, o in zip(model.feature_info.channels(), outs):
        assert o.shape[channel_dim if o.ndim == 4 else -1] == c
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_bad_input_and_kwargs_are_named(name):
    model = timm.create_model(name).eval()
    c, h, w = input_size(name)
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, c + 1, h, w))
    if model.input_divisor > 1 or getattr(model, "fixed_input_size", None):
        bad = (h + 1, w)
    elif model.min_input_size > 1:
        bad = (model.min_input_size - 1, w)
    else:
        bad = None  # the model takes every image size
    if bad is not None:
        with pytest.raises(ValueError, match=r"\d+x\d+"):
            model(torch.randn(1, c, *bad))
    with pytest.raises(TypeError):
        timm.create_model(name, not_a_real_kwarg=1)


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_group_matcher_and_no_weight_decay(name):
    from timm.models import group_parameters
    model = timm.create_model(name, device="meta")
    groups = group_parameters(model, model.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    names = dict(model.named_parameters())
    assert set(model.no_weight_decay()) <= set(names) | {"pos_embed", "cls_token"}


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_fvcore_counts_flops(name):
    """The profiler's FLOP column: fvcore must trace every family (custom kernels via their handles)."""
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location(
        "profile_models", pathlib.Path(__file__).parents[1] / "tools" / "profile_models.py")
    profile_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_models)
    model = timm.create_model(name).eval()
    flops = profile_models.count_flops(model, seeded_input(input_size(name, TARGET_FEAT_SIZE), 1))
    assert flops is not None and flops > 0
