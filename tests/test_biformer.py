"""BiFormer: the mixers against the official algorithm, the official variants, the official checkpoint layout."""
import os
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.kernels import fvcore_handles
from vitzoo.layers.routing_attention import AttentionLePE, BiLevelRoutingAttention, route_regions
from vitzoo.models import biformer as bf
from vitzoo.models.biformer import BiFormer

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = ["vitzoo_biformer_tiny", "vitzoo_biformer_small", "vitzoo_biformer_base", "vitzoo_biformer_stl"]


# ---- the official algorithm, written out (rayleizhu/BiFormer ops/bra_legacy.py, auto_pad=True) -------------
def official_bra(mod: BiLevelRoutingAttention, x: torch.Tensor) -> torch.Tensor:
    """Pad -> qkv -> region means -> detached top-k routing -> gather routed k/v -> per-head attention
    -> + lepe(v) -> wo -> crop, region by region with explicit slicing (no shared code with the mixer)."""
    n = mod.n_win
    B, H0, W0, C = x.shape
    x = F.pad(x, (0, 0, 0, (n - W0 % n) % n, 0, (n - H0 % n) % n))
    _, H, W, _ = x.shape
    h, w = H // n, W // n
    qkv = x @ mod.qkv.weight.t() + mod.qkv.bias
    q, k, v = qkv[..., :mod.qk_dim], qkv[..., mod.qk_dim:2 * mod.qk_dim], qkv[..., 2 * mod.qk_dim:]

    def region(t, b, r):  # tokens of region r (row-major regions, row-major tokens): [h*w, c]
        j, i = divmod(r, n)
        return t[b, j * h:(j + 1) * h, i * w:(i + 1) * w].reshape(h * w, -1)

    out = torch.zeros(B, H, W, C, dtype=x.dtype)
    heads = mod.num_heads
    for b in range(B):
        q_win = torch.stack([region(q, b, r).mean(0) for r in range(n * n)]).detach()
        k_win = torch.stack([region(k, b, r).mean(0) for r in range(n * n)]).detach()
        routed = torch.topk((q_win * mod.scale) @ k_win.t(), mod.topk, dim=-1).indices
        for r in range(n * n):
            ks = torch.cat([region(k, b, int(t)) for t in routed[r]])      # gather: [topk*h*w, qk_dim]
            vs = torch.cat([region(v, b, int(t)) for t in routed[r]])
            qs = region(q, b, r)
            o = torch.cat([
                torch.softmax((qs.chunk(heads, -1)[m] * mod.scale) @ ks.chunk(heads, -1)[m].t(), -1)
                @ vs.chunk(heads, -1)[m] for m in range(heads)], dim=-1)
            j, i = divmod(r, n)
            out[b, j * h:(j + 1) * h, i * w:(i + 1) * w] = o.reshape(h, w, C)
    lepe = F.conv2d(v.permute(0, 3, 1, 2), mod.lepe.weight, mod.lepe.bias, padding=mod.lepe.padding, groups=C)
    out = out + lepe.permute(0, 2, 3, 1)
    out = out @ mod.wo.weight.t() + mod.wo.bias
    return out[:, :H0, :W0]


def official_attention_lepe(mod: AttentionLePE, x: torch.Tensor) -> torch.Tensor:
    """models/_common.py AttentionLePE: softmax(q k^T * head_dim^-0.5) v + lepe(x), then proj."""
    B, H, W, C = x.shape
    t = x.reshape(B, H * W, C)
    q, k, v = (t @ mod.qkv.weight.t()).reshape(B, H * W, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4)
    attn = torch.softmax((q @ k.transpose(-1, -2)) * (C // mod.num_heads) ** -0.5, -1)
    out = (attn @ v).transpose(1, 2).reshape(B, H * W, C)
    lepe = F.conv2d(x.permute(0, 3, 1, 2), mod.lepe.weight, mod.lepe.bias, padding=2, groups=C)
    out = out + lepe.flatten(2).transpose(1, 2)
    return (out @ mod.proj.weight.t() + mod.proj.bias).reshape(B, H, W, C)


# ---- the mixers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,dim,heads,n_win,topk", [
    ((14, 14), 32, 2, 7, 4),   # 4 tokens per region
    ((28, 28), 32, 1, 7, 2),   # 16 tokens per region
    ((10, 12), 16, 2, 7, 3),   # padded to 14x14 (official auto_pad)
    ((5, 3), 16, 2, 7, 16),    # smaller than n_win: padded to 7x7, one token per region
    ((12, 8), 24, 3, 4, 16),   # every region routed
])
def test_routing_mixer_matches_official_algorithm_fp64(hw, dim, heads, n_win, topk):
    torch.manual_seed(0)
    mod = BiLevelRoutingAttention(dim, heads, n_win, topk).double()
    with torch.no_grad():
        mod.qkv.bias.normal_()  # padded tokens carry the bias: make it matter
        mod.lepe.weight.normal_(std=0.2)
    x = torch.randn(2, *hw, dim, dtype=torch.float64, requires_grad=True)
    out = mod(x)
    ref = official_bra(mod, x)
    assert out.shape == x.shape
    assert (out - ref).abs().max().item() <= 1e-6
    g = torch.randn_like(out)
    params = [x, mod.qkv.weight, mod.qkv.bias, mod.lepe.weight, mod.wo.weight]
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        assert (a - b).abs().max().item() <= 1e-6


