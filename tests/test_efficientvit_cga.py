"""EfficientViT (MSRA) M0..M5: timm parity, official layout, fuse, attention-bias cache, input sizes."""
import copy
import re

import pytest
import timm
import torch
import torch.nn as nn
from zoo_cases import max_diff, randomize_
from zoo_cases import timm_and_ours as _timm_and_ours

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.layers.attention_bias import AttentionBiasTable
from vitzoo.layers.conv_bn import BNLinear, ConvBN, fuse_bn_linear, fuse_conv_bn
from vitzoo.models.efficientvit_cga import adapt_tensor, checkpoint_filter_fn

VARIANTS = [f"efficientvit_m{i}" for i in range(6)]
TOL = 1e-4


def timm_and_ours(variant: str, **kwargs):
    return _timm_and_ours(variant, checkpoint_filter_fn, **kwargs)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def m0_pair():
    torch.manual_seed(0)
    return timm_and_ours("efficientvit_m0")


# ---- parity -------------------------------------------------------------------------------
def test_param_counts_match_timm_every_variant():
    for v in VARIANTS:
        ref = timm.create_model(v, device="meta")
        ours = timm.create_model(f"vitzoo_{v}", device="meta")
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()), v
        assert all(p.device.type == "meta" for p in ours.parameters())


def test_parity_m0_logits_features_intermediates(m0_pair):
    ref, ours = m0_pair
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feat_ref, inter_ref = ref.forward_intermediates(x)
        feat, inter = ours.forward_intermediates(x)
        assert max_diff(feat, ref.forward_features(x)) <= TOL  # forward_features == intermediates' final
        assert max_diff(feat, feat_ref) <= TOL
        assert len(inter) == 3 and all(max_diff(a, b) <= TOL for a, b in zip(inter, inter_ref))
        assert max_diff(ours.forward_head(feat), ref.forward_head(feat_ref)) <= TOL
        assert max_diff(ours.forward_head(feat, pre_logits=True), ref.forward_head(feat_ref, pre_logits=True)) <= TOL
        x = torch.randn(1, 3, 160, 96)  # not the nominal size: padded windows
        assert max_diff(ours(x), ref(x)) <= TOL


def test_parity_m4():
    ref, ours = timm_and_ours("efficientvit_m4")
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert max_diff(ours(x), ref(x)) <= TOL


def test_parity_small_img_size_and_bias_resize_in_filter():
    """Built at img_size=96 (smaller windows): timm's 224 weights load with re-sampled biases, like timm's filter."""
    from timm.models.efficientvit_msra import checkpoint_filter_fn as timm_filter
    src = randomize_(timm.create_model("efficientvit_m0")).state_dict()
    ref = timm.create_model("efficientvit_m0", img_size=96).eval()
    ref.load_state_dict(timm_filter(src, ref))
    ours = timm.create_model("vitzoo_efficientvit_m0", img_size=96).eval()
    ours.load_state_dict(checkpoint_filter_fn(src, ours))
    assert ours.stages[0].blocks[0].attn.token_mixer.cga.resolution == 6
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert max_diff(ours(x), ref(x)) <= TOL


# ---- official layout ----------------------------------------------------------------------
def timm_to_official(sd: dict, model: nn.Module) -> dict:
    """The microsoft/Cream EfficientViT checkpoint layout, built from a timm state dict.

    Official names: `patch_embed.{0,2,4,6}` (Sequential with ReLUs), `blocks1..3` with each later
    stage's downsample as its first three entries (`0`: DW+FFN residuals, `1`: PatchMerging,
    `2`: DW+FFN residuals), Conv2d_BN children `c`/`bn`, head BN_Linear `bn`/`l`, persistent
    `attention_bias_idxs` buffers, all under a 'model' key. Some 1x1 conv weights are stored
    Linear-shaped [out, in] (the official loader adds the [..., None, None]): we store the
    FFN and SE ones that way.
    """
    buffers = dict(model.named_buffers())
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^patch_embed\.conv(\d)\.", lambda m: f"patch_embed.{2 * (int(m[1]) - 1)}.", k)
        k = re.sub(r"^stages\.0\.blocks\.(\d+)\.", r"blocks1.\1.", k)
        k = re.sub(r"^stages\.(\d)\.downsample\.(res1|patchmerge|res2)\.",
                   lambda m: f"blocks{int(m[1]) + 1}.{['res1', 'patchmerge', 'res2'].index(m[2])}.", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"blocks{int(m[1]) + 1}.{int(m[2]) + 3}.", k)
        k = k.replace(".conv.", ".c.").replace("head.linear.", "head.l.")
        if re.search(r"(pw\d\.c|se\.fc\d)\.weight$", k):
            v = v[:, :, 0, 0]
        out[k] = v
    for k, v in buffers.items():
        if k.endswith("attention_bias_idxs"):
            out[re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"blocks{int(m[1]) + 1}."
                       f"{int(m[2]) + (3 if m[1] != '0' else 0)}.", k)] = v
    return {"model": out}


