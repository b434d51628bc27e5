"""Dense-prediction backbones of NAT / DiNAT / DiNAT-s / isotropic NAT, Swin and BiFormer (issue 17).

* any input size: `features_only` maps of the documented shapes at 250x333 and 320x480, the
  documented minimum (32 px; 16 for the isotropic models) with a clear error below it;
* the official dense backbones' semantics: random weights saved in the layout of an official
  detection / segmentation checkpoint (key names and shapes enumerated here from the official
  backbone code) load through timm's loading paths into `features_only=True, feature_norms=True`
  and give the maps of an independent re-statement of that backbone's forward:
  - SHI-Labs/Neighborhood-Attention-Transformer `detection/nat.py` / `dinat.py` (checkpoints such as
    `maskrcnn_dinat_tiny.pth`, `nat_tiny_maskrcnn.pth`) and `detection/dinats.py`
    (`maskrcnn_dinat_s_tiny.pth`), whose `segmentation/` twins are the same code (`upernet_*.pth`);
  - SwinTransformer/Swin-Transformer-Object-Detection `mmdet/models/backbones/swin_transformer.py`
    (`mask_rcnn_swin_tiny_patch4_window7_1x.pth`);
  - rayleizhu/BiFormer `object_detection/models_mm/biformer_mm.py` (`BiFormer_mm`, what its
    `maskrcnn.1x.biformer_small.py` run saves as `epoch_12.pth`; the repo publishes logs only);
  - sail-sg/poolformer `models/poolformer.py` with `fork_feat=True` (`poolformer_s12_feat`), shared by
    its `detection/` (`mask_rcnn_poolformer_s12_fpn_1x_coco`; RetinaNet runs with `FORK_LAST3=1`, no
    `norm0`) and `segmentation/` (`fpn_poolformer_s12_ade20k_40k`) configs;
* timm's feature contract for Swin (NHWC, feature_info, state_dict of timm's features_only model,
  values on timm's weights at a non-square size);
* under Triton's interpreter, the fused NA / window / routed kernels take the padded maps.
"""
from __future__ import annotations

import importlib.util
import math
import os

import pytest
import timm
import torch
import torch.nn.functional as F

import vitzoo  # noqa: F401
from interpreter_child import run_interpreted
from test_biformer import official_attention_lepe, official_bra
from test_nat import brute_na2d
from vitzoo.layers.routing_attention import AttentionLePE, BiLevelRoutingAttention
from vitzoo.models import biformer as bf_mod
from vitzoo.models import dinat_s as dinat_s_mod
from vitzoo.models import metaformers as metaformer_mod
from vitzoo.models import nat as nat_mod
from vitzoo.models import swin as swin_mod

pytestmark = pytest.mark.usefixtures("one_thread")
IS_CHILD = os.environ.get("VITZOO_DENSE_TEST_CHILD") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None


# ---- shapes at any size ----------------------------------------------------------------------------
def _ceil_pyramid(h, w, first=4):
    return [(math.ceil(h / (first * 2 ** i)), math.ceil(w / (first * 2 ** i))) for i in range(4)]


def _floor_pyramid(h, w):  # BiFormer-STL: 4x4/4 stem and 2x2/2 downsamplers floor
    sizes, (h, w) = [], (h // 4, w // 4)
    for _ in range(4):
        sizes.append((h, w))
        h, w = h // 2, w // 2
    return sizes


SMALLEST = ["vitzoo_nat_mini", "vitzoo_dinat_mini", "vitzoo_dinat_s_tiny", "vitzoo_nat_isotropic_small",
            "vitzoo_dinat_isotropic_small", "vitzoo_swin_tiny_patch4_window7_224", "vitzoo_biformer_tiny",
            "vitzoo_biformer_stl"]


def _expected(name, h, w):
    if "isotropic" in name:
        return [(math.ceil(h / 16), math.ceil(w / 16))] * 3
    return _floor_pyramid(h, w) if name.endswith("_stl") else _ceil_pyramid(h, w)


def _check_shapes(name, sizes, **kwargs):
    m = timm.create_model(name, features_only=True, **kwargs).eval()
    nhwc = "swin" in name
    for h, w in sizes:
        with torch.no_grad():
            feats = m(torch.randn(1, 3, h, w))
        got = [tuple(f.shape[1:3]) if nhwc else tuple(f.shape[-2:]) for f in feats]
        assert got == _expected(name, h, w), (name, h, w)
        assert [f.shape[-1] if nhwc else f.shape[1] for f in feats] == m.feature_info.channels()


@pytest.mark.parametrize("name", SMALLEST)
def test_features_only_any_size_documented_shapes(name):
    _check_shapes(name, [(250, 333), (320, 480)], **({"depths": (1, 1, 1, 1)} if "biformer" in name else {}))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in timm.list_models("vitzoo_*") if any(
    f in n for f in ("nat", "swin", "biformer"))])
def test_every_model_of_these_families_any_size(name):
    _check_shapes(name, [(250, 333), (320, 480)])


