"""SHViT S1..S4: timm parity, official layout, fuse, input sizes, features."""
import copy
import re

import pytest
import timm
import torch
import torch.nn as nn
from zoo_cases import max_diff, randomize_
from zoo_cases import timm_and_ours as _timm_and_ours

import vitzoo  # noqa: F401  (registers the zoo)
from vitzoo.layers.conv_bn import ConvBN
from vitzoo.layers.single_head_attention import SingleHeadAttention
from vitzoo.models.single_head_vit import SingleHeadBlock, checkpoint_filter_fn

VARIANTS = [f"shvit_s{i}" for i in range(1, 5)]
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def timm_and_ours(variant: str, **kwargs):
    return _timm_and_ours(variant, checkpoint_filter_fn, **kwargs)


@pytest.fixture(scope="module")
def s1_pair():
    torch.manual_seed(0)
    return timm_and_ours("shvit_s1")


def test_param_counts_match_timm_every_variant():
    for v in VARIANTS:
        ref = timm.create_model(v, device="meta")
        ours = timm.create_model(f"vitzoo_{v}", device="meta")
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()), v
        assert all(t.device.type == "meta" for t in list(ours.parameters()) + list(ours.buffers()))


def test_parity_s1_logits_features_intermediates(s1_pair):
    ref, ours = s1_pair
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feat_ref, inter_ref = ref.forward_intermediates(x)
        feat, inter = ours.forward_intermediates(x)
        assert max_diff(feat, ours.forward_features(x)) <= TOL
        assert max_diff(feat, feat_ref) <= TOL
        assert len(inter) == 3 and all(max_diff(a, b) <= TOL for a, b in zip(inter, inter_ref))
        assert max_diff(ours.forward_head(feat), ref.forward_head(feat_ref)) <= TOL
        assert max_diff(ours.forward_head(feat, pre_logits=True), ref.forward_head(feat_ref, pre_logits=True)) <= TOL
        x = torch.randn(1, 3, 96, 160)  # any size: attention is global
        assert max_diff(ours(x), ref(x)) <= TOL


def test_parity_s4_at_its_256_input():
    ref, ours = timm_and_ours("shvit_s4")
    assert ours.pretrained_cfg["input_size"] == (3, 256, 256)
    with torch.no_grad():
        x = torch.randn(1, 3, 256, 256)
        assert max_diff(ours(x), ref(x)) <= TOL


def timm_to_official(sd: dict) -> dict:
    """The ysj9909/SHViT checkpoint layout, built from a timm state dict.

    Official names: `patch_embed.{0,2,4,6}.c` (as timm), `blocks1..3` with each later stage's
    downsample as its first three entries (`0.0`/`0.1`: DW / FFN residuals, `1`: PatchMerging,
    `2.0`/`2.1`: DW / FFN residuals), blocks `conv.m`, `mixer.m`, `ffn.m`, head `bn`/`l`, under a
    'model' key. 1x1 conv weights may be stored Linear-shaped [out, in]: we store the qkv and FFN
    ones that way, and the filter must restore [out, in, 1, 1].
    """
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^stages\.0\.blocks\.(\d+)\.", r"blocks1.\1.", k)
        k = re.sub(r"^stages\.(\d)\.downsample\.(\d)\.",
                   lambda m: f"blocks{int(m[1]) + 1}." + ["0.0", "0.1", "1", "2.0", "2.1"][int(m[2])] + ".", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"blocks{int(m[1]) + 1}.{int(m[2]) + 3}.", k)
        if re.search(r"(qkv|pw\d)\.c\.weight$", k):
            v = v[:, :, 0, 0]
        out[k] = v
    return {"model": out}