def test_routing_uses_the_full_qk_dim_scale():
    mod = BiLevelRoutingAttention(64, 2, 7, 4)
    assert mod.scale == 64 ** -0.5 and mod.qkv.out_features == 3 * 64
    mod = BiLevelRoutingAttention(64, 4, 7, 4, qk_dim=32)
    assert mod.scale == 32 ** -0.5 and mod.qkv.out_features == 2 * 32 + 64
    x = torch.randn(1, 14, 14, 64, requires_grad=True)
    q, k, _ = mod.qkv(x).split([32, 32, 64], -1)
    r_idx = route_regions(q, k, 7, 4, mod.scale)
    assert r_idx.dtype == torch.int64 and r_idx.shape == (1, 49, 4) and not r_idx.requires_grad
    assert all(len(set(row)) == 4 for row in r_idx[0].tolist())  # distinct regions per query region


def test_attention_lepe_matches_official():
    torch.manual_seed(0)
    mod = AttentionLePE(32, 8).double()
    assert mod.qkv.bias is None and mod.scale == 4 ** -0.5
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64)
    assert (mod(x) - official_attention_lepe(mod, x)).abs().max().item() <= 1e-10


def test_mixer_bad_arguments_are_named():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        BiLevelRoutingAttention(30, 4)
    with pytest.raises(ValueError, match=r"topk must be in 1..n_win\*\*2 = 49"):
        BiLevelRoutingAttention(32, 2, 7, 50)
    with pytest.raises(ValueError, match="side_dwconv"):
        BiLevelRoutingAttention(32, 2, side_dwconv=4)
    with pytest.raises(ValueError, match=r"NHWC map \[B, H, W, 32\]"):
        BiLevelRoutingAttention(32, 2)(torch.randn(1, 32, 14, 14))
    with pytest.raises(ValueError, match="topks entries"):
        BiFormer(topks=(1, 4, 0, -2))


# ---- official variants -----------------------------------------------------------------------------
# The official code's counts (models/biformer.py, biformer_stl.py), derived by hand and in the README
# (13.1 / 25.5 / 56.8 / 28.4 M).
OFFICIAL_PARAM_COUNTS = {
    "vitzoo_biformer_tiny": 13_142_760,
    "vitzoo_biformer_small": 25_536_232,
    "vitzoo_biformer_base": 56_804_968,
    "vitzoo_biformer_stl": 28_372_552,
}
# official README FLOPs (fvcore MACs at 224), two decimals as in the issue
OFFICIAL_GMACS = {
    "vitzoo_biformer_tiny": 2.23, "vitzoo_biformer_small": 4.49,
    "vitzoo_biformer_base": 9.80, "vitzoo_biformer_stl": 4.59,
}


def test_every_variant_is_registered_with_the_official_url():
    """rayleizhu/BiFormer@1697bbb's OneDrive links, cached under the official code's file names."""
    assert set(vitzoo.list_models("*biformer*")) == set(VARIANTS)
    tokens = {"tiny": "HEOoGkgwgQzEDlM", "small": "HDyM-x9KWRBZ832", "base": "HI_XPhoadjaNxtO",
              "stl": "Sf-m7ujkvx9lIQ1"}
    for short, token in tokens.items():
        cfg = timm.models.get_pretrained_cfg(f"vitzoo_biformer_{short}")
        url = f"https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvCh{token}/root/content"
        assert cfg.url == (url, f"biformer_{short}_in1k.pth") and cfg.hf_hub_id is None, short
        assert cfg.custom_load