def test_official_layout_loads(m0_pair):
    ref, ours = m0_pair
    official = timm_to_official(ref.state_dict(), ref)
    assert "blocks2.1.se.fc1.weight" in official["model"] and official["model"]["blocks2.1.se.fc1.weight"].ndim == 2
    assert "blocks1.0.mixer.m.attn.attention_bias_idxs" in official["model"]
    fresh = timm.create_model("vitzoo_efficientvit_m0").eval()
    fresh.load_state_dict(checkpoint_filter_fn(official, fresh), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_diff(fresh(x), ref(x)) <= TOL


def test_adapt_tensor_reshapes_both_ways_and_leaves_other_mismatches():
    w = torch.randn(8, 4)
    assert adapt_tensor("a.weight", w, torch.empty(8, 4, 1, 1)).shape == (8, 4, 1, 1)
    assert adapt_tensor("a.weight", w[:, :, None, None], torch.empty(8, 4)).shape == (8, 4)
    assert adapt_tensor("a.weight", w, torch.empty(8, 5)) is w  # load_state_dict will name it
    assert adapt_tensor("x.attention_biases", torch.randn(2, 49), torch.empty(2, 16)).shape == (2, 16)


# ---- fuse ---------------------------------------------------------------------------------
def test_conv_bn_and_bn_linear_fuse():
    torch.manual_seed(0)
    cb = randomize_(ConvBN(4, 6, 3, 2, 1)).eval()
    x = torch.randn(2, 4, 9, 9)
    assert max_diff(cb.fuse()(x), cb(x)) <= 1e-5
    assert isinstance(fuse_conv_bn(cb.conv, cb.bn), nn.Conv2d)
    bl = randomize_(BNLinear(6, 3)).eval()
    x = torch.randn(5, 6)
    assert max_diff(bl.fuse()(x), bl(x)) <= 1e-5
    assert isinstance(fuse_bn_linear(bl.norm, bl.fc), nn.Linear)


def test_model_fuse_keeps_outputs(m0_pair):
    _, ours = m0_pair
    fused = copy.deepcopy(ours)
    assert fused.fuse() is fused
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, ConvBN)) for m in fused.modules())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_diff(fused(x), ours(x)) <= TOL
    assert isinstance(fused.get_classifier(), nn.Linear)


# ---- attention-bias cache -----------------------------------------------------------------
def _first_table(model) -> AttentionBiasTable:
    return next(m for m in model.modules() if isinstance(m, AttentionBiasTable))


def _uncached(model, x):
    with torch.enable_grad():  # autograd on: the table never caches
        return model(x).detach()


@pytest.fixture()
def small_m0():
    torch.manual_seed(0)
    return randomize_(timm.create_model("vitzoo_efficientvit_m0", img_size=64)).eval()


def test_cache_used_in_eval_and_refreshed_after_inplace_update(small_m0):
    m, x = small_m0, torch.randn(1, 3, 64, 64)
    table = _first_table(m)
    with torch.no_grad():
        before = m(x)
        assert table._cache is not None
        cached = table._cache[1]
        assert table() is cached  # reused while nothing changed
        for t in m.modules():  # like an EMA update: in place, eval mode, no grad
            if isinstance(t, AttentionBiasTable):
                t.attention_biases.add_(3 * torch.randn_like(t.attention_biases))
        assert table() is not cached
        assert torch.equal(table(), table.attention_biases[:, table.attention_bias_idxs])
        after = m(x)
    # a stale cache would give `before` exactly; random-weight models react only mildly to the biases
    assert max_diff(after, before) > 1e-5
    assert max_diff(after, _uncached(m, x)) <= 1e-6


def test_cache_refreshed_by_load_state_dict_and_model_ema(small_m0):
    m, x = small_m0, torch.randn(1, 3, 64, 64)
    other = randomize_(copy.deepcopy(m), seed=3).eval()
    with torch.no_grad():
        m(x)
        m.load_state_dict(other.state_dict())
        assert max_diff(m(x), other(x)) <= 1e-6
    ema = timm.utils.ModelEmaV3(m, decay=0.5)
    with torch.no_grad():
        ema.module(x)  # fills the EMA model's caches (it is in eval mode)
        src = randomize_(copy.deepcopy(m), seed=5)
        ema.update(src)
        assert max_diff(ema.module(x), _uncached(ema.module, x)) <= 1e-6