def test_official_layout_loads(s1_pair):
    ref, _ = s1_pair
    official = timm_to_official(ref.state_dict())
    assert official["model"]["blocks2.4.mixer.m.qkv.c.weight"].ndim == 2
    assert "blocks3.1.se.fc1.weight" in official["model"] and "blocks1.1.ffn.m.pw2.bn.weight" in official["model"]
    fresh = timm.create_model("vitzoo_shvit_s1").eval()
    fresh.load_state_dict(checkpoint_filter_fn(official, fresh), strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert max_diff(fresh(x), ref(x)) <= TOL


def test_official_distillation_head(s1_pair):
    """Official `head_dist` (BN_Linear): a distillation=True model loads it (eval averages), others drop it, warned."""
    ref, _ = s1_pair
    official = timm_to_official(ref.state_dict())
    dist = randomize_(nn.Sequential(nn.BatchNorm1d(320), nn.Linear(320, 1000)), seed=7)
    official["model"].update({"head_dist.bn." + k[2:]: v for k, v in dist.state_dict().items() if k.startswith("0.")})
    official["model"].update({"head_dist.l." + k[2:]: v for k, v in dist.state_dict().items() if k.startswith("1.")})
    plain = timm.create_model("vitzoo_shvit_s1")
    with pytest.warns(UserWarning, match="distillation head"):
        plain.load_state_dict(checkpoint_filter_fn(official, plain), strict=True)

    m = timm.create_model("vitzoo_shvit_s1", distillation=True).eval()
    m.load_state_dict(checkpoint_filter_fn(official, m), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feat = ref.forward_features(x)
        expected = (ref.forward_head(feat) + dist.eval()(ref.forward_head(feat, pre_logits=True))) / 2
        assert max_diff(m(x), expected) <= TOL
        fused = copy.deepcopy(m).fuse()
        assert fused.head.dist is None and max_diff(fused(x), expected) <= TOL
    m.train()
    m.set_distilled_training(True)
    out = m(torch.randn(2, 3, 64, 64))
    assert isinstance(out, tuple) and len(out) == 2


def test_model_fuse_keeps_outputs(s1_pair):
    _, ours = s1_pair
    fused = copy.deepcopy(ours).fuse()
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, ConvBN)) for m in fused.modules())
    assert isinstance(fused.stages[1].blocks[0].local, nn.Conv2d)  # 's' block: x + dw(x) is one conv
    assert not isinstance(fused.stages[0].blocks[0].local, nn.Conv2d)  # 'i' block keeps its FFN
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert max_diff(fused(x), ours(x)) <= TOL


def test_block_structure_is_metaformer():
    """'i' blocks: one MetaFormer block (DW mixer + FFN); 's' blocks: DW residual, then MetaFormer(SHSA, FFN)."""
    m = timm.create_model("vitzoo_shvit_s1", device="meta")
    i_block, s_block = m.stages[0].blocks[0], m.stages[1].blocks[0]
    assert i_block.block_type == "i" and isinstance(i_block.attn, nn.Identity) and i_block.local.has_mlp
    assert isinstance(s_block.attn.token_mixer, SingleHeadAttention) and not s_block.local.has_mlp
    with pytest.raises(ValueError, match="block type"):
        SingleHeadBlock(8, 4, 4, "x")


def test_features_only_via_timm_and_prune():
    f = timm.create_model("vitzoo_shvit_s1", features_only=True, out_indices=(1, 2)).eval()
    assert f.feature_info.channels() == [224, 320] and f.feature_info.reduction() == [32, 64]
    with torch.no_grad():
        outs = f(torch.randn(1, 3, 128, 128))
    assert [o.shape[1:] for o in outs] == [(224, 4, 4), (320, 2, 2)]
    m = timm.create_model("vitzoo_shvit_s1").eval()
    assert m.prune_intermediate_layers([0, 1], prune_head=False) == [0, 1]
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 224, 2, 2)


def test_input_errors_head_contract_and_train_step():
    m = timm.create_model("vitzoo_shvit_s1", num_classes=5, drop_path_rate=0.1)
    with pytest.raises(ValueError, match="at least 16x16"):
        m(torch.randn(2, 3, 64, 15))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        m(torch.randn(3, 64, 64))
    m.set_grad_checkpointing(True)
    m.train()
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval().reset_classifier(0)
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 320)
    assert m.get_classifier().__class__ is nn.Identity


def test_pretrained_path_through_timm_loader(s1_pair, tmp_path):
    """timm's own `pretrained=True` machinery (file overlay instead of the hub) runs our filter."""
    ref, _ = s1_pair
    path = tmp_path / "shvit_s1.pth"
    torch.save(ref.state_dict(), path)
    assert timm.models.get_pretrained_cfg("vitzoo_shvit_s1.in1k").hf_hub_id == "timm/shvit_s1.in1k"
    m = timm.create_model("vitzoo_shvit_s1", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert max_diff(m(x), ref(x)) <= TOL