@pytest.mark.parametrize("name", VARIANTS)
def test_param_count_matches_official(name):
    m = timm.create_model(name, device="meta")
    assert sum(p.numel() for p in m.parameters()) == OFFICIAL_PARAM_COUNTS[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_fvcore_gmacs_match_official(name):
    """fvcore at 224 with the routed op's handle (and SDPA's for the last stage): within 2% of the README."""
    from fvcore.nn import FlopCountAnalysis
    m = timm.create_model(name).eval()
    analysis = FlopCountAnalysis(m, torch.randn(1, 3, 224, 224)).set_op_handle(**fvcore_handles())
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        gmacs = analysis.total() / 1e9
    ops = analysis.by_operator()
    assert ops["routed_attention"] > 0 and ops["scaled_dot_product_attention"] > 0
    assert abs(gmacs - OFFICIAL_GMACS[name]) / OFFICIAL_GMACS[name] <= 0.02, gmacs


def test_stage_layout_of_the_official_variants():
    m = timm.create_model("vitzoo_biformer_tiny", device="meta")
    mixers = [s.blocks[0].token_mixer for s in m.stages]
    assert [type(x).__name__ for x in mixers] == ["BiLevelRoutingAttention"] * 3 + ["AttentionLePE"]
    assert [(x.num_heads, x.topk, x.n_win) for x in mixers[:3]] == [(2, 1, 7), (4, 4, 7), (8, 16, 7)]
    assert [x.scale for x in mixers[:3]] == [64 ** -0.5, 128 ** -0.5, 256 ** -0.5]
    assert mixers[3].num_heads == 8 and mixers[3].qkv.bias is None and mixers[3].lepe.kernel_size == (5, 5)
    blk = m.stages[0].blocks[0]
    assert blk.norm1.eps == 1e-6 and blk.mlp.fc1.out_features == 192 and blk.pos_embed.kernel_size == (3, 3)
    assert isinstance(m.norm, torch.nn.BatchNorm2d) and isinstance(m.stem[0].post_norm, torch.nn.BatchNorm2d)
    m = timm.create_model("vitzoo_biformer_stl", device="meta")
    assert [s.blocks[0].token_mixer.num_heads for s in m.stages] == [3, 6, 12, 8]
    blk = m.stages[1].blocks[0]
    assert not blk.has_pos_embed and blk.mlp.fc1.out_features == 4 * 192
    assert m.stem.conv.kernel_size == (4, 4) and isinstance(m.stages[1].downsample.pre_norm, torch.nn.BatchNorm2d)


# ---- forward / sizes / contract -------------------------------------------------------------------
def _tiny(**kwargs):
    args = dict(num_classes=7, embed_dims=(32, 64, 96, 128), depths=(1, 1, 2, 1), head_dim=16, n_win=4,
                topks=(2, 4, 8, -2), side_dwconv=3)
    return BiFormer(**dict(args, **kwargs))


def test_tiny_forward_backward_and_intermediates_on_padded_sizes():
    """96x160: stage maps 24x40, 12x20, 6x10 are padded to multiples of n_win=7 inside every mixer."""
    torch.manual_seed(0)
    m = timm.create_model("vitzoo_biformer_tiny", num_classes=10).train()
    x = torch.randn(2, 3, 96, 160)
    y = m(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]
    m.eval()
    with torch.no_grad():
        final, inter = m.forward_intermediates(x[:1])
        logits = m(x[:1])
    assert [t.shape for t in inter] == [(1, 64, 24, 40), (1, 128, 12, 20), (1, 256, 6, 10), (1, 512, 3, 5)]
    torch.testing.assert_close(m.forward_head(final), logits)


def test_image_sizes_the_model_refuses_are_named():
    m = _tiny()
    with pytest.raises(ValueError, match=r"at least 32x32, got 100x31"):  # any size from 32 px (issue 17)
        m(torch.randn(1, 3, 100, 31))
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 1, 64, 64))


def test_features_only_and_stl_small_input():
    f = timm.create_model("vitzoo_biformer_stl", features_only=True, out_indices=(1, 3)).eval()
    assert f.feature_info.channels() == [192, 768] and f.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        outs = f(torch.randn(1, 3, 64, 64))
    assert [o.shape for o in outs] == [(1, 192, 8, 8), (1, 768, 2, 2)]


