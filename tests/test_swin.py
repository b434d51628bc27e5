"""Swin v1: timm-weight parity (224, other sizes, dynamic sizes, resized windows), official
checkpoint layout, parameter counts, features_only, grad checkpointing, input errors."""
import re

import pytest
import timm
import torch
from timm.models import swin_transformer as timm_swin

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.layers.patch_merging import PatchMerging
from vitzoo.layers.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from vitzoo.models.swin import SwinTransformer, checkpoint_filter_fn

TIMM_NAMES = [
    "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
    "swin_base_patch4_window12_384", "swin_large_patch4_window7_224", "swin_large_patch4_window12_384",
]
# zoo-only variants, compared against timm's SwinTransformer class built with the same arguments
EXTRA = {
    "vitzoo_swin_tiny_patch4_window12_384": dict(
        img_size=384, window_size=12, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "vitzoo_swin_small_patch4_window12_384": dict(
        img_size=384, window_size=12, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
}
# a small Swin for the tests that build many models or run odd sizes
SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
TOL = dict(atol=1e-4, rtol=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pair(timm_model: torch.nn.Module, zoo_model: torch.nn.Module) -> torch.nn.Module:
    """Load timm's random init into the zoo model through the filter (strict), both in eval."""
    zoo_model.load_state_dict(checkpoint_filter_fn(timm_model.state_dict(), zoo_model), strict=True)
    return zoo_model.eval()


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- layers ---------------------------------------------------------------------------------------
def test_patch_merging_official_channel_order_and_odd_sizes():
    pm = PatchMerging(4)
    x = torch.randn(2, 6, 10, 4)
    ref = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(pm(x), pm.reduction(pm.norm(ref)))
    tpm = timm_swin.PatchMerging(4)
    tpm.load_state_dict(pm.state_dict())
    odd = torch.randn(1, 7, 5, 4)
    assert pm(odd).shape == (1, 4, 3, 8)
    torch.testing.assert_close(pm(odd), tpm(odd))


def test_window_helpers_match_timm():
    x = torch.randn(2, 14, 21, 3)
    win = window_partition(x, (7, 7))
    assert win.shape == (2 * 2 * 3, 49, 3)
    torch.testing.assert_close(win, timm_swin.window_partition(x, (7, 7)).reshape(-1, 49, 3))
    torch.testing.assert_close(window_reverse(win, (7, 7), 14, 21), x)
    assert torch.equal(relative_position_index(5, 3), timm_swin.get_relative_position_index(5, 3))
    blk = timm_swin.SwinTransformerBlock(8, (14, 21), num_heads=2, window_size=7, shift_size=3)
    mask = shifted_window_mask(14, 21, (7, 7), (3, 3))
    assert mask.shape == (6, 49, 49)
    torch.testing.assert_close(mask, blk.attn_mask)


# ---- parity with timm -----------------------------------------------------------------------------
def test_tiny_224_parity_logits_features_intermediates():
    t = timm.create_model("swin_tiny_patch4_window7_224").eval()
    m = _pair(t, timm.create_model("vitzoo_swin_tiny_patch4_window7_224"))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        t_final, t_inter = t.forward_intermediates(x)
        z_final, z_inter = m.forward_intermediates(x)
        torch.testing.assert_close(z_final, t_final, **TOL)
        for a, b in zip(z_inter, t_inter, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(m(x), t.forward_head(t_final), **TOL)
    assert [f["num_chs"] for f in m.feature_info] == [f["num_chs"] for f in t.feature_info]
    assert [f["reduction"] for f in m.feature_info] == [f["reduction"] for f in t.feature_info]
    assert m.no_weight_decay() == {_rename_timm(k) for k in t.no_weight_decay()}
    assert m.pretrained_cfg["hf_hub_id"] == "timm/swin_tiny_patch4_window7_224.ms_in1k"


def _rename_timm(k: str) -> str:
    return re.sub(r"^layers\.", "stages.", k).replace(".attn.", ".token_mixer.")


def test_tiny_parity_at_192_pads_and_clamps_windows():
    # maps 48, 24, 12, 6 with window 7: padded to 49, 28, 14; the last stage's window clamps to 6
    t = timm.create_model("swin_tiny_patch4_window7_224", img_size=192).eval()
    m = _pair(t, timm.create_model("vitzoo_swin_tiny_patch4_window7_224", img_size=192))
    assert m.stages[3].blocks[1].token_mixer.window_size == (6, 6)
    assert m.stages[3].blocks[1].token_mixer.shift_size == (0, 0)
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        feats = m.forward_features(x)
        t_feats = t.forward_features(x)
        torch.testing.assert_close(feats, t_feats, **TOL)
        torch.testing.assert_close(m.forward_head(feats), t.forward_head(t_feats), **TOL)
        torch.testing.assert_close(
            m.forward_head(feats, pre_logits=True), t.forward_head(t_feats, pre_logits=True), **TOL)


def test_dynamic_img_size_parity_odd_maps():
    t = timm_swin.SwinTransformer(dynamic_img_size=True, num_classes=5, **SMALL).eval()
    m = _pair(t, SwinTransformer(dynamic_img_size=True, num_classes=5, **SMALL))
    with torch.no_grad():
        for hw in ((100, 132), (60, 36)):  # odd maps (25x33, 15x9) -> padding in windows and merges
            x = torch.randn(1, 3, *hw)
            torch.testing.assert_close(m(x), t(x), **TOL)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        m(torch.randn(1, 3, 102, 132))


def test_set_input_size_parity():
    t = timm_swin.SwinTransformer(img_size=112, **SMALL).eval()
    m = _pair(t, SwinTransformer(img_size=112, **SMALL))
    for kwargs in (dict(img_size=160), dict(img_size=128, window_ratio=4)):
        t.set_input_size(**kwargs)
        m.set_input_size(**kwargs)
        size = kwargs["img_size"]
        tw = [b.attn.window_size for s in t.layers for b in s.blocks]
        zw = [b.token_mixer.window_size for s in m.stages for b in s.blocks]
        assert zw == tw
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(m(x), t(x), **TOL)


def test_filter_interpolates_bias_tables_for_another_window():
    src = timm_swin.SwinTransformer(img_size=128, **SMALL)  # window 7 tables (13x13)
    t = timm_swin.SwinTransformer(img_size=128, **dict(SMALL, window_size=8)).eval()
    t.load_state_dict(timm_swin.checkpoint_filter_fn(src.state_dict(), t))
    m = SwinTransformer(img_size=128, **dict(SMALL, window_size=8))
    m.load_state_dict(checkpoint_filter_fn(src.state_dict(), m), strict=True)
    m.eval()
    assert m.stages[0].blocks[0].token_mixer.relative_position_bias_table.shape == (15 * 15, 1)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), **TOL)


def _to_official(timm_sd: dict, model: torch.nn.Module) -> dict:
    """Invert timm's mapping to rebuild the microsoft/Swin-Transformer layout (for the test only):
    the downsample of timm's stage i+1 goes to the end of stage i, `head.fc.*` -> `head.*`, and the
    persistent buffers the official model saves (`relative_position_index`, `attn_mask`) are added."""
    sd = {}
    for k, v in timm_sd.items():
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda g: f"layers.{int(g.group(1)) - 1}.downsample", k)
        sd[k.replace("head.fc.", "head.")] = v
    for name, mod in model.named_modules():
        if isinstance(mod, timm_swin.WindowAttention):
            sd[f"{name}.relative_position_index"] = mod.relative_position_index
        if isinstance(mod, timm_swin.SwinTransformerBlock) and mod.attn_mask is not None:
            sd[f"{name}.attn_mask"] = mod.attn_mask
    return {"model": sd}


def test_filter_loads_official_layout():
    t = timm_swin.SwinTransformer(img_size=64, num_classes=7, **SMALL).eval()
    official = _to_official(t.state_dict(), t)
    assert "layers.0.downsample.reduction.weight" in official["model"] and "head.weight" in official["model"]
    assert any(k.endswith("attn_mask") for k in official["model"])
    m = SwinTransformer(img_size=64, num_classes=7, **SMALL)
    m.load_state_dict(checkpoint_filter_fn(official, m), strict=True)
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), **TOL)


