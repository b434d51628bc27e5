"""MetaFormer family (PoolFormer v1/v2, ConvFormer, CAFormer): timm parity, official layouts, contract."""
import re

import pytest
import timm
import timm.models.metaformer as timm_metaformer
import torch

import vitzoo  # noqa: F401  (registers the zoo models)
from vitzoo.models.metaformers import checkpoint_filter_fn

PARITY = ["poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18"]
ALL_VARIANTS = [
    *(f"poolformer_{s}" for s in ("s12", "s24", "s36", "m36", "m48")),
    *(f"poolformerv2_{s}" for s in ("s12", "s24", "s36", "m36", "m48")),
    *(f"{f}_{s}" for f in ("convformer", "caformer") for s in ("s18", "s36", "m36", "b36")),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fast_timm_init(monkeypatch):
    """timm's trunc_normal_ init is slow and its values don't matter here: use normal_ instead."""
    monkeypatch.setattr(timm_metaformer, "trunc_normal_", lambda t, std=1.0, **kw: torch.nn.init.normal_(t, std=std))


def _timm_reference(name: str) -> torch.nn.Module:
    """timm's model with every parameter perturbed, so scales/norm weights/biases all matter."""
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref


def _ours_from(state_dict, name: str) -> torch.nn.Module:
    """Our model built on 'meta' (no init cost) and given the converted weights, strictly."""
    ours = timm.create_model(f"vitzoo_{name}", device="meta").eval()
    ours.load_state_dict(checkpoint_filter_fn(state_dict, ours), strict=True, assign=True)
    assert not any(t.is_meta for t in list(ours.parameters()) + list(ours.buffers()))
    return ours


def _assert_same(ref: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        f_ref, f_ours = ref.forward_features(x), ours.forward_features(x)
        y_ref, y_ours = ref.forward_head(f_ref), ours.forward_head(f_ours)
    assert f_ours.shape == f_ref.shape and y_ours.shape == y_ref.shape
    assert (f_ours - f_ref).abs().max().item() <= 1e-4
    assert (y_ours - y_ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", PARITY)
def test_timm_weights_give_timm_outputs(name, fast_timm_init):
    ref = _timm_reference(name)
    ours = _ours_from(ref.state_dict(), name)
    _assert_same(ref, ours, torch.randn(2, 3, 64, 64))


def test_filter_leaves_our_own_state_dict_alone():
    ours = timm.create_model("vitzoo_convformer_s18", device="meta")
    sd = ours.state_dict()
    out = checkpoint_filter_fn(sd, ours)
    assert out.keys() == sd.keys()


# ---- official layouts ------------------------------------------------------------------------
# The official checkpoints are not downloaded; we build their layout from timm's state dict by
# inverting timm's official->timm key mapping (see timm/models/metaformer.py checkpoint_filter_fn),
# and check that timm's own filter maps the built dict back onto timm's keys (so it IS the layout
# timm accepts as official), then that ours loads it into a model with timm's outputs.

def _to_official_poolformer_v1(sd):
    """timm -> sail-sg/poolformer: network.{2i} = stage i blocks, network.{2i-1} = downsample i."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"layer_scale(\d)\.scale$", r"layer_scale_\1", k)
        k = re.sub(r"^stem\.conv\.", "patch_embed.proj.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{2 * int(m.group(1))}.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", lambda m: f"network.{2 * int(m.group(1)) - 1}.proj.", k)
        k = re.sub(r"^head\.norm\.", "norm.", k)
        k = re.sub(r"^head\.fc\.", "head.", k)
        out[k] = v
    return out


def _to_official_metaformer(sd):
    """timm -> sail-sg/metaformer: downsample_layers.i, stages.i.j, norm, head; channels-last Linears."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stem\.conv\.", "downsample_layers.0.conv.", k)
        k = re.sub(r"^stem\.norm\.", "downsample_layers.0.post_norm.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", k)
        k = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv.", k)
        k = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", k)
        k = re.sub(r"^head\.norm\.", "norm.", k)
        k = re.sub(r"^head\.fc\.", "head.", k)
        if v.ndim == 4 and v.shape[-2:] == (1, 1):  # 1x1 convs are Linear layers there
            v = v.flatten(1)
        out[k] = v
    return out


def _official_logits(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The official code's head, written out from the papers' repos on timm's weights (an independent
    re-implementation): PoolFormer v1 (sail-sg/poolformer) GroupNorm(1, eps 1e-5) on the map, then the
    mean, then fc; ConvFormer/CAFormer (sail-sg/metaformer) mean, LayerNorm(eps 1e-6), then the MlpHead
    fc1 -> SquaredReLU -> LayerNorm(eps 1e-5, torch's default) -> fc2."""
    import torch.nn.functional as F
    feats = ref.forward_features(x)
    norm = ref.head.norm
    if isinstance(ref.head.fc, torch.nn.Linear):  # PoolFormer v1
        pooled = F.group_norm(feats, 1, norm.weight, norm.bias, eps=1e-5).mean([-2, -1])
        return F.linear(pooled, ref.head.fc.weight, ref.head.fc.bias)
    pooled = F.layer_norm(feats.mean([-2, -1]), (feats.shape[1],), norm.weight, norm.bias, eps=1e-6)
    mlp = ref.head.fc
    h = torch.relu(F.linear(pooled, mlp.fc1.weight, mlp.fc1.bias)) ** 2
    h = F.layer_norm(h, (h.shape[-1],), mlp.norm.weight, mlp.norm.bias, eps=1e-5)
    return F.linear(h, mlp.fc2.weight, mlp.fc2.bias)


@pytest.mark.parametrize("name,to_official", [
    ("poolformer_s12", _to_official_poolformer_v1),
    ("caformer_s18", _to_official_metaformer),
])
def test_official_layout_loads_with_the_official_computation(name, to_official, fast_timm_init):
    """An official file switches the model to the official head computation (and timm's file back to timm's)."""
    ref = _timm_reference(name)
    official = to_official(ref.state_dict())
    assert "stem.conv.weight" not in official
    # timm's own filter takes it back to timm's state dict: it is the official layout timm knows
    back = timm_metaformer.checkpoint_filter_fn(official, ref)
    assert back.keys() == ref.state_dict().keys()

    ours = _ours_from({"model": official}, name)
    assert ours.official_head
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _official_logits(ref, x), rtol=1e-5, atol=2e-5)
        if name.startswith("poolformer_"):  # here the two computations differ visibly (caformer: eps only)
            assert (ours(x) - ref(x)).abs().max() > 1e-4, "the two computations should differ here"
            # our own state dict in official mode round-trips
            again = _ours_from(ours.state_dict(), name)
            assert again.official_head and "norm.weight" in again.state_dict()
            torch.testing.assert_close(again(x), ours(x))
        else:
            assert ours.head.pre_logits.norm.eps == 1e-5
    ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours))  # timm's weights: timm's computation
    assert not ours.official_head
    _assert_same(ref, ours, x)


