"""NAT / DiNAT / DiNAT-s / isotropic NAT: the mixer against brute force, the official variants, the contract."""
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.layers.neighborhood_attention import NeighborhoodAttention2D
from vitzoo.models import dinat_s as dinat_s_mod
from vitzoo.models import nat as nat_mod
from vitzoo.models import nat_isotropic as iso_mod
from vitzoo.models.nat import NAT
from vitzoo.models.nat_isotropic import NATIsotropic


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- a private brute-force neighborhood attention (NATTEN 0.17 naive CPU kernel rules) ---------
def _natten_window_start(index, length, kernel_size, dilation):
    """NATTEN's `get_window_start`, transcribed literally (NEIGHBORHOOD_SIZE = k // 2)."""
    nh = kernel_size // 2
    if dilation <= 1:
        return max(index - nh, 0) + (index + nh >= length) * (length - index - nh - 1)
    ni = index - nh * dilation
    if ni < 0:
        return index % dilation
    if index + nh * dilation >= length:
        imodd = index % dilation
        a = (length // dilation) * dilation
        b = length - a
        if imodd < b:
            return length - b + imodd - 2 * nh * dilation
        return a + imodd - kernel_size * dilation
    return ni


def _natten_pb_start(index, length, kernel_size, dilation):
    """NATTEN's `get_pb_start`, transcribed literally."""
    nh = kernel_size // 2
    if dilation <= 1:
        return nh + (index < nh) * (nh - index) + (index + nh >= length) * (length - index - 1 - nh)
    if index - nh * dilation < 0:
        return kernel_size - 1 - index // dilation
    if index + nh * dilation >= length:
        return (length - index - 1) // dilation
    return nh


def brute_na2d(q, k, v, kernel_size, dilation, rpb, scale):
    """Dense attention over all H*W keys with an explicit neighbourhood mask and bias (autograd-able)."""
    B, H, W, nh, D = q.shape
    N = H * W
    rows, cols, ra, rb = [], [], [], []
    for i in range(H):
        si, pi = _natten_window_start(i, H, kernel_size, dilation), _natten_pb_start(i, H, kernel_size, dilation)
        for j in range(W):
            sj, pj = _natten_window_start(j, W, kernel_size, dilation), _natten_pb_start(j, W, kernel_size, dilation)
            for a in range(kernel_size):
                for b in range(kernel_size):
                    rows.append(i * W + j)
                    cols.append((si + a * dilation) * W + sj + b * dilation)
                    ra.append(pi + a)
                    rb.append(pj + b)
    rows, cols, ra, rb = (torch.tensor(t) for t in (rows, cols, ra, rb))
    assert len(set(zip(rows.tolist(), cols.tolist()))) == N * kernel_size ** 2  # k*k distinct keys per query
    qh, kh, vh = (t.reshape(B, N, nh, D).transpose(1, 2) for t in (q, k, v))
    scores = (qh * scale) @ kh.transpose(-1, -2)
    logits = torch.full_like(scores, float("-inf"))
    logits[:, :, rows, cols] = scores[:, :, rows, cols] + (rpb[:, ra, rb] if rpb is not None else 0.0)
    out = logits.softmax(-1) @ vh
    return out.transpose(1, 2).reshape(B, H, W, nh, D)


def brute_mixer(mod: NeighborhoodAttention2D, x):
    """The official NATTEN module's forward (pad input -> qkv -> NA -> crop -> proj) on brute_na2d."""
    B, H0, W0, C = x.shape
    ws = mod.kernel_size * mod.dilation
    x = F.pad(x, (0, 0, 0, max(0, ws - W0), 0, max(0, ws - H0)))
    B, H, W, C = x.shape
    q, k, v = mod.qkv(x).reshape(B, H, W, 3, mod.num_heads, mod.head_dim).unbind(3)
    out = brute_na2d(q, k, v, mod.kernel_size, mod.dilation, mod.rpb, mod.scale).reshape(B, H, W, C)
    return mod.proj(out[:, :H0, :W0])


# ---- the mixer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hw,kernel_size,dilation", [
    ((7, 9), 3, 1), ((9, 11), 5, 1), ((9, 8), 3, 2), ((11, 13), 3, 3), ((10, 14), 5, 2),
])
def test_mixer_matches_brute_force(hw, kernel_size, dilation):
    torch.manual_seed(0)
    mod = NeighborhoodAttention2D(16, 2, kernel_size, dilation)
    x = torch.randn(2, *hw, 16, requires_grad=True)
    out = mod(x)
    ref = brute_mixer(mod, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, mod.rpb, mod.qkv.weight], g)
    ref_grads = torch.autograd.grad(ref, [x, mod.rpb, mod.qkv.weight], g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("hw,kernel_size,dilation", [((3, 5), 3, 2), ((2, 2), 7, 1), ((7, 7), 7, 2), ((5, 20), 3, 4)])
def test_mixer_small_map_pads_input_then_crops_like_natten(hw, kernel_size, dilation):
    """Maps smaller than kernel_size * dilation: zero-pad the input bottom/right, attend, crop (NATTEN's module)."""
    torch.manual_seed(0)
    mod = NeighborhoodAttention2D(8, 2, kernel_size, dilation)
    x = torch.randn(1, *hw, 8)
    out = mod(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, brute_mixer(mod, x), atol=1e-5, rtol=1e-5)
    # the padded tokens are real keys (their k/v are the qkv bias), so padding must not be skipped:
    mod.qkv.bias.data.normal_()
    torch.testing.assert_close(mod(x), brute_mixer(mod, x), atol=1e-5, rtol=1e-5)


def test_mixer_without_rpb_and_bad_arguments():
    mod = NeighborhoodAttention2D(8, 2, 3, 1, rel_pos_bias=False)
    assert mod.rpb is None
    x = torch.randn(1, 5, 5, 8)
    torch.testing.assert_close(mod(x), brute_mixer(mod, x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        NeighborhoodAttention2D(10, 3)
    with pytest.raises(ValueError, match="odd"):
        NeighborhoodAttention2D(8, 2, kernel_size=4)
    with pytest.raises(ValueError, match="attn_drop"):
        NeighborhoodAttention2D(8, 2, attn_drop=0.1)
    with pytest.raises(ValueError, match=r"NHWC map \[B, H, W, 8\]"):
        mod(torch.randn(1, 8, 5, 5))


# ---- official variants: exact parameter counts -------------------------------------------------
# Derived by hand from the official code (SHI-Labs/Neighborhood-Attention-Transformer,
# classification/nat.py, dinat.py, dinats.py, isotropic.py): per block 2 LayerNorms, qkv + proj
# Linears with bias, rpb [heads, 2k-1, 2k-1], Mlp(int(dim * mlp_ratio)), gamma1/gamma2 when
# layer_scale; ConvTokenizer = conv3x3(3->C/2) + conv3x3(C/2->C) + LN(C); ConvDownsampler =
# conv3x3(d->2d, no bias) + LN(2d); DiNAT-s: conv4x4 patch embed + LN, PatchMerging = LN(4d) +
# Linear(4d->2d, no bias); isotropic: conv16x16 patch embed + LN; final LN + Linear head.
# They round to the official tables: NAT-M/T/S/B 20/28/51/90M (NAT.md), DiNAT-M/T/S/B/L
# 20/28/51/90/200M, DiNAT-s-T/S/B/L 28/50/88/197M, NAT/DiNAT-iso-S/B 22/86M (DiNAT.md).
# The *_21k variants carry the 21841-class ImageNet-22K head.
OFFICIAL_PARAM_COUNTS = {
    "vitzoo_nat_mini": 19_984_174,
    "vitzoo_nat_tiny": 27_901_582,
    "vitzoo_nat_small": 50_743_297,            # layer_scale=1e-5
    "vitzoo_nat_base": 89_769_652,             # layer_scale=1e-5
    "vitzoo_dinat_mini": 19_984_174,
    "vitzoo_dinat_tiny": 27_901_582,
    "vitzoo_dinat_small": 50_719_681,          # no layer scale in dinat.py (NAT-S has it)
    "vitzoo_dinat_base": 89_769_652,           # layer_scale=1e-5
    "vitzoo_dinat_large": 200_943_514,         # heads 6/12/24/48, no layer scale
    "vitzoo_dinat_large_384": 200_943_514,
    "vitzoo_dinat_large_384_11x11": 201_144_250,
    "vitzoo_dinat_large_21k": 232_976_131,
    "vitzoo_dinat_large_21k_11x11": 233_176_867,
    "vitzoo_dinat_s_tiny": 28_288_354,
    "vitzoo_dinat_s_small": 49_606_258,
    "vitzoo_dinat_s_base": 87_768_224,
    "vitzoo_dinat_s_large": 196_532_476,
    "vitzoo_dinat_s_large_384": 196_532_476,
    "vitzoo_dinat_s_large_21k": 228_565_093,
    "vitzoo_nat_isotropic_small": 21_999_736,
    "vitzoo_dinat_isotropic_small": 21_999_736,
    "vitzoo_nat_isotropic_base": 86_465_800,
    "vitzoo_dinat_isotropic_base": 86_465_800,
}


def test_every_variant_is_registered_with_a_checkpoint_url():
    names = set(vitzoo.list_models("*nat*"))
    assert names == set(OFFICIAL_PARAM_COUNTS)
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url.startswith("https://shi-labs.com/projects/") and cfg.hf_hub_id is None, name


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAM_COUNTS))
def test_param_count_matches_official(name):
    m = timm.create_model(name, device="meta")
    assert sum(p.numel() for p in m.parameters()) == OFFICIAL_PARAM_COUNTS[name]


def _dilations(m):
    return [[b.token_mixer.dilation for b in s.blocks] for s in m.stages]


def test_dilation_schedules_and_kernel_sizes():
    assert _dilations(timm.create_model("vitzoo_nat_mini", device="meta")) == [[1] * 3, [1] * 4, [1] * 6, [1] * 5]
    m = timm.create_model("vitzoo_dinat_tiny", device="meta")
    assert _dilations(m) == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    m = timm.create_model("vitzoo_dinat_large_384", device="meta")
    assert _dilations(m) == [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]
    m = timm.create_model("vitzoo_dinat_large_384_11x11", device="meta")
    assert _dilations(m)[0] == [1, 8, 1] and m.stages[0].blocks[0].token_mixer.rpb.shape == (6, 21, 21)
    m = timm.create_model("vitzoo_dinat_s_tiny", device="meta")
    assert _dilations(m) == [[1, 8], [1, 4], [1, 2] * 3, [1, 1]]
    m = timm.create_model("vitzoo_dinat_isotropic_small", device="meta")
    assert [d[0] for d in _dilations(m)] == [1, 2] * 6
    m = timm.create_model("vitzoo_nat_small", device="meta")
    assert m.stages[0].blocks[0].layer_scale1.scale.shape == (96,)


# ---- forward / backward / contract --------------------------------------------------------------
def test_nat_mini_forward_backward_small_input():
    """64x64: stage 4 is 2x2 (< 7), so every late-stage block runs the pad/crop path."""
    torch.manual_seed(0)
    m = timm.create_model("vitzoo_nat_mini", num_classes=10).train()
    y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    y.sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing
    assert m.stages[3].blocks[0].token_mixer.rpb.grad.abs().sum() > 0


def test_nat_mini_forward_224_and_intermediates():
    m = timm.create_model("vitzoo_nat_mini").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        y = m(x)
        final, inter = m.forward_intermediates(x)
    assert y.shape == (1, 1000)
    assert [t.shape for t in inter] == [(1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14), (1, 512, 7, 7)]
    torch.testing.assert_close(m.forward_head(final), y)


@pytest.mark.parametrize("name", ["vitzoo_dinat_mini", "vitzoo_dinat_s_tiny"])
def test_dinat_small_input_forward_intermediates(name):
    """At 64x64 DiNAT's dilation-8 blocks see a 16x16 map (< 7*8): padded to 56x56, run, cropped."""
    m = timm.create_model(name, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = m(x)
        final, inter = m.forward_intermediates(x, output_fmt="NHWC")
    c = m.feature_info[0]["num_chs"]
    assert [t.shape for t in inter] == [(1, 16, 16, c), (1, 8, 8, 2 * c), (1, 4, 4, 4 * c), (1, 2, 2, 8 * c)]
    assert feats.shape == (1, 8 * c) and torch.isfinite(feats).all()
    torch.testing.assert_close(m.forward_head(final), feats)


def test_features_only():
    m = timm.create_model("vitzoo_nat_mini", features_only=True).eval()
    assert m.feature_info.channels() == [64, 128, 256, 512]
    assert m.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [o.shape for o in outs] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    m = timm.create_model("vitzoo_nat_mini", features_only=True, out_indices=(1, 3))
    assert m.feature_info.channels() == [128, 512]


def test_isotropic_forward_features_and_intermediates():
    m = NATIsotropic(num_classes=5, embed_dim=32, depth=4, num_heads=2, dilation=2).eval()
    x = torch.randn(1, 3, 64, 64)  # 4x4 tokens: padded to 14x14 for the dilation-2 blocks
    with torch.no_grad():
        y = m(x)
        final, inter = m.forward_intermediates(x, indices=2)
    assert y.shape == (1, 5)
    assert [t.shape for t in inter] == [(1, 32, 4, 4)] * 2
    torch.testing.assert_close(m.forward_head(final), y)
    f = timm.create_model("vitzoo_dinat_isotropic_small", features_only=True, device="meta")
    assert f.feature_info.channels() == [384] * 3 and f.feature_info.reduction() == [16] * 3


def test_no_weight_decay_and_bad_input():
    m = timm.create_model("vitzoo_nat_mini", device="meta")
    nwd = m.no_weight_decay()
    assert len(nwd) == 18 and all(n.endswith("token_mixer.rpb") for n in nwd)
    m = timm.create_model("vitzoo_nat_mini")
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32x32, got 31x64"):  # any size from 32 px (issue 17)
        m(torch.randn(1, 3, 31, 64))


# ---- official checkpoint layout ------------------------------------------------------------------
# The official-layout state dicts below are built by inverting our key mapping on our model's own
# state dict (`_to_official_*`). That inversion is checked against the official key set, enumerated
# from the official module tree (`_official_*_keys`), so the filter is tested on the official names.
def _to_official_nat(k):
    k = re.sub(r"^stem\.", "patch_embed.", k)
    m = re.match(r"^stages\.(\d+)\.downsample\.(conv|post_norm)\.(.+)$", k)
    if m:
        k = f"levels.{int(m.group(1)) - 1}.downsample.{'reduction' if m.group(2) == 'conv' else 'norm'}.{m.group(3)}"
    k = re.sub(r"^stages\.(\d+)\.blocks\.", r"levels.\1.blocks.", k)
    return _to_official_block(k)


def _to_official_block(k):
    k = k.replace(".token_mixer.", ".attn.")
    k = re.sub(r"\.layer_scale([12])\.scale$", r".gamma\1", k)
    return re.sub(r"^head\.fc\.", "head.", k)


def _to_official_dinat_s(k):
    k = re.sub(r"^stem\.proj\.0\.", "patch_embed.proj.", k)
    k = re.sub(r"^stem\.norm\.", "patch_embed.norm.", k)
    m = re.match(r"^stages\.(\d+)\.downsample\.(.+)$", k)
    if m:
        k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    return _to_official_block(re.sub(r"^stages\.(\d+)\.blocks\.", r"layers.\1.blocks.", k))


def _to_official_iso(k):
    k = re.sub(r"^stem\.proj\.0\.", "patch_embed.proj.", k)
    k = re.sub(r"^stem\.norm\.", "patch_embed.norm.", k)
    return _to_official_block(re.sub(r"^stages\.(\d+)\.blocks\.0\.", r"layers.\1.", k))


_BLOCK = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.rpb", "attn.proj.weight",
          "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
          "mlp.fc2.bias"]
_TAIL = ["norm.weight", "norm.bias", "head.weight", "head.bias"]


def _official_nat_keys(depths, layer_scale):
    keys = [f"patch_embed.proj.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    keys += ["patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i, d in enumerate(depths):
        for j in range(d):
            keys += [f"levels.{i}.blocks.{j}.{n}" for n in _BLOCK + (["gamma1", "gamma2"] if layer_scale else [])]
        if i < len(depths) - 1:
            keys += [f"levels.{i}.downsample.{n}" for n in ("reduction.weight", "norm.weight", "norm.bias")]
    return set(keys + _TAIL)


def _official_dinat_s_keys(depths):
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    for i, d in enumerate(depths):
        keys += [f"layers.{i}.blocks.{j}.{n}" for j in range(d) for n in _BLOCK]
        if i < len(depths) - 1:
            keys += [f"layers.{i}.downsample.{n}" for n in ("reduction.weight", "norm.weight", "norm.bias")]
    return set(keys + _TAIL)


def _official_iso_keys(depth):
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"]
    return set(keys + [f"layers.{i}.{n}" for i in range(depth) for n in _BLOCK] + _TAIL)


@pytest.mark.parametrize("name,to_official,official_keys,filter_fn", [
    ("vitzoo_nat_small", _to_official_nat, _official_nat_keys((3, 4, 18, 5), True), nat_mod.checkpoint_filter_fn),
    ("vitzoo_dinat_large", _to_official_nat, _official_nat_keys((3, 4, 18, 5), False), nat_mod.checkpoint_filter_fn),
    ("vitzoo_dinat_s_base", _to_official_dinat_s, _official_dinat_s_keys((2, 2, 18, 2)),
     dinat_s_mod.checkpoint_filter_fn),
    ("vitzoo_dinat_isotropic_base", _to_official_iso, _official_iso_keys(12), iso_mod.checkpoint_filter_fn),
])
def test_filter_covers_the_official_key_set(name, to_official, official_keys, filter_fn):
    m = timm.create_model(name, device="meta")
    ours = m.state_dict()
    official = {to_official(k): v for k, v in ours.items()}
    assert set(official) == official_keys
    mapped = filter_fn({"model": official}, m)
    assert set(mapped) == set(ours) and all(mapped[k].shape == ours[k].shape for k in ours)


def _tiny_models():
    dil = [[1, 4], [1, 2], [1, 1], [1]]
    return [
        (lambda: NAT(num_classes=7, embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4), kernel_size=3,
                     dilations=dil, mlp_ratio=2.0, layer_scale=1e-5), _to_official_nat, nat_mod.checkpoint_filter_fn),
        (lambda: NAT(num_classes=7, embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4), kernel_size=3,
                     dilations=dil, mlp_ratio=4.0, stem_type="patch", downsample_type="merge"),
         _to_official_dinat_s, dinat_s_mod.checkpoint_filter_fn),
        (lambda: NATIsotropic(num_classes=7, embed_dim=16, depth=3, num_heads=2, kernel_size=3, dilation=2),
         _to_official_iso, iso_mod.checkpoint_filter_fn),
    ]


