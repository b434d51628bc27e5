"""timm's model contract, checked on the zoo the way timm's own model tests check timm.

Cheap checks (pretrained cfg, meta-device build, classifier / first-conv names) run for every
registered zoo model. Forward / backward / feature checks run for the smallest model of every
family module, at the reduced sizes timm's suite uses, to keep CI on 2 cores fast.
"""
import math
from functools import lru_cache

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim

import vitzoo

ALL_MODELS = vitzoo.list_models()
TARGET_FWD_SIZE = 128
TARGET_FEAT_SIZE = 96
REQUIRED_CFG_KEYS = ("input_size", "mean", "std", "num_classes", "first_conv", "classifier", "crop_pct", "interpolation")


def _module_of(name: str) -> str:
    return timm.models._registry._model_to_module[name]


@lru_cache(maxsize=None)
def _meta_param_count(name: str) -> int:
    """Parameter count from a meta-device build; -1 when the build fails (its own test then fails)."""
    try:
        return sum(p.numel() for p in timm.create_model(name, device="meta").parameters())
    except Exception:  # noqa: BLE001 - reported by test_pretrained_cfg_and_meta_build
        return -1


def _smallest_per_family() -> list[str]:
    best: dict[str, str] = {}
    for name in ALL_MODELS:
        mod = _module_of(name)
        if mod not in best or _meta_param_count(name) < _meta_param_count(best[mod]):
            best[mod] = name
    return sorted(best.values())


FAMILY_MODELS = _smallest_per_family()


def _input_size(model, target: int | None) -> tuple[int, int, int]:
    cfg = model.pretrained_cfg
    size = tuple(cfg["input_size"])
    if cfg.get("fixed_input_size", False) or target is None:
        return size
    if cfg.get("min_input_size") and max(size) > target:
        return tuple(cfg["min_input_size"])
    return tuple(min(s, target) if i else s for i, s in enumerate(size))


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
    first_conv = cfg["first_conv"] if isinstance(cfg["first_conv"], (tuple, list)) else (cfg["first_conv"],)
    for fc in first_conv:
        assert fc + ".weight" in state, f"{name}: first_conv {fc!r} not in the state dict"
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    for c in classifiers:
        assert c + ".weight" in state, f"{name}: classifier {c!r} not in the state dict"
    assert model.num_classes == cfg["num_classes"]
    assert model.num_features > 0 and model.head_hidden_size > 0
    assert len(model.feature_info) >= 1


# ---- the smallest model of each family ----------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_forward_and_grad_checkpointing(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FWD_SIZE))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes)
        assert torch.isfinite(out).all()
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42).train()
    x = torch.randn(2, *_input_size(model, TARGET_FWD_SIZE))
    out = model(x)
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_features_head_and_reset(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *_input_size(model, None))
    fmt = getattr(model, "output_fmt", "NCHW")
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        if isinstance(feats, (list, tuple)):  # multi-branch models (CrossViT): one token tensor per branch
            assert sum(f.shape[-1] for f in feats) == model.num_features
        elif feats.ndim == 4:
            assert feats.shape[get_channel_dim(fmt)] == model.num_features
            if cfg.get("pool_size"):
                spatial = get_spatial_dim(fmt)
                assert (feats.shape[spatial[0]], feats.shape[spatial[1]]) == tuple(cfg["pool_size"])
        else:
            assert feats.shape[-1] == model.num_features
        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre.shape
        torch.testing.assert_close(pooled, pre)
        model.reset_classifier(7)
        assert model(x).shape == (1, 7)
        if isinstance(feats, torch.Tensor) and feats.ndim == 4:
            model.reset_classifier(0, "")
            assert model(x).shape == feats.shape


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_forward_intermediates_match_forward_features(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FEAT_SIZE))
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


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FEAT_SIZE))
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(model.feature_info.channels())
    for c, o in zip(model.feature_info.channels(), outs):
        assert o.shape[1 if o.ndim == 4 else -1] == c
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_bad_input_and_kwargs_are_named(name):
    model = timm.create_model(name).eval()
    c, h, w = _input_size(model, TARGET_FWD_SIZE)
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


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_group_matcher_and_no_weight_decay(name):
    from timm.models import group_parameters
    model = timm.create_model(name, device="meta")
    groups = group_parameters(model, model.group_matcher())
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))
    names = dict(model.named_parameters())
    assert set(model.no_weight_decay()) <= set(names) | {"pos_embed", "cls_token"}


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_fvcore_counts_flops(name):
    """The profiler's FLOP column: fvcore must trace every family (custom kernels via their handles)."""
    import importlib.util
    import pathlib
    spec = importlib.util.spec_from_file_location(
        "profile_models", pathlib.Path(__file__).parents[1] / "tools" / "profile_models.py")
    profile_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_models)
    model = timm.create_model(name).eval()
    x = torch.randn(1, *_input_size(model, TARGET_FEAT_SIZE))
    flops = profile_models.count_flops(model, x)
    assert flops is not None and flops > 0