def test_official_head_flag_and_switch():
    model = timm.create_model("vitzoo_poolformer_s12", official_head=True).eval()
    assert isinstance(model.norm, torch.nn.GroupNorm) and model.norm.eps == 1e-5
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        official = model(x)
        model.set_official_head(False)
        assert isinstance(model.norm, torch.nn.Identity) and model.head.norm.eps == 1e-6
        assert not torch.allclose(model(x), official)
        model.set_official_head(True)
        torch.testing.assert_close(model(x), official)
    caformer = timm.create_model("vitzoo_caformer_s18", device="meta")
    assert caformer.head.pre_logits.norm.eps == 1e-6
    caformer.set_official_head()
    assert caformer.head.pre_logits.norm.eps == 1e-5


def _tiny_caformer(**kw) -> torch.nn.Module:
    return timm.create_model("vitzoo_caformer_s18", depths=(1, 1, 1, 1), dims=(16, 32, 64, 96), num_classes=5,
                             drop_rate=0.5, **kw)


def test_caformer_head_dropout_position_official_vs_timm():
    """Issue 18: sail-sg/metaformer's MlpHead applies `head_dropout` between the hidden layer's norm and
    fc2 (metaformer_baselines.py, MlpHead.forward: fc1 -> act -> norm -> head_dropout -> fc2); timm's
    MetaFormer drops before fc1 (head.drop) and builds its MlpHead without dropout. The official head
    puts it where the official model has it; timm's (default, and for timm's weights) where timm has it."""
    seen = {}
    for official in (False, True):
        model = _tiny_caformer(official_head=official).train()
        model.head.drop.register_forward_hook(lambda m, i, o, k=official: seen.__setitem__(k, i[0].shape[-1]))
        model(torch.randn(2, 3, 64, 64))
    assert seen == {False: 96, True: 384}  # timm: on the pooled 96 channels; official: on the 4x hidden layer

    # the official computation, written out (dropout mask drawn from the same RNG state)
    torch.manual_seed(0)
    model = _tiny_caformer(official_head=True).train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.manual_seed(1)
        y = model.forward_head(feats)
        h = model.head.pre_logits(model.head.flatten(model.head.norm(model.head.global_pool(feats))))
        torch.manual_seed(1)
        ref = model.head.fc(torch.nn.functional.dropout(h, 0.5, training=True))
    torch.testing.assert_close(y, ref, rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(feats), model.head.fc(h), rtol=0, atol=0)  # eval: no dropout


def test_caformer_head_dropout_timm_placement_equals_timm_in_train_mode(fast_timm_init):
    """timm's weights keep timm's placement: in train mode (same RNG) the outputs equal timm's exactly."""
    torch.manual_seed(0)
    tm = timm_metaformer  # timm's caformer_s18 entrypoint fixes depths/dims: build its class the same way
    ref = tm.MetaFormer(depths=(1, 1, 1, 1), dims=(16, 32, 64, 96), num_classes=5, drop_rate=0.5,
                        token_mixers=[tm.SepConv, tm.SepConv, tm.Attention, tm.Attention],
                        norm_layers=[tm.LayerNorm2dNoBias] * 2 + [tm.LayerNormNoBias] * 2).train()
    ours = _tiny_caformer(official_head=True)
    ours.load_state_dict(ref.state_dict())  # timm's layout: the filter switches to timm's head computation
    assert not ours.official_head and not ours.head.drop_after_hidden
    ours.train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(3)
    y_ref = ref(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours(x), y_ref, rtol=0, atol=1e-5)
    official = _tiny_caformer()
    official.load_state_dict({"model": _to_official_metaformer(ref.state_dict())})
    assert official.official_head and official.head.drop_after_hidden  # an official file: the official place