@pytest.mark.parametrize("idx", range(3))
@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_official_layout_loads_strict_with_identical_outputs(idx, wrapper):
    build, to_official, filter_fn = _tiny_models()[idx]
    torch.manual_seed(0)
    src = build().eval()
    for p in src.parameters():  # layer scales / norms away from their init so every weight matters
        p.data.add_(0.05 * torch.randn_like(p))
    official = {to_official(k): v.clone() for k, v in src.state_dict().items()}
    ckpt = official if wrapper is None else {wrapper: official, "epoch": 3}
    torch.manual_seed(1)
    dst = build().eval()
    dst.load_state_dict(filter_fn(ckpt, dst), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_pretrained_true_loads_the_official_url_through_the_filter(monkeypatch):
    """`pretrained=True` end to end without network: the URL loader is faked to return official keys."""
    import timm.models._builder as builder
    torch.manual_seed(0)
    src = timm.create_model("vitzoo_nat_mini").eval()
    official = {_to_official_nat(k): v.clone() for k, v in src.state_dict().items()}
    urls = []

    def fake_load(url, **kwargs):
        urls.append(url)
        return {"model": dict(official)}

    monkeypatch.setattr(builder, "load_state_dict_from_url", fake_load)
    m = timm.create_model("vitzoo_nat_mini", pretrained=True).eval()
    assert urls == ["https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))
    m = timm.create_model("vitzoo_nat_mini", pretrained=True, num_classes=10)  # new head, body loaded
    assert m.get_classifier().weight.shape == (10, 512)
    assert torch.equal(m.stages[3].blocks[4].token_mixer.rpb, src.stages[3].blocks[4].token_mixer.rpb)
