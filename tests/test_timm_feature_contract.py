"""timm's feature contract, checked against timm's twin of each zoo family timm also has (issue 17).

For every (zoo model, timm twin) pair, `features_only=True` must give what timm's twin gives: the
same output layout (a list of NCHW maps), the same `feature_info` (channels, reduction, module),
the same `out_indices` semantics, the same `feature_cls` options, the same maps on timm's weights
at a non-square odd size, and the twin's `features_only` `state_dict()` must load into the zoo's
strictly (no missing, no unexpected key). EViT's twin is DeiT with timm's dynamic_img_size +
dynamic_img_pad (EViT's defaults) at keep rate 1.0. SpectFormer has no twin in timm (NCHW maps,
tested in test_spectformer.py).
"""
import pytest
import timm
import torch

import vitzoo  # noqa: F401  (registers the zoo)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

#: zoo name, timm twin, zoo kwargs, twin kwargs
PAIRS = [
    ("vitzoo_poolformer_s12", "poolformer_s12", {}, {}),
    ("vitzoo_poolformerv2_s12", "poolformerv2_s12", {}, {}),
    ("vitzoo_convformer_s18", "convformer_s18", {}, {}),
    ("vitzoo_caformer_s18", "caformer_s18", {}, {}),
    ("vitzoo_efficientvit_m0", "efficientvit_m0", {}, {}),
    ("vitzoo_shvit_s1", "shvit_s1", {}, {}),
    ("vitzoo_crossvit_9_240", "crossvit_9_240", {}, {}),
    ("vitzoo_evit_deit_tiny_patch16_224", "deit_tiny_patch16_224", dict(keep_rate=1.0),
     dict(dynamic_img_size=True, dynamic_img_pad=True)),
]
#: twins whose timm feature class is FeatureListNet (flattened stages): 'list', 'dict' and 'hook' work there too
LIST_TWINS = {"poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18", "efficientvit_m0", "shvit_s1"}
SIZE = (130, 165)  # non-square, not a multiple of any stride


def _ids(pairs):
    return [p[0] for p in pairs]


def _shapes(out) -> list:
    out = list(out.values()) if isinstance(out, dict) else out
    assert isinstance(out, list) and all(torch.is_tensor(t) for t in out)
    return [tuple(t.shape) for t in out]


def _meta_pair(zoo, twin, zkw, tkw, **kw):
    """Both feature models on 'meta' (shapes only, no init cost) and a meta image batch."""
    z = timm.create_model(zoo, features_only=True, device="meta", **zkw, **kw)
    t = timm.create_model(twin, features_only=True, device="meta", **tkw, **kw)
    return z, t, torch.empty(2, 3, *SIZE, device="meta")


@pytest.mark.parametrize("zoo, twin, zkw, tkw", PAIRS, ids=_ids(PAIRS))
@pytest.mark.parametrize("out_indices", [None, (1,), (-1,), 2], ids=["default", "(1,)", "(-1,)", "last2"])
def test_layout_feature_info_and_out_indices(zoo, twin, zkw, tkw, out_indices):
    kw = {} if out_indices is None else dict(out_indices=out_indices)
    z, t, x = _meta_pair(zoo, twin, zkw, tkw, **kw)
    assert z.feature_info.get_dicts() == t.feature_info.get_dicts()
    assert _shapes(z(x)) == _shapes(t(x))


@pytest.mark.parametrize("zoo, twin, zkw, tkw", PAIRS, ids=_ids(PAIRS))
def test_feature_cls_options(zoo, twin, zkw, tkw):
    """Every feature class timm's twin takes, the zoo model takes, with the same class and outputs."""
    options = ["getter"] + (["list", "dict", "hook"] if twin in LIST_TWINS else [])
    for feature_cls in options:
        z, t, x = _meta_pair(zoo, twin, zkw, tkw, feature_cls=feature_cls)
        assert isinstance(z, type(t)), (feature_cls, type(z), type(t))
        assert z.feature_info.get_dicts() == t.feature_info.get_dicts(), feature_cls
        assert _shapes(z(x)) == _shapes(t(x)), feature_cls


@pytest.mark.parametrize("zoo, twin, zkw, tkw", PAIRS, ids=_ids(PAIRS))
def test_twin_state_dict_loads_strictly_and_maps_match(zoo, twin, zkw, tkw):
    """A detector fine-tuned on timm's backbone saves the twin's features_only state dict: it loads into
    the zoo's features_only model with every key matched, and the maps equal timm's at an odd size."""
    torch.manual_seed(0)
    ref = timm.create_model(twin, features_only=True, **tkw).eval()
    with torch.no_grad():  # perturb every parameter so norm weights, scales and biases all matter
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = timm.create_model(zoo, features_only=True, **zkw).eval()
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert _shapes(got) == _shapes(expected)
    diff = max((a - b).abs().max().item() for a, b in zip(got, expected))
    assert diff <= 1e-4, f"max abs diff {diff:.2e}"


def _twin_variants() -> list:
    """Every zoo variant of the twin families whose timm namesake exists (EViT: timm's DeiT)."""
    families = ("poolformer", "convformer", "caformer", "efficientvit_m", "shvit", "crossvit", "evit_deit")
    out = []
    for name in timm.list_models("vitzoo_*"):
        twin = name[len("vitzoo_"):].replace("evit_deit", "deit", 1)
        if any(f in name for f in families) and twin in timm.list_models():
            out.append((name, twin))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("zoo, twin", _twin_variants(), ids=[z for z, _ in _twin_variants()])
def test_every_variant_loads_its_twins_features_state_dict(zoo, twin):
    """Key level, on 'meta': every variant's features_only model takes its twin's state dict strictly."""
    z = timm.create_model(zoo, features_only=True, device="meta")
    t = timm.create_model(twin, features_only=True, device="meta")
    z.load_state_dict(t.state_dict(), strict=True, assign=True)
    assert z.feature_info.get_dicts() == t.feature_info.get_dicts()