# ---- registry, counts, cfgs -----------------------------------------------------------------------
@pytest.mark.parametrize("name", TIMM_NAMES)
def test_param_count_and_cfgs_match_timm(name):
    t = timm.create_model(name, device="meta")
    m = timm.create_model(f"vitzoo_{name}", device="meta")
    assert _n_params(m) == _n_params(t)
    assert m.stem.img_size == t.patch_embed.img_size
    timm_tags = {n.split(".", 1)[1] for n in timm.list_pretrained(f"{name}.*")}
    zoo_tags = {n.split(".", 1)[1] for n in timm.list_pretrained(f"vitzoo_{name}.*")}
    assert zoo_tags == timm_tags and zoo_tags
    for tag in zoo_tags:
        zc = timm.models.get_pretrained_cfg(f"vitzoo_{name}.{tag}")
        tc = timm.models.get_pretrained_cfg(f"{name}.{tag}")
        assert zc.hf_hub_id == f"timm/{name}.{tag}"
        assert (zc.num_classes, zc.input_size, zc.crop_pct, zc.mean, zc.std) == \
               (tc.num_classes, tc.input_size, tc.crop_pct, tc.mean, tc.std)
        assert (zc.first_conv, zc.classifier) == ("stem.proj", "head.fc")


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_zoo_only_variants_param_count(name):
    m = timm.create_model(name, device="meta")
    t = timm_swin.SwinTransformer(device="meta", **EXTRA[name])
    assert _n_params(m) == _n_params(t)
    assert m.stem.img_size == (384, 384)
    assert m.stages[0].blocks[1].token_mixer.window_size == (12, 12)
    assert not timm.list_pretrained(f"{name}.*")