def test_cache_cleared_by_train_eval_dtype_and_not_used_with_grad(small_m0):
    m, x = small_m0, torch.randn(1, 3, 64, 64)
    table = _first_table(m)
    with torch.no_grad():
        m(x)
    assert table._cache is not None
    m.train()
    assert table._cache is None
    m.eval()
    with torch.no_grad():
        m(x)
    m.to(torch.float64)
    assert table._cache is None
    with torch.no_grad():
        y = m(x.double())
    assert y.dtype == torch.float64 and table._cache[1].dtype == torch.float64
    m.to(torch.float32)
    m.zero_grad()
    m(x).sum().backward()  # eval with autograd: gradients reach the biases, nothing cached
    assert table.attention_biases.grad is not None and table.attention_biases.grad.abs().sum() > 0


def test_table_cache_keys_storage_identity_and_device():
    table = AttentionBiasTable(2, 3).eval()
    with torch.no_grad():
        table.attention_biases.normal_()
        first = table()
        assert table() is first
        table.attention_biases.data = table.attention_biases.data + 1  # new storage, same Parameter
        assert torch.equal(table(), first + 1)
        table.attention_biases = nn.Parameter(torch.zeros(2, 9))  # a new Parameter object
        assert torch.equal(table(), torch.zeros(2, 9, 9))
        table.to("meta")  # device change goes through _apply: cache dropped, meta never cached
        assert table._cache is None and table().device.type == "meta" and table._cache is None


def test_deepcopy_does_not_share_cache(small_m0):
    m, x = small_m0, torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = m(x)
        c = copy.deepcopy(m)
        for t in c.modules():
            if isinstance(t, AttentionBiasTable):
                t.attention_biases.add_(3 * torch.randn_like(t.attention_biases))
        table_c, table_m = _first_table(c), _first_table(m)
        assert torch.equal(table_c(), table_c.attention_biases[:, table_c.attention_bias_idxs])
        assert not torch.equal(table_c(), table_m())
        assert max_diff(c(x), _uncached(c, x)) <= 1e-6 and max_diff(c(x), y) > 1e-5
        assert torch.equal(m(x), y)


def test_set_input_size_matches_timm_and_refreshes_cache():
    ref, ours = timm_and_ours("efficientvit_m0")
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ours(x)  # fill caches at the 224 windows
        ref.set_input_size(img_size=128)
        ours.set_input_size(128)
        assert _first_table(ours).resolution == 7
        assert ours.stages[2].blocks[0].attn.token_mixer.cga.resolution == 2
        assert max_diff(ours(x), ref(x)) <= TOL


# ---- contract -----------------------------------------------------------------------------
def test_features_only_via_timm():
    f = timm.create_model("vitzoo_efficientvit_m0", features_only=True).eval()
    assert f.feature_info.channels() == [64, 128, 192] and f.feature_info.reduction() == [16, 32, 64]
    with torch.no_grad():
        outs = f(torch.randn(1, 3, 224, 224))
    assert [o.shape[1:] for o in outs] == [(64, 14, 14), (128, 7, 7), (192, 4, 4)]
    f = timm.create_model("vitzoo_efficientvit_m0", features_only=True, out_indices=(2,))
    assert f.feature_info.channels() == [192]


def test_input_size_errors_and_head_contract():
    m = timm.create_model("vitzoo_efficientvit_m0").eval()
    with pytest.raises(ValueError, match="at least 16x16"):
        m(torch.randn(1, 3, 8, 64))
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="img_size must be at least 16"):
        timm.create_model("vitzoo_efficientvit_m0", img_size=8)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 16, 16)).shape == (1, 1000)
        m.reset_classifier(10, "catavgmax")
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10) and m.head_hidden_size == 384
        m.reset_classifier(0, "")
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 192, 1, 1)
    with pytest.raises(ValueError, match="pooled features"):
        m.reset_classifier(5, "")
    assert all("attention_biases" in n for n in m.no_weight_decay()) and len(m.no_weight_decay()) == 6


def test_train_step_with_grad_checkpointing_and_drop_path():
    m = timm.create_model("vitzoo_efficientvit_m0", num_classes=4, drop_path_rate=0.1, img_size=64)
    m.set_grad_checkpointing(True)
    m.train()
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_pretrained_path_through_timm_loader(m0_pair, tmp_path):
    """timm's own `pretrained=True` machinery (file overlay instead of the hub) runs our filter."""
    ref, _ = m0_pair
    path = tmp_path / "efficientvit_m0.pth"
    torch.save(ref.state_dict(), path)
    cfg = timm.models.get_pretrained_cfg("vitzoo_efficientvit_m0.r224_in1k")
    assert cfg.hf_hub_id == "timm/efficientvit_m0.r224_in1k"
    m = timm.create_model("vitzoo_efficientvit_m0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert max_diff(m(x), ref(x)) <= TOL
    m10 = timm.create_model("vitzoo_efficientvit_m0", pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(path)))
    assert m10.get_classifier().out_features == 10
    assert torch.equal(m10.head.norm.running_mean, ref.head.bn.running_mean)  # only the Linear is new