@pytest.mark.parametrize("name,minimum", [("vitzoo_nat_mini", 32), ("vitzoo_dinat_s_tiny", 32),
                                          ("vitzoo_nat_isotropic_small", 16), ("vitzoo_biformer_tiny", 32),
                                          ("vitzoo_swin_tiny_patch4_window7_224", 32)])
def test_documented_minimum_and_clear_error_below(name, minimum):
    kwargs = {"depths": (1, 1, 1, 1)} if "biformer" in name or "nat_mini" in name else {}
    m = timm.create_model(name, features_only=True, **kwargs).eval()
    with torch.no_grad():
        assert len(m(torch.randn(1, 3, minimum, minimum + 3))) >= 3
    with pytest.raises(ValueError, match=f"at least {minimum}x{minimum}, got {minimum - 1}x{minimum + 3}"):
        m(torch.randn(1, 3, minimum - 1, minimum + 3))


# ---- official layouts: key names and shapes, from the official backbone code -------------------------
def _rand(shape, g, kind="w"):
    if kind == "norm":
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if kind == "var":
        return 0.5 + torch.rand(shape, generator=g)
    return 0.2 * torch.randn(shape, generator=g)


class _Official(dict):
    """An official-layout state dict under construction (random values, fixed seed)."""

    def __init__(self, seed=0):
        super().__init__()
        self.g = torch.Generator().manual_seed(seed)

    def t(self, key, *shape, kind="w"):
        self[key] = _rand(shape, self.g, kind)

    def ln(self, p, c):
        self.t(f"{p}.weight", c, kind="norm")
        self.t(f"{p}.bias", c)

    def lin(self, p, o, i, bias=True):
        self.t(f"{p}.weight", o, i)
        if bias:
            self.t(f"{p}.bias", o)

    def bn(self, p, c):
        self.ln(p, c)
        self.t(f"{p}.running_mean", c)
        self.t(f"{p}.running_var", c, kind="var")
        self[f"{p}.num_batches_tracked"] = torch.tensor(100)

    def mmdet_checkpoint(self):
        """What mmdet / mmseg save: `meta`, and the detector's state dict with `backbone.` / neck / heads."""
        sd = {f"backbone.{k}": v for k, v in self.items()}
        sd |= {"neck.lateral_convs.0.conv.weight": torch.randn(8, 4, 1, 1), "rpn_head.rpn_conv.bias": torch.randn(8),
               "roi_head.bbox_head.fc_cls.weight": torch.randn(81, 8)}
        return {"meta": {"epoch": 12, "iter": 1000}, "state_dict": sd}


def _natten_block(sd: _Official, p, c, mlp, k, heads):
    """NATLayer / NATransformerLayer: norm1, natten's attn (`qkv`, `rpb`, `proj`), norm2, mlp."""
    sd.ln(f"{p}.norm1", c)
    sd.lin(f"{p}.attn.qkv", 3 * c, c)
    sd.t(f"{p}.attn.rpb", heads, 2 * k - 1, 2 * k - 1)
    sd.lin(f"{p}.attn.proj", c, c)
    sd.ln(f"{p}.norm2", c)
    sd.lin(f"{p}.mlp.fc1", int(c * mlp), c)
    sd.lin(f"{p}.mlp.fc2", c, int(c * mlp))


NAT_CFG = dict(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4), kernel_size=3,
               dilations=((1, 4), (1, 2), (1, 1), (1,)), mlp_ratio=2.0)