# ---- parameter counts, features, contract ------------------------------------------------------

def test_param_counts_match_timm_for_every_variant(monkeypatch):
    # init values don't change counts; timm's trunc_normal_ on 'meta' is slow, so skip it
    monkeypatch.setattr(timm_metaformer, "trunc_normal_", lambda t, **kw: t)
    mismatched = {}
    for name in ALL_VARIANTS:
        n_ref = sum(p.numel() for p in timm.create_model(name, device="meta").parameters())
        ours = timm.create_model(f"vitzoo_{name}", device="meta")
        n_ours = sum(p.numel() for p in ours.parameters())
        assert all(p.is_meta for p in ours.parameters())
        if n_ref != n_ours:
            mismatched[name] = (n_ref, n_ours)
    assert not mismatched


def test_every_timm_variant_and_tag_is_registered():
    timm_names = timm.list_models(module="metaformer")
    assert sorted(timm_names) == sorted(ALL_VARIANTS)
    timm_tags = {t for t in timm.list_pretrained() if t.split(".")[0] in timm_names}
    zoo_tags = {t[len("vitzoo_"):] for t in timm.list_pretrained("vitzoo_*")
                if t.split(".")[0][len("vitzoo_"):] in timm_names}
    assert len(timm_tags) == 50 and zoo_tags == timm_tags
    for tag in timm_tags:
        cfg = timm.models.get_pretrained_cfg(f"vitzoo_{tag}")
        assert cfg.hf_hub_id == f"timm/{tag}"
        assert cfg.first_conv == "stem.conv" and cfg.classifier == "head.fc"
        assert cfg.num_classes == timm.models.get_pretrained_cfg(tag).num_classes


@pytest.mark.parametrize("name", ["caformer_s18", "poolformer_s12"])
def test_features_only(name):
    feat = timm.create_model(f"vitzoo_{name}", features_only=True, depths=(1, 1, 1, 1)).eval()
    assert feat.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = feat(torch.randn(1, 3, 64, 64))
    assert len(maps) == 4
    for m, c, r in zip(maps, feat.feature_info.channels(), feat.feature_info.reduction()):
        assert m.shape == (1, c, 64 // r, 64 // r)


def test_mlp_head_pre_logits_and_reset():
    m = timm.create_model("vitzoo_convformer_s18", num_classes=7, depths=(1, 1, 1, 1), dims=(32, 64, 96, 128))
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    assert m.head_hidden_size == 512 and m.num_features == 128
    feats = m.forward_features(x)
    assert m.forward_head(feats, pre_logits=True).shape == (1, 512)
    assert m.get_classifier() is m.head.fc and m.get_classifier().out_features == 7
    m.reset_classifier(0)
    assert m(x).shape == (1, 512)
    m.reset_classifier(3, "max")
    assert m(x).shape == (1, 3)
    with pytest.raises(ValueError, match="global_pool"):
        m.reset_classifier(3, "")


def test_bad_input_and_config_errors():
    m = timm.create_model("vitzoo_poolformer_s12")
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 3x3"):  # the 7x7/4 stem's minimum, as timm's
        m(torch.randn(1, 3, 2, 64))
    with pytest.raises(ValueError, match="token mixer"):
        timm.create_model("vitzoo_poolformer_s12", token_mixers="conv", device="meta")
    with pytest.raises(TypeError):
        timm.create_model("vitzoo_poolformer_s12", not_an_arg=1)


def test_grad_checkpointing_token_stage_backward():
    m = timm.create_model("vitzoo_caformer_s18", num_classes=3, depths=(1, 1, 2, 1), dims=(32, 64, 96, 128))
    m.set_grad_checkpointing(True)
    m(torch.randn(1, 3, 64, 64)).sum().backward()
    assert m.stages[3].blocks[0].token_mixer.qkv.weight.grad is not None


def test_pretrained_path_loads_timm_checkpoint_file(tmp_path, fast_timm_init):
    """timm's load_pretrained on a timm-layout file: our filter runs, then the classifier is dropped by name."""
    ref = _timm_reference("convformer_s18")
    path = tmp_path / "convformer_s18.pth"
    torch.save(ref.state_dict(), path)
    ours = timm.create_model("vitzoo_convformer_s18", pretrained=True, num_classes=10,
                             pretrained_cfg_overlay=dict(file=str(path), hf_hub_id=None)).eval()
    assert ours.get_classifier().out_features == 10
    torch.testing.assert_close(ours.head.pre_logits.fc1.weight, ref.head.fc.fc1.weight)
    torch.testing.assert_close(ours.stem.post_norm.weight, ref.stem.norm.weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=1e-4, rtol=0)