# ---- official checkpoint layout ---------------------------------------------------------------------
# The official-layout state dicts are built by inverting our key mapping (`_to_official`); that
# inversion is checked against the official key set with shapes, enumerated from the official module
# tree (`_official_keys`), so the filter is tested on the official names.
def _to_official(k: str, stl: bool) -> str:
    m = re.match(r"^stem\.(?:(\d)\.)?(conv|post_norm)\.(.+)$", k)
    if m:
        idx = {"conv": 0, "post_norm": 1}[m.group(2)] + (3 if m.group(1) == "2" else 0)
        return f"downsample_layers.0.{idx}.{m.group(3)}"
    m = re.match(r"^stages\.(\d+)\.downsample\.(pre_norm|conv|post_norm)\.(.+)$", k)
    if m:
        idx = {"pre_norm": 0, "conv": 1}[m.group(2)] if stl else {"conv": 0, "post_norm": 1}[m.group(2)]
        return f"downsample_layers.{m.group(1)}.{idx}.{m.group(3)}"
    m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", k)
    if m:
        rest = m.group(3)
        rest = re.sub(r"^token_mixer\.qkv\.", "attn.qkv.qkv." if m.group(1) != "3" else "attn.qkv.", rest)
        rest = re.sub(r"^token_mixer\.", "attn.", rest)
        rest = re.sub(r"^mlp\.fc1\.", "mlp.0.", rest)
        rest = re.sub(r"^mlp\.fc2\.", "mlp.2." if stl else "mlp.3.", rest)
        rest = re.sub(r"^layer_scale([12])\.scale$", r"gamma\1", rest)
        return f"stages.{m.group(1)}.{'blocks.' if stl else ''}{m.group(2)}.{rest}"
    return re.sub(r"^head\.fc\.", "head.", k)


def _bn(prefix, c):
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def _lin(prefix, o, i, bias=True):
    return {f"{prefix}.weight": (o, i)} | ({f"{prefix}.bias": (o,)} if bias else {})


def _official_keys(dims, depths, mlp_ratio, stl, num_classes=1000, topks=(1, 4, 16, -2), side=5):
    """Official `state_dict()` names and shapes of BiFormer (models/biformer.py) / BiFormerSTL."""
    keys = {}
    if stl:
        keys |= {"downsample_layers.0.0.weight": (dims[0], 3, 4, 4), "downsample_layers.0.0.bias": (dims[0],)}
        keys |= _bn("downsample_layers.0.1", dims[0])
    else:
        c = dims[0] // 2
        keys |= {"downsample_layers.0.0.weight": (c, 3, 3, 3), "downsample_layers.0.0.bias": (c,)}
        keys |= _bn("downsample_layers.0.1", c)
        keys |= {"downsample_layers.0.3.weight": (dims[0], c, 3, 3), "downsample_layers.0.3.bias": (dims[0],)}
        keys |= _bn("downsample_layers.0.4", dims[0])
    for i in range(1, 4):
        if stl:
            keys |= _bn(f"downsample_layers.{i}.0", dims[i - 1])
            keys |= {f"downsample_layers.{i}.1.weight": (dims[i], dims[i - 1], 2, 2),
                     f"downsample_layers.{i}.1.bias": (dims[i],)}
        else:
            keys |= {f"downsample_layers.{i}.0.weight": (dims[i], dims[i - 1], 3, 3),
                     f"downsample_layers.{i}.0.bias": (dims[i],)}
            keys |= _bn(f"downsample_layers.{i}.1", dims[i])
    for i, (d, depth) in enumerate(zip(dims, depths)):
        hidden = int(d * mlp_ratio)
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}" if stl else f"stages.{i}.{j}"
            if not stl:
                keys |= {f"{p}.pos_embed.weight": (d, 1, 3, 3), f"{p}.pos_embed.bias": (d,)}
            keys |= {f"{p}.norm1.weight": (d,), f"{p}.norm1.bias": (d,),
                     f"{p}.norm2.weight": (d,), f"{p}.norm2.bias": (d,)}
            keys |= {f"{p}.attn.lepe.weight": (d, 1, side, side), f"{p}.attn.lepe.bias": (d,)}
            if topks[i] > 0:   # BiLevelRoutingAttention: QKVLinear(dim, qk_dim) + wo
                keys |= _lin(f"{p}.attn.qkv.qkv", 3 * d, d) | _lin(f"{p}.attn.wo", d, d)
            else:              # AttentionLePE: qkv without bias + proj
                keys |= _lin(f"{p}.attn.qkv", 3 * d, d, bias=False) | _lin(f"{p}.attn.proj", d, d)
            keys |= _lin(f"{p}.mlp.0", hidden, d) | _lin(f"{p}.mlp.{2 if stl else 3}", d, hidden)
    keys |= _bn("norm", dims[-1]) | _lin("head", num_classes, dims[-1])
    return keys