def official_nat_state(cfg, layer_scale, heads_per_stage):
    """detection/nat.py `NAT(...)` with out_indices (0, 1, 2, 3): ConvTokenizer, levels (NATBlock:
    NATLayer blocks, ConvDownsampler), norm0..norm3; natten's module has `qkv`, `rpb`, `proj`."""
    sd, e, k = _Official(0), cfg["embed_dim"], cfg["kernel_size"]
    sd.t("patch_embed.proj.0.weight", e // 2, 3, 3, 3)
    sd.t("patch_embed.proj.0.bias", e // 2)
    sd.t("patch_embed.proj.1.weight", e, e // 2, 3, 3)
    sd.t("patch_embed.proj.1.bias", e)
    sd.ln("patch_embed.norm", e)
    for i, depth in enumerate(cfg["depths"]):
        c = e * 2 ** i
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}"
            _natten_block(sd, p, c, cfg["mlp_ratio"], k, heads_per_stage[i])
            if layer_scale:
                sd.t(f"{p}.gamma1", c, kind="norm")
                sd.t(f"{p}.gamma2", c, kind="norm")
        if i < len(cfg["depths"]) - 1:
            sd.t(f"levels.{i}.downsample.reduction.weight", 2 * c, c, 3, 3)
            sd.ln(f"levels.{i}.downsample.norm", 2 * c)
        sd.ln(f"norm{i}", c)
    return sd


def official_dinat_s_state(cfg, heads_per_stage):
    """detection/dinats.py `DiNAT_s(...)`: PatchEmbed (4x4), layers (BasicLayer: NATransformerLayer
    blocks, PatchMerging `norm` + `reduction`), norm0..norm3."""
    sd, e, k = _Official(0), cfg["embed_dim"], cfg["kernel_size"]
    sd.t("patch_embed.proj.weight", e, 3, 4, 4)
    sd.t("patch_embed.proj.bias", e)
    sd.ln("patch_embed.norm", e)
    for i, depth in enumerate(cfg["depths"]):
        c = e * 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            _natten_block(sd, p, c, 4.0, k, heads_per_stage[i])
        if i < len(cfg["depths"]) - 1:
            sd.ln(f"layers.{i}.downsample.norm", 4 * c)
            sd.t(f"layers.{i}.downsample.reduction.weight", 2 * c, 4 * c)
        sd.ln(f"norm{i}", c)
    return sd


def _official_rel_index(ws):
    """The official WindowAttention's `relative_position_index` buffer (saved in its checkpoints)."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


SWIN_CFG = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


def official_swin_state(cfg, window=7):
    """mmdet/models/backbones/swin_transformer.py `SwinTransformer(...)`, ape=False, patch_norm=True,
    out_indices (0, 1, 2, 3): patch_embed, layers.i (blocks, PatchMerging at the END of layer i), norm0..3."""
    sd, e = _Official(0), cfg["embed_dim"]
    sd.t("patch_embed.proj.weight", e, 3, 4, 4)
    sd.t("patch_embed.proj.bias", e)
    sd.ln("patch_embed.norm", e)
    for i, depth in enumerate(cfg["depths"]):
        c, h = e * 2 ** i, cfg["num_heads"][i]
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            sd.ln(f"{p}.norm1", c)
            sd.t(f"{p}.attn.relative_position_bias_table", (2 * window - 1) ** 2, h)
            sd[f"{p}.attn.relative_position_index"] = _official_rel_index(window)
            sd.lin(f"{p}.attn.qkv", 3 * c, c)
            sd.lin(f"{p}.attn.proj", c, c)
            sd.ln(f"{p}.norm2", c)
            sd.lin(f"{p}.mlp.fc1", 4 * c, c)
            sd.lin(f"{p}.mlp.fc2", c, 4 * c)
        if i < len(cfg["depths"]) - 1:
            sd.lin(f"layers.{i}.downsample.reduction", 2 * c, 4 * c, bias=False)
            sd.ln(f"layers.{i}.downsample.norm", 4 * c)
        sd.ln(f"norm{i}", c)
    return sd


BIFORMER_CFG = dict(embed_dims=(16, 32, 48, 64), depths=(1, 2, 1, 1), head_dim=16, n_win=4, mlp_ratio=3.0)


def official_biformer_state(cfg):
    """models/biformer.py `BiFormer` as `BiFormer_mm` keeps it (head and final norm deleted) plus
    `extra_norms.0..3` (timm LayerNorm2d): downsample_layers (stem conv-BN-GELU-conv-BN, then conv-BN),
    stages.i.j (pos_embed, norm1, attn, norm2, mlp.0 / mlp.3)."""
    sd, d = _Official(0), cfg["embed_dims"]
    sd.t("downsample_layers.0.0.weight", d[0] // 2, 3, 3, 3)
    sd.t("downsample_layers.0.0.bias", d[0] // 2)
    sd.bn("downsample_layers.0.1", d[0] // 2)
    sd.t("downsample_layers.0.3.weight", d[0], d[0] // 2, 3, 3)
    sd.t("downsample_layers.0.3.bias", d[0])
    sd.bn("downsample_layers.0.4", d[0])
    for i in range(1, 4):
        sd.t(f"downsample_layers.{i}.0.weight", d[i], d[i - 1], 3, 3)
        sd.t(f"downsample_layers.{i}.0.bias", d[i])
        sd.bn(f"downsample_layers.{i}.1", d[i])
    for i, depth in enumerate(cfg["depths"]):
        c = d[i]
        for j in range(depth):
            p = f"stages.{i}.{j}"
            sd.t(f"{p}.pos_embed.weight", c, 1, 3, 3)
            sd.t(f"{p}.pos_embed.bias", c)
            sd.ln(f"{p}.norm1", c)
            sd.t(f"{p}.attn.lepe.weight", c, 1, 5, 5)
            sd.t(f"{p}.attn.lepe.bias", c)
            if i < 3:
                sd.lin(f"{p}.attn.qkv.qkv", 3 * c, c)
                sd.lin(f"{p}.attn.wo", c, c)
            else:
                sd.lin(f"{p}.attn.qkv", 3 * c, c, bias=False)
                sd.lin(f"{p}.attn.proj", c, c)
            sd.ln(f"{p}.norm2", c)
            sd.lin(f"{p}.mlp.0", int(c * cfg["mlp_ratio"]), c)
            sd.lin(f"{p}.mlp.3", c, int(c * cfg["mlp_ratio"]))
        sd.ln(f"extra_norms.{i}", c)
    return sd


# ---- the official dense backbones' forwards, re-stated on those state dicts --------------------------
def _ln(x, sd, p, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps)


def _lin(x, sd, p):
    return F.linear(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"))


def _mlp(x, sd, p, names=("fc1", "fc2")):
    return _lin(F.gelu(_lin(x, sd, f"{p}.{names[0]}")), sd, f"{p}.{names[1]}")


def _natten(x, sd, p, heads, k, dil):
    """natten's NeighborhoodAttention2D: pad a map smaller than k * dil at the bottom / right, qkv,
    neighborhood attention (NATTEN's window rules), crop, proj."""
    B, H0, W0, C = x.shape
    ws = k * dil
    x = F.pad(x, (0, 0, 0, max(0, ws - W0), 0, max(0, ws - H0)))
    _, H, W, _ = x.shape
    q, kk, v = _lin(x, sd, f"{p}.qkv").reshape(B, H, W, 3, heads, C // heads).unbind(3)
    out = brute_na2d(q, kk, v, k, dil, sd[f"{p}.rpb"], (C // heads) ** -0.5).reshape(B, H, W, C)
    return _lin(out[:, :H0, :W0], sd, f"{p}.proj")


def _nat_layer(x, sd, p, heads, k, dil, layer_scale):
    a = _natten(_ln(x, sd, f"{p}.norm1"), sd, f"{p}.attn", heads, k, dil)
    x = x + (sd[f"{p}.gamma1"] * a if layer_scale else a)
    m = _mlp(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp")
    return x + (sd[f"{p}.gamma2"] * m if layer_scale else m)


def official_nat_forward(sd, x, cfg, layer_scale):
    x = F.conv2d(x, sd["patch_embed.proj.0.weight"], sd["patch_embed.proj.0.bias"], stride=2, padding=1)
    x = F.conv2d(x, sd["patch_embed.proj.1.weight"], sd["patch_embed.proj.1.bias"], stride=2, padding=1)
    x = _ln(x.permute(0, 2, 3, 1), sd, "patch_embed.norm")
    outs = []
    for i, depth in enumerate(cfg["depths"]):
        for j in range(depth):
            x = _nat_layer(x, sd, f"levels.{i}.blocks.{j}", cfg["num_heads"][i], cfg["kernel_size"],
                           cfg["dilations"][i][j], layer_scale)
        outs.append(_ln(x, sd, f"norm{i}").permute(0, 3, 1, 2))
        if i < len(cfg["depths"]) - 1:
            x = F.conv2d(x.permute(0, 3, 1, 2), sd[f"levels.{i}.downsample.reduction.weight"], stride=2, padding=1)
            x = _ln(x.permute(0, 2, 3, 1), sd, f"levels.{i}.downsample.norm")
    return outs


def _patch_merging(x, sd, p):
    H, W = x.shape[1:3]
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    return F.linear(_ln(x, sd, f"{p}.norm"), sd[f"{p}.reduction.weight"])


def _patch_embed(x, sd):
    H, W = x.shape[-2:]
    x = F.pad(x, (0, (4 - W % 4) % 4, 0, (4 - H % 4) % 4))
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)
    return _ln(x.permute(0, 2, 3, 1), sd, "patch_embed.norm")


def official_dinat_s_forward(sd, x, cfg):
    x = _patch_embed(x, sd)
    outs = []
    for i, depth in enumerate(cfg["depths"]):
        for j in range(depth):
            x = _nat_layer(x, sd, f"layers.{i}.blocks.{j}", cfg["num_heads"][i], cfg["kernel_size"],
                           cfg["dilations"][i][j], False)
        outs.append(_ln(x, sd, f"norm{i}").permute(0, 3, 1, 2))
        if i < len(cfg["depths"]) - 1:
            x = _patch_merging(x, sd, f"layers.{i}.downsample")
    return outs


def _swin_mask(Hp, Wp, ws, ss):
    """BasicLayer.forward's mask: regions of the padded map by the slices (0,-ws), (-ws,-ss), (-ss,None)."""
    img = torch.zeros(1, Hp, Wp, 1)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
        for w in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
            img[:, h, w, :] = cnt
            cnt += 1
    win = img.reshape(1, Hp // ws, ws, Wp // ws, ws, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
    m = win.unsqueeze(1) - win.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def _swin_block(x, sd, p, heads, ws, shift, mask):
    B, H, W, C = x.shape
    shortcut = x
    x = _ln(x, sd, f"{p}.norm1")
    x = F.pad(x, (0, 0, 0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws))  # pad, THEN roll
    Hp, Wp = x.shape[1:3]
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
    win = x.reshape(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
    Bw, N, _ = win.shape
    q, k, v = _lin(win, sd, f"{p}.attn.qkv").reshape(Bw, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    attn = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1)
    table, index = sd[f"{p}.attn.relative_position_bias_table"], sd[f"{p}.attn.relative_position_index"]
    attn = attn + table[index.reshape(-1)].reshape(N, N, -1).permute(2, 0, 1).unsqueeze(0)
    if shift:
        nw = mask.shape[0]
        attn = (attn.reshape(Bw // nw, nw, heads, N, N) + mask.unsqueeze(1).unsqueeze(0)).reshape(-1, heads, N, N)
    out = _lin((attn.softmax(-1) @ v).transpose(1, 2).reshape(Bw, N, C), sd, f"{p}.attn.proj")
    x = out.reshape(B, Hp // ws, Wp // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    if shift:
        x = torch.roll(x, (shift, shift), (1, 2))
    x = shortcut + x[:, :H, :W]
    return x + _mlp(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp")


def official_swin_forward(sd, x, cfg, ws=7):
    x = _patch_embed(x, sd)
    outs = []
    for i, depth in enumerate(cfg["depths"]):
        H, W = x.shape[1:3]
        mask = _swin_mask(math.ceil(H / ws) * ws, math.ceil(W / ws) * ws, ws, ws // 2)
        for j in range(depth):
            x = _swin_block(x, sd, f"layers.{i}.blocks.{j}", cfg["num_heads"][i], ws, 0 if j % 2 == 0 else ws // 2,
                            mask)
        outs.append(_ln(x, sd, f"norm{i}").permute(0, 3, 1, 2))
        if i < len(cfg["depths"]) - 1:
            x = _patch_merging(x, sd, f"layers.{i}.downsample")
    return outs


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def official_biformer_forward(sd, x, cfg):
    """BiFormer_mm.forward_features: downsample_layers[i] -> stages[i] -> extra_norms[i] (LayerNorm2d)."""
    d, outs = cfg["embed_dims"], []
    x = F.gelu(_bn(F.conv2d(x, sd["downsample_layers.0.0.weight"], sd["downsample_layers.0.0.bias"], stride=2,
                            padding=1), sd, "downsample_layers.0.1"))
    x = _bn(F.conv2d(x, sd["downsample_layers.0.3.weight"], sd["downsample_layers.0.3.bias"], stride=2, padding=1),
            sd, "downsample_layers.0.4")
    for i, depth in enumerate(cfg["depths"]):
        if i:
            x = _bn(F.conv2d(x, sd[f"downsample_layers.{i}.0.weight"], sd[f"downsample_layers.{i}.0.bias"], stride=2,
                             padding=1), sd, f"downsample_layers.{i}.1")
        c = d[i]
        for j in range(depth):
            p = f"stages.{i}.{j}"
            x = x + F.conv2d(x, sd[f"{p}.pos_embed.weight"], sd[f"{p}.pos_embed.bias"], padding=1, groups=c)
            t = x.permute(0, 2, 3, 1)
            if i < 3:  # BiLevelRoutingAttention(auto_pad=True), as re-stated in test_biformer.official_bra
                mod = BiLevelRoutingAttention(c, c // cfg["head_dim"], cfg["n_win"], (1, 4, 16)[i], side_dwconv=5)
                mod.load_state_dict({"qkv.weight": sd[f"{p}.attn.qkv.qkv.weight"], "qkv.bias": sd[f"{p}.attn.qkv.qkv.bias"],
                                     "wo.weight": sd[f"{p}.attn.wo.weight"], "wo.bias": sd[f"{p}.attn.wo.bias"],
                                     "lepe.weight": sd[f"{p}.attn.lepe.weight"], "lepe.bias": sd[f"{p}.attn.lepe.bias"]})
                a = official_bra(mod, _ln(t, sd, f"{p}.norm1", 1e-6))
            else:  # AttentionLePE (8 heads)
                mod = AttentionLePE(c, 8)
                mod.load_state_dict({"qkv.weight": sd[f"{p}.attn.qkv.weight"], "proj.weight": sd[f"{p}.attn.proj.weight"],
                                     "proj.bias": sd[f"{p}.attn.proj.bias"], "lepe.weight": sd[f"{p}.attn.lepe.weight"],
                                     "lepe.bias": sd[f"{p}.attn.lepe.bias"]})
                a = official_attention_lepe(mod, _ln(t, sd, f"{p}.norm1", 1e-6))
            t = t + a
            t = t + _mlp(_ln(t, sd, f"{p}.norm2", 1e-6), sd, f"{p}.mlp", ("0", "3"))
            x = t.permute(0, 3, 1, 2)
        y = x.permute(0, 2, 3, 1)
        outs.append(_ln(y, sd, f"extra_norms.{i}", 1e-6).permute(0, 3, 1, 2))
    return outs


POOLFORMER_CFG = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))


def official_poolformer_state(cfg, fork_last3=False):
    """models/poolformer.py `PoolFormer(fork_feat=True)`: patch_embed.proj, network.{2i} = stage i's
    PoolFormerBlocks (norm1, norm2: GroupNorm(1, C); mlp.fc1/fc2: 1x1 convs; layer_scale_1/2),
    network.{2i+1}.proj = 3x3/2 downsample, out norms norm{0,2,4,6} (norm0 an Identity with FORK_LAST3)."""
    sd, dims = _Official(4), cfg["dims"]
    sd.t("patch_embed.proj.weight", dims[0], 3, 7, 7)
    sd.t("patch_embed.proj.bias", dims[0])
    for i, (depth, c) in enumerate(zip(cfg["depths"], dims)):
        for j in range(depth):
            p = f"network.{2 * i}.{j}"
            sd.ln(f"{p}.norm1", c)
            sd.ln(f"{p}.norm2", c)
            sd.t(f"{p}.mlp.fc1.weight", 4 * c, c, 1, 1)
            sd.t(f"{p}.mlp.fc1.bias", 4 * c)
            sd.t(f"{p}.mlp.fc2.weight", c, 4 * c, 1, 1)
            sd.t(f"{p}.mlp.fc2.bias", c)
            sd.t(f"{p}.layer_scale_1", c, kind="norm")
            sd.t(f"{p}.layer_scale_2", c, kind="norm")
        if i + 1 < len(dims):
            sd.t(f"network.{2 * i + 1}.proj.weight", dims[i + 1], c, 3, 3)
            sd.t(f"network.{2 * i + 1}.proj.bias", dims[i + 1])
        if i or not fork_last3:
            sd.ln(f"norm{2 * i}", c)
    return sd


def official_poolformer_forward(sd, x, cfg):
    """PoolFormer.forward_tokens with fork_feat: every network entry in turn, norm{idx} on idx 0/2/4/6."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4, padding=2)
    outs = []
    for i, depth in enumerate(cfg["depths"]):
        if i:
            x = F.conv2d(x, sd[f"network.{2 * i - 1}.proj.weight"], sd[f"network.{2 * i - 1}.proj.bias"], stride=2,
                         padding=1)
        for j in range(depth):
            p = f"network.{2 * i}.{j}"
            y = F.group_norm(x, 1, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], 1e-5)
            y = F.avg_pool2d(y, 3, 1, 1, count_include_pad=False) - y
            x = x + sd[f"{p}.layer_scale_1"][:, None, None] * y
            y = F.group_norm(x, 1, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], 1e-5)
            y = F.conv2d(F.gelu(F.conv2d(y, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                         sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
            x = x + sd[f"{p}.layer_scale_2"][:, None, None] * y
        norm = f"norm{2 * i}"
        outs.append(F.group_norm(x, 1, sd[f"{norm}.weight"], sd[f"{norm}.bias"], 1e-5) if f"{norm}.weight" in sd else x)
    return outs


# ---- the cases: (zoo model + kwargs, official state, official forward, official file name) ------------
def _nat_case():
    heads = NAT_CFG["num_heads"]
    sd = official_nat_state(NAT_CFG, layer_scale=True, heads_per_stage=heads)
    kw = dict(NAT_CFG, layer_scale=1e-5)
    return "vitzoo_dinat_mini", kw, sd, lambda x: official_nat_forward(sd, x, NAT_CFG, True), "maskrcnn_dinat_mini.pth"


def _dinat_s_case():
    sd = official_dinat_s_state(NAT_CFG, NAT_CFG["num_heads"])
    kw = dict(NAT_CFG, mlp_ratio=4.0)
    cfg = dict(NAT_CFG)
    return "vitzoo_dinat_s_tiny", kw, sd, lambda x: official_dinat_s_forward(sd, x, cfg), "maskrcnn_dinat_s_tiny.pth"


def _swin_case():
    sd = official_swin_state(SWIN_CFG)
    return ("vitzoo_swin_tiny_patch4_window7_224", dict(SWIN_CFG), sd, lambda x: official_swin_forward(sd, x, SWIN_CFG),
            "mask_rcnn_swin_tiny_patch4_window7_1x.pth")


def _biformer_case():
    sd = official_biformer_state(BIFORMER_CFG)
    return "vitzoo_biformer_small", dict(BIFORMER_CFG), sd, lambda x: official_biformer_forward(sd, x, BIFORMER_CFG), \
        "epoch_12.pth"


def _poolformer_case(fork_last3=False):
    sd = official_poolformer_state(POOLFORMER_CFG, fork_last3)
    file_name = "retinanet_poolformer_s12_fpn_1x_coco.pth" if fork_last3 else "mask_rcnn_poolformer_s12_fpn_1x_coco.pth"
    return ("vitzoo_poolformer_s12", dict(POOLFORMER_CFG), sd,
            lambda x: official_poolformer_forward(sd, x, POOLFORMER_CFG), file_name)


CASES = {"nat": _nat_case, "dinat_s": _dinat_s_case, "swin": _swin_case, "biformer": _biformer_case,
         "poolformer": _poolformer_case, "poolformer_retinanet": lambda: _poolformer_case(fork_last3=True)}
FILTERS = {"nat": nat_mod, "dinat_s": dinat_s_mod, "swin": swin_mod, "biformer": bf_mod, "poolformer": metaformer_mod,
           "poolformer_retinanet": metaformer_mod}


def _nchw(feats, name):
    return [f.permute(0, 3, 1, 2) for f in feats] if "swin" in name else list(feats)


@pytest.mark.parametrize("case", list(CASES))
def test_official_dense_checkpoint_loads_and_gives_the_official_maps(case, tmp_path):
    name, kw, sd, official_forward, file_name = CASES[case]()
    path = tmp_path / file_name
    torch.save(sd.mmdet_checkpoint(), path)
    x = torch.randn(2, 3, 75, 101, generator=torch.Generator().manual_seed(3))  # odd: every map padded somewhere
    with torch.no_grad():
        want = official_forward(x)
    # 1) timm's pretrained path with a local file
    m = timm.create_model(name, features_only=True, feature_norms=True, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)), **kw).eval()
    with torch.no_grad():
        got = _nchw(m(x), name)
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=5e-5, rtol=1e-4)
    # 2) load_state_dict of the features_only model with the detector's state dict (strict)
    m2 = timm.create_model(name, features_only=True, feature_norms=True, **kw).eval()
    m2.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    # 3) the family's checkpoint_filter_fn on the whole file, into the wrapped model (strict)
    m3 = timm.create_model(name, features_only=True, feature_norms=True, **kw).eval()
    filter_fn = FILTERS[case].checkpoint_filter_fn
    m3.model.load_state_dict(filter_fn(torch.load(path, weights_only=True), m3.model), strict=True)
    with torch.no_grad():
        for other in (m2, m3):
            for g, h in zip(got, _nchw(other(x), name)):
                assert torch.equal(g, h)


@pytest.mark.parametrize("case", list(CASES))
def test_dense_checkpoint_without_feature_norms_is_a_clear_error(case):
    name, kw, sd, _, _ = CASES[case]()
    m = timm.create_model(name, features_only=True, **kw)
    with pytest.raises(ValueError, match="feature_norms=True"):
        m.load_state_dict(sd.mmdet_checkpoint()["state_dict"])


def test_feature_norms_follow_out_indices_and_pruning():
    m = timm.create_model("vitzoo_nat_mini", features_only=True, feature_norms=True, out_indices=(1, 2),
                          depths=(1, 1, 1, 1)).eval()
    assert len(m.model.feature_norms) == 3 and len(m.model.stages) == 3
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = m(x)
        raw = m.model.forward_intermediates(x, indices=[1, 2], output_fmt="NHWC", intermediates_only=True)
    assert [f.shape[1] for f in feats] == [128, 256]
    torch.testing.assert_close(feats[1], raw[1].permute(0, 3, 1, 2))  # forward_intermediates applies the norm too
    plain = timm.create_model("vitzoo_nat_mini", features_only=True, out_indices=(1, 2), depths=(1, 1, 1, 1)).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if "feature_norms" not in k})
    with torch.no_grad():
        stage = plain(x)[1]
    ln = m.model.feature_norms[2]
    torch.testing.assert_close(feats[1], ln(stage.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


# ---- Swin: the built rule at img_size, the dense rule elsewhere; timm's feature contract --------------
def _swin_pair(**kw):
    t = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, **kw).eval()
    z = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, **kw).eval()
    return t, z


def test_swin_features_only_matches_timms_contract():
    t, z = _swin_pair(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), out_indices=(1, 3))
    assert z.output_fmt == t.output_fmt == "NHWC"
    assert z.feature_info.info == t.feature_info.info
    assert z.feature_info.channels() == t.feature_info.channels()
    assert z.feature_info.reduction() == t.feature_info.reduction()
    assert z.model.get_submodule("layers.1") is z.model.stages[1]
    missing, unexpected = z.load_state_dict(t.state_dict(), strict=True)  # timm's FeatureListNet keys
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(t(x), z(x)):
            assert a.shape == b.shape and a.shape[-1] in (32, 128)
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    tg = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, feature_cls="getter",
                           embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    zg = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, feature_cls="getter",
                           embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    zg.load_state_dict(tg.state_dict(), strict=True)  # the getter's `model.layers.i` keys
    with torch.no_grad():
        for a, b in zip(tg.eval()(x), zg.eval()(x)):
            assert a.shape[1] == b.shape[1]  # NCHW
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("timm_kw,zoo_kw,size", [
    (dict(img_size=(256, 320)), dict(img_size=(256, 320)), (256, 320)),
    (dict(strict_img_size=False), dict(dynamic_img_size=True), (256, 320)),
])
def test_swin_feature_values_equal_timms_on_timms_weights_non_square(timm_kw, zoo_kw, size):
    small = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    t = timm.create_model("swin_tiny_patch4_window7_224", **small, **timm_kw).eval()
    z = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, **small, **zoo_kw).eval()
    z.model.load_state_dict(swin_mod.checkpoint_filter_fn(t.state_dict(), z.model), strict=False)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        want = t.forward_intermediates(x, intermediates_only=True)
        got = z(x)
    for w, g in zip(want, got):
        torch.testing.assert_close(g.permute(0, 3, 1, 2), w, atol=1e-4, rtol=0)


def test_swin_dense_rule_equals_built_rule_where_nothing_is_padded():
    """At 448x672 every map is a multiple of the window and larger than it: the 224 model's dense rule
    gives what timm's model built for 448x672 gives (no padding, no clamped window, every shift)."""
    small = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    z = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", features_only=True, **small).eval()
    t = timm.create_model("swin_tiny_patch4_window7_224", img_size=(448, 672), **small).eval()
    z.model.load_state_dict(swin_mod.checkpoint_filter_fn(t.state_dict(), z.model), strict=False)
    x = torch.randn(1, 3, 448, 672)
    with torch.no_grad():
        got = z(x)
        assert all(m.dense_rule for m in z.model.modules() if hasattr(m, "dense_rule"))
        want = t.forward_intermediates(x, intermediates_only=True)
    for w, g in zip(want, got):
        torch.testing.assert_close(g.permute(0, 3, 1, 2), w, atol=1e-4, rtol=0)


def test_swin_rule_switches_back_at_the_built_size():
    small = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    z = timm.create_model("vitzoo_swin_tiny_patch4_window7_224", **small).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a = z(x)
        z(torch.randn(1, 3, 250, 333))
        assert z.stages[3].blocks[1].token_mixer.dense_rule
        b = z(x)
    assert not z.stages[3].blocks[1].token_mixer.dense_rule
    assert z.stages[3].blocks[1].token_mixer.shift_size == (0, 0)  # clamped at 224 (7x7 map), as timm
    assert z.stages[3].blocks[1].token_mixer.dense_shift_size == (3, 3)  # the official dense backbone's
    assert torch.equal(a, b)


# ---- the fused kernels take the padded maps (Triton interpreter, child process) -----------------------
@pytest.mark.skipif(not IS_CHILD, reason="runs inside test_fused_kernels_take_padded_maps_under_interpreter")
def test_interp_child_dense_cases(monkeypatch):
    """Each mixer on a map it must pad, with VITZOO_KERNELS=triton (no fallback possible): the Triton
    forward runs on the padded map and equals the reference path."""
    import vitzoo.kernels._neighborhood_triton as nt
    import vitzoo.kernels._routing_triton as rt
    import vitzoo.kernels._window_triton as wt
    from vitzoo.layers.neighborhood_attention import NeighborhoodAttention2D
    from vitzoo.layers.window_attention import ShiftedWindowAttention

    calls = []

    def spy(mod, fn_name):
        fn = getattr(mod, fn_name)

        def wrapped(*args, **kwargs):
            calls.append((fn_name, tuple(args[0].shape), args[4] if fn_name == "window_triton_forward" else None))
            return fn(*args, **kwargs)
        monkeypatch.setattr(mod, fn_name, wrapped)

    spy(nt, "na2d_triton_forward")
    spy(wt, "window_triton_forward")
    spy(rt, "routed_triton_forward")
    torch.manual_seed(0)
    na = NeighborhoodAttention2D(16, 2, kernel_size=3, dilation=2).eval()     # 4x5 map -> padded to 6x6
    swa = ShiftedWindowAttention(16, 2, window_size=4, shift_size=0, dense_shift_size=2).eval()
    swa.dense_rule = True                                                   # 5x6 map -> padded to 8x8, rolled
    bra = BiLevelRoutingAttention(16, 1, n_win=3, topk=2, side_dwconv=3).eval()  # 5x7 -> padded to 6x9
    cases = [(na, torch.randn(1, 4, 5, 16)), (swa, torch.randn(1, 5, 6, 16)), (bra, torch.randn(1, 5, 7, 16))]
    for mod, x in cases:
        with torch.no_grad():
            fused = mod(x)
            monkeypatch.setenv("VITZOO_KERNELS", "reference")
            ref = mod(x)
            monkeypatch.setenv("VITZOO_KERNELS", "triton")
        torch.testing.assert_close(fused, ref, atol=2e-5, rtol=1e-4)
    assert calls == [("na2d_triton_forward", (1, 6, 6, 2, 8), None),
                     ("window_triton_forward", (1, 8, 8, 3, 2, 8), [8, 8]),
                     ("routed_triton_forward", (1, 6, 9, 1, 16), None)], calls
    print("DENSE_INTERP_OK")


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.skipif(IS_CHILD, reason="parent test")
def test_fused_kernels_take_padded_maps_under_interpreter():
    out = run_interpreted(__file__, "test_interp_child_dense_cases", "VITZOO_DENSE_TEST_CHILD", timeout=900)
    assert "DENSE_INTERP_OK" in out


def test_feature_norms_only_where_an_official_dense_backbone_has_them():
    """PoolFormer v1 has sail-sg's dense backbone (GroupNorm per output); v2 / ConvFormer / CAFormer none."""
    for name in ("vitzoo_poolformerv2_s12", "vitzoo_caformer_s18"):
        with pytest.raises(ValueError, match="only PoolFormer v1"):
            timm.create_model(name, features_only=True, feature_norms=True, depths=(1, 1, 1, 1))
    m = timm.create_model("vitzoo_poolformer_s12", features_only=True, feature_norms=True, out_indices=(1, 3),
                          **POOLFORMER_CFG).eval()
    assert [type(n).__name__ for n in m.model.feature_norms] == ["GroupNorm1"] * 4
    assert m.feature_info.channels() == [24, 40]
