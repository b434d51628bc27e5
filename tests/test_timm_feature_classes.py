"""feature_cls 'list' / 'dict' / 'hook' (timm's wrappers) on every zoo pyramid, 'fx' on Swin, and the
clear errors where a family has no stages to walk (vitzoo.models._timm_features).

The twins' parity (class, feature_info, maps on timm's weights, timm's state dict) is in
test_timm_feature_contract.py and test_swin.py; here: every pyramid family takes the three classes,
gives the default's maps at an odd size (the input check and per-size rules run first), loads its own
and the zoo model's state dict, and refuses bad input with the model's own error.
"""
import pytest
import timm
import torch
from timm.models import FeatureDictNet, FeatureHookNet, FeatureListNet

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.models._timm_features import ZooFeatureDictNet, ZooFeatureHookNet, ZooFeatureListNet

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

#: one model per pyramid family (HierarchicalBackbone)
PYRAMIDS = [
    "vitzoo_nat_mini", "vitzoo_dinat_mini", "vitzoo_dinat_s_tiny", "vitzoo_nat_isotropic_small",
    "vitzoo_biformer_tiny", "vitzoo_swin_tiny_patch4_window7_224", "vitzoo_poolformer_s12",
    "vitzoo_caformer_s18", "vitzoo_efficientvit_m0", "vitzoo_shvit_s1", "vitzoo_spectformer_h_s",
]
CLASSES = {"list": (FeatureListNet, ZooFeatureListNet), "dict": (FeatureDictNet, ZooFeatureDictNet),
           "hook": (FeatureHookNet, ZooFeatureHookNet)}
ODD = (70, 97)  # not a multiple of any stride, above every family's minimum


def _maps(out) -> list:
    return list(out.values()) if isinstance(out, dict) else out


@pytest.mark.parametrize("name", PYRAMIDS)
def test_create_model_gives_the_zoo_wrapper_with_the_default_contract(name):
    """On 'meta': timm's class (subclassed), the default's feature_info and map shapes at an odd size."""
    default = timm.create_model(name, features_only=True, device="meta")
    x = torch.empty(2, 3, *ODD, device="meta")
    shapes = [t.shape for t in default(x)]
    for feature_cls, (timm_cls, zoo_cls) in CLASSES.items():
        m = timm.create_model(name, features_only=True, feature_cls=feature_cls, device="meta")
        assert type(m) is zoo_cls and isinstance(m, timm_cls), feature_cls
        assert m.feature_info.get_dicts() == default.feature_info.get_dicts(), feature_cls
        out = m(x)
        assert isinstance(out, dict) == (feature_cls == "dict")
        assert [t.shape for t in _maps(out)] == shapes, feature_cls


@pytest.mark.parametrize("name", PYRAMIDS)
def test_maps_equal_forward_intermediates_at_an_odd_size(name):
    """The wrappers call the stages one by one: same maps as the default (forward_intermediates), bit for
    bit, in the family's layout; the zoo model's state dict and their own load; bad input is refused."""
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).eval().model  # the default wrapper's model
    idx = tuple(range(len(model.feature_info)))[-2:]
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=list(idx), intermediates_only=True,
                                          output_fmt=model.features_fmt)
        for feature_cls, (_, zoo_cls) in CLASSES.items():
            w = zoo_cls(model, out_indices=idx, flatten_sequential=True).eval()
            got = _maps(w(x))
            assert [t.shape for t in got] == [t.shape for t in ref], feature_cls
            assert all(torch.equal(a, b) for a, b in zip(got, ref)), feature_cls
            w.load_state_dict(w.state_dict(), strict=True)
            res = w.load_state_dict(model.state_dict(), strict=False)  # zoo layout: every key of w found
            assert not res.missing_keys, (feature_cls, res.missing_keys[:3])
    with pytest.raises(ValueError, match="input channels"):
        w(torch.randn(1, 1, *ODD))


def test_nhwc_pyramids_give_nchw_unless_the_twin_gives_nhwc():
    x = torch.empty(1, 3, 64, 96, device="meta")
    nat = timm.create_model("vitzoo_nat_mini", features_only=True, feature_cls="list", device="meta")
    swin = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, feature_cls="list",
                             device="meta")
    assert nat(x)[0].shape == (1, 64, 16, 24)  # NCHW: timm has no NAT
    assert swin(x)[0].shape == (1, 16, 24, 96)  # NHWC, as timm's Swin


def test_swin_fx_traces_timms_node_names():
    kw = dict(features_only=True, feature_cls="fx", img_size=64, embed_dim=16, depths=(2, 2, 2, 2),
              num_heads=(1, 2, 2, 4))
    twin = timm.create_model("swin_tiny_patch4_window7_224", **kw).eval()
    z = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", **kw).eval()
    assert isinstance(z, type(twin)) and z.feature_info.module_name() == twin.feature_info.module_name()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert [t.shape for t in z(x)] == [t.shape for t in twin(x)]


@pytest.mark.parametrize("name, feature_cls", [
    ("vitzoo_evit_deit_tiny_patch16_224", "list"), ("vitzoo_spectformer_ti", "dict"),
    ("vitzoo_crossvit_9_240", "hook"), ("vitzoo_crossvit_9_240", "list")])
def test_models_without_stages_refuse_with_a_clear_error(name, feature_cls):
    with pytest.raises(ValueError, match=rf"{name}: feature_cls='{feature_cls}' needs stage modules.*'getter'"):
        timm.create_model(name, features_only=True, feature_cls=feature_cls, device="meta")


def test_isotropic_models_keep_timms_hook_wrapper():
    m = timm.create_model("vitzoo_evit_deit_tiny_patch16_224", features_only=True, feature_cls="hook",
                          keep_rate=1.0, device="meta")
    assert type(m) is FeatureHookNet
    assert [t.shape for t in m(torch.empty(1, 3, 224, 224, device="meta"))] == [(1, 197, 192)] * 3


def test_feature_norms_refuse_the_timm_wrappers():
    with pytest.raises(ValueError, match="feature_norms=True .* default feature_cls"):
        timm.create_model("vitzoo_nat_mini", features_only=True, feature_cls="dict", feature_norms=True,
                          device="meta")