# ---- contract -------------------------------------------------------------------------------------
def test_features_only_returns_nhwc_maps_like_timm_and_nchw_with_getter():
    f = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, img_size=64).eval()
    g = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, img_size=64,
                          feature_cls="getter").eval()
    g.load_state_dict(f.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, nchw = f(x), g(x)
    assert len(maps) == 4
    assert f.feature_info.channels() == [96, 192, 384, 768]
    assert f.feature_info.reduction() == [4, 8, 16, 32]
    for fm, fc, c, r in zip(maps, nchw, f.feature_info.channels(), f.feature_info.reduction()):
        assert fm.shape == (1, 64 // r, 64 // r, c)
        assert torch.equal(fc, fm.permute(0, 3, 1, 2))


def _maps(out) -> list:
    return list(out.values()) if isinstance(out, dict) else out


@pytest.mark.parametrize("feature_cls", ["list", "dict", "hook"])
def test_timm_feature_classes_like_twin_and_any_size(feature_cls):
    """feature_cls 'list' / 'dict' / 'hook': timm's wrapper class, feature_info and NHWC maps on the twin's
    weights (its features_only state dict loads strictly), and sizes the twin refuses, as the default."""
    kw = dict(features_only=True, feature_cls=feature_cls, img_size=64, out_indices=(1, 3), **SMALL)
    twin = timm.create_model("swin_tiny_patch4_window7_224", **kw).eval()
    with torch.no_grad():  # perturb so every norm weight and bias matters
        for p in twin.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    z = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", **kw).eval()
    res = z.load_state_dict(twin.state_dict(), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    assert isinstance(z, type(twin)) and z.feature_info.get_dicts() == twin.feature_info.get_dicts()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, want = z(x), twin(x)
    assert type(got) is type(want) and [m.shape for m in _maps(got)] == [(1, 8, 8, 32), (1, 2, 2, 128)]
    for a, b in zip(_maps(got), _maps(want)):
        torch.testing.assert_close(a, b, **TOL)
    # an odd size (timm's twin refuses it): the dense rule, the same maps as the default wrapper
    default = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, img_size=64,
                                out_indices=(1, 3), **SMALL).eval()
    default.load_state_dict(twin.state_dict(), strict=True)
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        got, ref = _maps(z(x)), default(x)
    assert [m.shape for m in got] == [(1, 7, 9, 32), (1, 2, 3, 128)]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
    z.load_state_dict(z.state_dict(), strict=True)  # its own keys
    with pytest.raises(ValueError, match="at least 32x32, got 20x64"):
        z(torch.randn(1, 3, 20, 64))


def test_timm_feature_classes_refuse_feature_norms():
    with pytest.raises(ValueError, match="feature_norms=True .* default feature_cls"):
        timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, feature_cls="list",
                          feature_norms=True, device="meta", **SMALL)


def test_torchscript_picks_the_window_rule_per_input_like_eager():
    """A scripted Swin decides the rule per input as eager does (dense off img_size, built at it)."""
    with timm.set_scriptable(True):
        m = SwinTransformer(img_size=64, num_classes=3, **SMALL).eval()
    scripted = torch.jit.script(m)
    for hw in [(96, 128), (64, 64), (50, 70), (64, 64)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            assert torch.equal(scripted(x), m(x)), hw


def test_grad_checkpointing_backward_matches():
    m = SwinTransformer(img_size=64, num_classes=3, drop_path_rate=0.0, **SMALL).train()
    x = torch.randn(2, 3, 64, 64)
    m(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    assert all(s.grad_checkpointing for s in m.stages)
    m(x).square().sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def test_prune_intermediate_layers_like_timm():
    t = timm_swin.SwinTransformer(img_size=64, **SMALL).eval()
    m = _pair(t, SwinTransformer(img_size=64, **SMALL))
    assert m.prune_intermediate_layers([0, 1]) == t.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(m.stages) == 2 and isinstance(m.norm, torch.nn.Identity)
    assert m.num_features == t.num_features == 32
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), t(x), **TOL)  # unpooled [1, 8, 8, 32] maps, head reset to ''


def test_bad_inputs_raise_value_errors():
    m = SwinTransformer(img_size=64, **SMALL)
    with pytest.raises(ValueError, match="at least 32x32, got 31x64"):
        m(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        SwinTransformer(img_size=64, dynamic_img_size=True, **SMALL)(torch.randn(1, 3, 66, 64))
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="num_heads"):
        SwinTransformer(depths=(2, 2), num_heads=(1, 2, 4))
    with pytest.raises(ValueError, match="absolute_pos_embed"):
        checkpoint_filter_fn({"absolute_pos_embed": torch.zeros(1, 4, 16)}, m)
