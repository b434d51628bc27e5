"""SpectFormer (vanilla and hierarchical) against the official code's semantics and parameter counts.

timm lacks this family, so parity is checked three ways: exact official parameter counts; the
official key layout loads strictly through `checkpoint_filter_fn`; and a functional re-statement
of the official forward passes (written from badripatro/SpectFormers, run on that official-layout
state dict) gives our outputs.
"""
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.layers.spectral_gating import SpectralGating, resize_spectral_filter
from vitzoo.models.spectformer import SpectFormer, SpectFormerH, checkpoint_filter_fn

# Official parameter counts (ImageNet-1k head, 224 input).
# Vanilla: the `n_parameters` the official training logs record
# (vanilla_architecture/logs/spectformer-{t,xs,s,b}/log.txt); also 4 spectral blocks
# (2 LN + 14*8*C*2 filter + MLP) + attention blocks + patch embed + 196*C pos embed + norm + head.
# Hierarchical: from hierarchical_architecture/spectformer.py module by module - stem (3 bias-free
# convs + BN, 3x3/2 conv, LN), DownSamples (3x3/2 conv + LN), blocks (2 LN, 56x29 / 28x15 filters
# in stages 1-2, q + kv + proj in 3-4, PVT2FFN fc1 + 3x3 dwconv + fc2), norm1-4, ClassBlock, head and
# aux_head (token_label=True is the official default) - which round to the README's 22.2M/33.1M/54.7M.
OFFICIAL_PARAMS = {
    "vitzoo_spectformer_ti": 9_158_376,
    "vitzoo_spectformer_xs": 20_028_520,
    "vitzoo_spectformer_s": 32_449_768,
    "vitzoo_spectformer_b": 57_159_656,
    "vitzoo_spectformer_h_s": 22_226_928,
    "vitzoo_spectformer_h_b": 33_052_880,
    "vitzoo_spectformer_h_l": 54_675_792,
}