@pytest.mark.parametrize("name,dims,depths,mlp_ratio,stl", [
    ("vitzoo_biformer_tiny", (64, 128, 256, 512), (2, 2, 8, 2), 3, False),
    ("vitzoo_biformer_base", (96, 192, 384, 768), (4, 4, 18, 4), 3, False),
    ("vitzoo_biformer_stl", (96, 192, 384, 768), (2, 2, 6, 2), 4, True),
])
def test_filter_covers_the_official_key_set(name, dims, depths, mlp_ratio, stl):
    m = timm.create_model(name, device="meta")
    ours = m.state_dict()
    official = {_to_official(k, stl): v for k, v in ours.items()}
    assert {k: tuple(v.shape) for k, v in official.items()} == _official_keys(dims, depths, mlp_ratio, stl)
    mapped = bf.checkpoint_filter_fn({"model": official}, m)
    assert set(mapped) == set(ours) and all(mapped[k].shape == ours[k].shape for k in ours)
    same = bf.checkpoint_filter_fn(ours, m)  # our own layout passes through unchanged
    assert list(same) == list(ours) and all(same[k] is ours[k] for k in ours)


def _randomized(build):
    torch.manual_seed(0)
    m = build().eval()
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():  # norms, BN statistics, biases away from their init
                t.copy_(torch.rand_like(t) + 0.5 if name.endswith("running_var") else t + 0.05 * torch.randn_like(t))
    return m


@pytest.mark.parametrize("stl", [False, True])
@pytest.mark.parametrize("wrapper", [None, "model"])
def test_official_layout_loads_strict_with_identical_outputs(stl, wrapper):
    kwargs = dict(pos_embed_kernel=0, stem_type="patch", downsample_type="norm_conv", mlp_ratio=4.0) if stl else {}
    src = _randomized(lambda: _tiny(layer_scale=1e-5, **kwargs))
    official = {_to_official(k, stl): v.clone() for k, v in src.state_dict().items()}
    assert any(k.endswith("attn.qkv.qkv.weight") for k in official) and "downsample_layers.0.0.weight" in official
    ckpt = official if wrapper is None else {wrapper: official, "epoch": 299}
    torch.manual_seed(1)
    dst = _tiny(layer_scale=1e-5, **kwargs).eval()
    dst.load_state_dict(bf.checkpoint_filter_fn(ckpt, dst), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_pretrained_true_loads_the_official_url_through_the_filter(monkeypatch, tmp_path, num_classes):
    """`pretrained=True` end to end without network: the download is faked to write an official-layout
    file; it is cached as `biformer_tiny_in1k.pth` and loaded (weights only) through the filter."""
    import timm.models._hub as hub
    src = _randomized(lambda: timm.create_model("vitzoo_biformer_tiny"))
    official = {_to_official(k, False): v.clone() for k, v in src.state_dict().items()}
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, os.path.basename(dst)))
        torch.save({"model": dict(official), "epoch": 299}, dst)

    monkeypatch.setattr(hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(hub, "get_cache_dir", lambda *a, **k: str(tmp_path))
    m = timm.create_model("vitzoo_biformer_tiny", pretrained=True, num_classes=num_classes).eval()
    assert calls == [("https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvChHEOoGkgwgQzEDlM/root/content",
                      "biformer_tiny_in1k.pth")]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if num_classes == 1000:
            assert torch.equal(m(x), src(x))
        else:  # a new head of another size; the body is the checkpoint's
            assert m(x).shape == (1, 10)
            assert torch.equal(m.forward_features(x), src.forward_features(x))


def test_official_file_loads_through_every_timm_loading_path(tmp_path):
    """checkpoint_path=, timm's load_checkpoint and load_state_dict accept an official-layout file too."""
    from timm.models import load_checkpoint
    src = _randomized(lambda: timm.create_model("vitzoo_biformer_stl"))
    path = tmp_path / "biformer_stl_official.pth"
    torch.save({"model": {_to_official(k, True): v for k, v in src.state_dict().items()}}, path)
    x = torch.randn(1, 3, 64, 64)
    via_path = timm.create_model("vitzoo_biformer_stl", checkpoint_path=str(path))
    via_load = timm.create_model("vitzoo_biformer_stl")
    load_checkpoint(via_load, str(path))
    via_sd = timm.create_model("vitzoo_biformer_stl")
    result = via_sd.load_state_dict(torch.load(path, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        want = src.eval()(x)
        for model in (via_path, via_load, via_sd):
            assert torch.equal(model.eval()(x), want)


def test_mixer_compiles_without_graph_breaks():
    """Padding, routing (topk) and the routed op trace as one graph (torch.compile fullgraph)."""
    torch.manual_seed(0)
    mod = BiLevelRoutingAttention(32, 2, 7, 4)
    x = torch.randn(1, 10, 12, 32)
    compiled = torch.compile(mod, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), mod(x))