TINY_VANILLA = dict(img_size=64, embed_dim=32, depth=6, num_heads=2, num_spectral_layers=4, num_classes=7)
TINY_H = dict(img_size=64, stem_hidden_dim=8, embed_dims=(16, 24, 32, 48), depths=(2, 1, 2, 1),
              num_heads=(1, 2, 4, 6), mlp_ratios=(2, 2, 2, 2), num_classes=7)


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize(model):
    """Perturb every float tensor (norms and BN stats included) so a mis-mapped key shows up."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=g))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model.eval()


# ---- ours -> official layout (the inverse of checkpoint_filter_fn) ---------------------------------

def _to_official_vanilla(sd):
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^(blocks\.\d+)\.token_mixer\.filter\.", r"\1.filter.", k)
        k = re.sub(r"^(blocks\.\d+)\.token_mixer\.norm\.", r"\1.norm2.", k)
        k = re.sub(r"^(blocks\.\d+)\.token_mixer\.mlp\.", r"\1.mlp.", k)
        k = re.sub(r"^(blocks\.\d+)\.token_mixer\.", r"\1.attn.", k)
        out[re.sub(r"^head\.fc\.", "head.", k)] = v
    return out


def _to_official_h(sd, num_stages=4):
    out = {}
    for k, v in sd.items():
        m = re.match(r"^stages\.(\d+)\.(.*)$", k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if rest.startswith("downsample."):
                part, leaf = rest[len("downsample."):].split(".", 1)
                name = {"conv": f"patch_embed{i + 1}.proj", "post_norm": f"patch_embed{i + 1}.norm",
                        "pre_norm": f"norm{i}"}
                out[f"{name[part]}.{leaf}"] = v
                continue
            j, rest = re.match(r"^blocks\.(\d+)\.(.*)$", rest).groups()
            p = f"block{i + 1}.{j}."
            if rest.startswith("token_mixer.qkv."):
                leaf = rest.rsplit(".", 1)[1]
                c = v.shape[0] // 3
                out[p + "attn.q." + leaf], out[p + "attn.kv." + leaf] = v[:c], v[c:]
                continue
            rest = rest.replace("token_mixer.", "attn.").replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
            out[p + rest] = v
            continue
        for ours, official in (("stem.", "patch_embed1."), ("head.block.", "post_network.0."),
                               ("head.norm.", f"norm{num_stages}."), ("head.fc.", "head."),
                               ("head.aux_fc.", "aux_head.")):
            if k.startswith(ours):
                out[official + k[len(ours):]] = v
                break
        else:
            raise AssertionError(f"unmapped key {k}")
    return out


# ---- the official forward passes, restated functionally on an official-layout state dict ------------

def _ln(sd, p, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _lin(sd, p, x):
    return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])


def _global_filter(sd, p, x, h, w):
    B, N, C = x.shape
    x = torch.fft.rfft2(x.view(B, h, w, C).float(), dim=(1, 2), norm="ortho")
    x = x * torch.view_as_complex(sd[p + ".complex_weight"])
    return torch.fft.irfft2(x, s=(h, w), dim=(1, 2), norm="ortho").reshape(B, N, C)


def _mhsa(q, k, v, proj):
    attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    x = attn.softmax(-1) @ v
    return proj(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1))


def official_vanilla_forward(sd, x, depth, alpha, heads):
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    a, b = x.shape[-2:]  # the official code assumes a square grid (a = b = sqrt(N)); this also takes a x b
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]
    B, N, C = x.shape
    mlp = lambda p, t: _lin(sd, p + ".fc2", F.gelu(_lin(sd, p + ".fc1", t)))  # noqa: E731
    for i in range(depth):
        p = f"blocks.{i}"
        if i < alpha:  # x + MLP(LN(Filter(LN(x)))) - one residual
            y = _global_filter(sd, p + ".filter", _ln(sd, p + ".norm1", x, 1e-6), a, b)
            x = x + mlp(p + ".mlp", _ln(sd, p + ".norm2", y, 1e-6))
        else:
            qkv = _lin(sd, p + ".attn.qkv", _ln(sd, p + ".norm1", x, 1e-6))
            q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
            x = x + _mhsa(q, k, v, lambda t: _lin(sd, p + ".attn.proj", t))
            x = x + mlp(p + ".mlp", _ln(sd, p + ".norm2", x, 1e-6))
    return _lin(sd, "head", _ln(sd, "norm", x, 1e-6).mean(1))


def official_h_forward(sd, x, depths, heads):
    def bn(p, t):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-5)

    for j, (s, pad) in zip((0, 3, 6), ((2, 3), (1, 1), (1, 1))):
        x = F.relu(bn(f"patch_embed1.conv.{j + 1}", F.conv2d(x, sd[f"patch_embed1.conv.{j}.weight"], None, s, pad)))
    B = x.shape[0]
    for i in range(4):
        pe = f"patch_embed{i + 1}"
        x = F.conv2d(x, sd[pe + ".proj.weight"], sd[pe + ".proj.bias"], 2, 1)
        H, W = x.shape[-2:]
        x = _ln(sd, pe + ".norm", x.flatten(2).transpose(1, 2), 1e-5)
        N, C = x.shape[1:]
        for j in range(depths[i]):
            p = f"block{i + 1}.{j}"
            y = _ln(sd, p + ".norm1", x, 1e-6)
            if i < 2:
                y = _global_filter(sd, p + ".attn", y, H, W)
            else:
                nh = heads[i]
                q = _lin(sd, p + ".attn.q", y).reshape(B, N, nh, C // nh).permute(0, 2, 1, 3)
                k, v = _lin(sd, p + ".attn.kv", y).reshape(B, N, 2, nh, C // nh).permute(2, 0, 3, 1, 4)
                y = _mhsa(q, k, v, lambda t: _lin(sd, p + ".attn.proj", t))
            x = x + y
            y = _lin(sd, p + ".mlp.fc1", _ln(sd, p + ".norm2", x, 1e-6))
            hid = y.shape[-1]
            y = F.conv2d(y.transpose(1, 2).reshape(B, hid, H, W), sd[p + ".mlp.dwconv.dwconv.weight"],
                         sd[p + ".mlp.dwconv.dwconv.bias"], padding=1, groups=hid)
            x = x + _lin(sd, p + ".mlp.fc2", F.gelu(y.flatten(2).transpose(1, 2)))
        if i != 3:
            x = _ln(sd, f"norm{i + 1}", x, 1e-6).reshape(B, H, W, C).permute(0, 3, 1, 2)
    # forward_cls + ClassBlock, norm4, head + 0.5 * max(aux_head) (the official eval output)
    x = torch.cat([x.mean(1, keepdim=True), x], dim=1)
    p = "post_network.0"
    y = _ln(sd, p + ".norm1", x, 1e-6)
    nh = heads[-1]
    C = x.shape[-1]
    k, v = _lin(sd, p + ".attn.kv", y).reshape(B, -1, 2, nh, C // nh).permute(2, 0, 3, 1, 4)
    q = _lin(sd, p + ".attn.q", y[:, :1]).reshape(B, nh, 1, C // nh)
    cls = x[:, :1] + _mhsa(q, k, v, lambda t: _lin(sd, p + ".attn.proj", t))
    cls = cls + _lin(sd, p + ".mlp.fc2", F.gelu(_lin(sd, p + ".mlp.fc1", _ln(sd, p + ".norm2", cls, 1e-6))))
    x = _ln(sd, "norm4", torch.cat([cls, x[:, 1:]], dim=1), 1e-6)
    return _lin(sd, "head", x[:, 0]) + 0.5 * _lin(sd, "aux_head", x[:, 1:]).max(1)[0]


# ---- tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_matches_official(name):
    m = timm.create_model(name, device="meta")
    assert sum(p.numel() for p in m.parameters()) == OFFICIAL_PARAMS[name]


def test_variants_registered_and_head_counts_divide():
    assert sorted(vitzoo.list_models("spectformer*")) == sorted(OFFICIAL_PARAMS)
    for name, heads in (("ti", 4), ("xs", 6), ("s", 6), ("b", 8)):
        m = timm.create_model(f"vitzoo_spectformer_{name}", device="meta")
        assert m.blocks[-1].token_mixer.num_heads == heads
        assert m.blocks[-1].token_mixer.head_dim * heads == m.embed_dim
        assert sum(isinstance(getattr(b.token_mixer, "filter", None), SpectralGating) for b in m.blocks) == 4


@pytest.mark.parametrize("name", ["vitzoo_spectformer_ti", "vitzoo_spectformer_h_s"])
def test_train_forward_backward_small_input(name):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=5, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 64, 64)  # built for 224: the filters (and pos embed) are resized on the fly
    y = m(x)
    assert y.shape == (2, 5)
    F.cross_entropy(y, torch.tensor([0, 1])).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert any(p.grad.abs().sum() > 0 for n, p in m.named_parameters() if n.endswith("complex_weight"))


@pytest.mark.parametrize("cls,kw", [(SpectFormer, TINY_VANILLA), (SpectFormerH, TINY_H)])
def test_eval_forward_deterministic(cls, kw):
    torch.manual_seed(0)
    m = cls(**kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y1, y2 = m(x), m(x)
    assert y1.shape == (2, 7) and torch.isfinite(y1).all()
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (2, m.num_features)


def test_spectral_gating_matches_definition_and_checks_grid():
    torch.manual_seed(0)
    mixer = SpectralGating(8, (4, 6))
    assert mixer.complex_weight.shape == (4, 4, 8, 2)
    x = torch.randn(2, 4, 6, 8)
    ref = torch.fft.irfft2(torch.fft.rfft2(x, dim=(1, 2), norm="ortho") * torch.view_as_complex(mixer.complex_weight),
                           s=(4, 6), dim=(1, 2), norm="ortho")
    torch.testing.assert_close(mixer(x), ref)
    mixer.token_grid = (4, 6)
    torch.testing.assert_close(mixer(x.reshape(2, 24, 8)), ref.reshape(2, 24, 8))
    mixer.token_grid = None
    with pytest.raises(ValueError, match="not a square grid"):
        mixer(torch.randn(1, 24, 8))
    with pytest.raises(ValueError, match="8 channels"):
        mixer(torch.randn(1, 4, 6, 5))


def test_filter_resize_exact_at_original_size_and_official_rule():
    w = torch.randn(14, 8, 16, 2)
    assert resize_spectral_filter(w, (14, 8)) is w
    # the skip is no approximation: bicubic with align_corners=True is the identity at the same size
    same = F.interpolate(w.reshape(1, 14, 8, 32).permute(0, 3, 1, 2), size=(14, 8), mode="bicubic", align_corners=True)
    torch.testing.assert_close(same.permute(0, 2, 3, 1).reshape(14, 8, 16, 2), w, rtol=0, atol=1e-6)
    # official fine-tuning rule (main_spectformer.py): (h, w) -> (h', h' // 2 + 1), bicubic, align_corners=True
    r = resize_spectral_filter(w, (10, 6))
    ref = F.interpolate(w.reshape(1, 14, 8, 32).permute(0, 3, 1, 2), size=(10, 6), mode="bicubic",
                        align_corners=True).permute(0, 2, 3, 1).reshape(10, 6, 16, 2)
    torch.testing.assert_close(r, ref)
    assert torch.equal(r[0, 0], w[0, 0]) and torch.equal(r[-1, -1], w[-1, -1])  # corners kept


@pytest.mark.parametrize("cls,kw,size", [(SpectFormer, dict(TINY_VANILLA, img_size=224), 160),
                                         (SpectFormerH, dict(TINY_H, img_size=224), 160)])
def test_non_224_input_matches_model_built_for_that_size(cls, kw, size):
    """Running a 224 model at 160 == building for 160 and loading the 224 weights through the filter."""
    torch.manual_seed(0)
    m224 = _randomize(cls(**kw))
    m_small = cls(**dict(kw, img_size=size)).eval()
    m_small.load_state_dict(checkpoint_filter_fn(m224.state_dict(), m_small), strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        y = m224(x)
        torch.testing.assert_close(y, m_small(x), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(y).all()
    # non-square input too (each spectral mixer is told the token grid)
    with torch.no_grad():
        assert m224(torch.randn(1, 3, 96, 160)).shape == (1, 7)


@pytest.mark.parametrize("cls,kw", [(SpectFormer, TINY_VANILLA), (SpectFormerH, TINY_H)])
def test_bf16_forward_close_to_fp32(cls, kw):
    torch.manual_seed(0)
    m = cls(**kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y32 = m(x)
        y16 = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
    torch.testing.assert_close(y16.float(), y32, rtol=0.1, atol=0.1 * y32.abs().max().item())


@pytest.mark.parametrize("img_size", [64, (48, 80)])
def test_official_vanilla_layout_loads_and_matches_official_forward(img_size):
    torch.manual_seed(0)
    kw = dict(TINY_VANILLA, img_size=img_size)
    ours = _randomize(SpectFormer(**kw))
    official = _to_official_vanilla(ours.state_dict())
    assert "blocks.0.filter.complex_weight" in official and "blocks.5.attn.qkv.weight" in official
    assert "blocks.0.norm2.weight" in official and "head.weight" in official
    fresh = SpectFormer(**kw).eval()
    fresh.load_state_dict(checkpoint_filter_fn({"model": official}, fresh), strict=True)
    x = torch.randn(2, 3, *timm.layers.to_2tuple(img_size))
    with torch.no_grad():
        y = fresh(x)
        torch.testing.assert_close(y, ours(x), rtol=0, atol=0)
        ref = official_vanilla_forward(official, x, kw["depth"], 4, kw["num_heads"])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_official_h_layout_loads_and_matches_official_forward():
    torch.manual_seed(0)
    ours = _randomize(SpectFormerH(**TINY_H))
    official = _to_official_h(ours.state_dict())
    for k in ("patch_embed1.conv.0.weight", "patch_embed2.proj.weight", "norm1.weight", "norm4.weight",
              "block1.0.attn.complex_weight", "block3.0.attn.q.weight", "block3.0.attn.kv.weight",
              "block1.0.mlp.dwconv.dwconv.weight", "post_network.0.attn.kv.weight", "aux_head.weight"):
        assert k in official, k
    fresh = SpectFormerH(**TINY_H).eval()
    fresh.load_state_dict(checkpoint_filter_fn(official, fresh), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = fresh(x)
        torch.testing.assert_close(y, ours(x), rtol=0, atol=0)
        ref = official_h_forward(official, x, TINY_H["depths"], TINY_H["num_heads"])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)


def test_features_only_and_intermediates():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    f = timm.create_model("vitzoo_spectformer_h_s", features_only=True, **{k: v for k, v in TINY_H.items()
                                                                             if k != "num_classes"})
    assert [t.shape for t in f(x)] == [(1, 16, 16, 16), (1, 24, 8, 8), (1, 32, 4, 4), (1, 48, 2, 2)]
    assert f.feature_info.reduction() == [4, 8, 16, 32]
    v = timm.create_model("vitzoo_spectformer_ti", features_only=True, out_indices=(1, 5),
                          **{k: v for k, v in TINY_VANILLA.items() if k != "num_classes"})
    assert [t.shape for t in v(x)] == [(1, 32, 4, 4), (1, 32, 4, 4)]
    m = SpectFormer(**TINY_VANILLA).eval()
    final, inter = m.forward_intermediates(x, indices=2)
    assert len(inter) == 2 and inter[0].shape == (1, 32, 4, 4)
    torch.testing.assert_close(m.forward_head(final), m(x))
    h = SpectFormerH(**TINY_H).eval()
    final, inter = h.forward_intermediates(x)
    torch.testing.assert_close(h.forward_head(final), h(x))
    assert h.prune_intermediate_layers([0, 1]) == [0, 1] and len(h.stages) == 2
    assert h(x).shape == (1, 8, 8, 24)  # pruned head: unpooled NHWC map


def test_any_input_size_pads_like_timm_dynamic_img_pad():
    """Odd sizes: the vanilla model zero-pads to a multiple of 16 (ceil grid, = the padded image's
    output), SpectFormer-H's strided convs round up; features come back NCHW (timm has no twin)."""
    torch.manual_seed(0)
    v = SpectFormer(**TINY_VANILLA).eval()
    x = torch.randn(1, 3, 50, 67)
    padded = F.pad(x, (0, 80 - 67, 0, 64 - 50))
    with torch.no_grad():
        inter = v.forward_intermediates(x, indices=[1, 5], intermediates_only=True)
        assert [t.shape for t in inter] == [(1, 32, 4, 5), (1, 32, 4, 5)]
        torch.testing.assert_close(inter, v.forward_intermediates(padded, indices=[1, 5], intermediates_only=True),
                                   rtol=0, atol=0)
        assert v(x).shape == (1, 7)
    f = timm.create_model("vitzoo_spectformer_h_s", features_only=True, **{k: v for k, v in TINY_H.items()
                                                                             if k != "num_classes"}).eval()
    with torch.no_grad():
        assert [t.shape for t in f(x)] == [(1, 16, 13, 17), (1, 24, 7, 9), (1, 32, 4, 5), (1, 48, 2, 3)]


def test_classifier_api_and_bad_inputs():
    m = SpectFormerH(**TINY_H)
    m.reset_classifier(3)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3) and m.get_classifier().out_features == 3
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 48)
    v = SpectFormer(**TINY_VANILLA)
    assert v.no_weight_decay() == {"pos_embed"}
    with pytest.raises(ValueError, match="3 input channels"):
        v(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="no class token"):
        SpectFormer(**dict(TINY_VANILLA, global_pool="token"))
    with pytest.raises(ValueError, match="global_pool"):
        SpectFormerH(**dict(TINY_H, global_pool="avg"))
    with pytest.raises(ValueError, match="num_spectral_layers"):
        SpectFormer(**dict(TINY_VANILLA, num_spectral_layers=7))


def test_group_matcher_covers_every_parameter():
    from timm.models import group_parameters
    for m in (SpectFormer(**TINY_VANILLA), SpectFormerH(**TINY_H)):
        groups = group_parameters(m, m.group_matcher())
        assert sum(len(v) for v in groups.values()) == len(list(m.parameters()))


def test_pretrained_needs_a_file_and_loads_official_checkpoint_file(tmp_path):
    with pytest.raises(ValueError, match="publishes no checkpoint"):
        timm.create_model("vitzoo_spectformer_xs", pretrained=True)
    kw = dict(TINY_VANILLA, num_classes=1000)
    torch.manual_seed(0)
    ours = _randomize(SpectFormer(**kw))
    path = tmp_path / "official.pth"
    torch.save({"model": _to_official_vanilla(ours.state_dict()), "epoch": 3}, path)
    m = timm.create_model("vitzoo_spectformer_ti", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x), ours(x), rtol=0, atol=0)
