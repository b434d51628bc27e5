"""EViT: exact DeiT at keep rate 1, the official token reorganisation rules, FLOPs, schedule, API."""
import math

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import vitzoo  # noqa: F401
from vitzoo.layers.attention import Attention
from vitzoo.layers.metaformer_block import MetaFormerBlock
from vitzoo.layers.token_reorg import ReorgViTBlock, TokenReorg, keep_rate_at
from vitzoo.layers.vit_block import vit_block
from vitzoo.models.evit import EViT, checkpoint_filter_fn
from zoo_cases import randomize_


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_evit(**kw):
    """A cheap EViT on a 14x14 grid (196 image tokens, as DeiT at 224) with a narrow width."""
    args = dict(img_size=112, patch_size=8, embed_dim=32, depth=12, num_heads=2, num_classes=5)
    return EViT(**dict(args, **kw)).eval()


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_small_patch16_224"])
def test_keep_rate_one_is_timm_deit(name):
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    ours = timm.create_model(f"vitzoo_evit_{name}", keep_rate=1.0, device="meta")
    ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours), strict=True, assign=True)
    ours.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (ref(x) - ours(x)).abs().max().item()
    assert diff <= 1e-4


def test_filter_takes_official_checkpoint_layout():
    ref = timm.create_model("deit_tiny_patch16_224", device="meta")
    ours = timm.create_model("vitzoo_evit_deit_tiny_patch16_224", device="meta")
    sd = checkpoint_filter_fn({"model": ref.state_dict()}, ours)  # official EViT/DeiT checkpoints wrap in 'model'
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in ours.state_dict().items()}


def _official_reference(model: EViT, x: torch.Tensor, locs, keep_rate: float, fuse: bool) -> torch.Tensor:
    """The official EViT forward (youweiliang/evit evit.py), written out independently of our layer."""
    t = model.patch_embed(x)
    t = torch.cat((model.cls_token.expand(t.shape[0], -1, -1), t), dim=1) + model.pos_embed
    for i, blk in enumerate(model.blocks):
        B, N, C = t.shape
        attn_mod = blk.token_mixer
        h = blk.norm1(t)
        qkv = attn_mod.qkv(h).reshape(B, N, 3, attn_mod.num_heads, C // attn_mod.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * attn_mod.scale).softmax(dim=-1)
        out = attn_mod.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        t = t + out
        left = math.ceil(keep_rate * (N - 1))
        if i in locs and keep_rate < 1 and left < N - 1:
            cls_attn = attn[:, :, 0, 1:].mean(dim=1)
            _, idx = torch.topk(cls_attn, left, dim=1, largest=True, sorted=True)
            non_cls = t[:, 1:]
            kept = torch.gather(non_cls, 1, idx.unsqueeze(-1).expand(-1, -1, C))
            if fuse:
                mask = torch.ones(B, N - 1, dtype=torch.bool)
                mask[torch.arange(B).unsqueeze(1), idx] = False
                compl = torch.stack([torch.nonzero(m).flatten() for m in mask])  # ascending, as complement_idx
                others = torch.gather(non_cls, 1, compl.unsqueeze(-1).expand(-1, -1, C))
                w = torch.gather(cls_attn, 1, compl)
                extra = (others * w.unsqueeze(-1)).sum(dim=1, keepdim=True)
                t = torch.cat([t[:, :1], kept, extra], dim=1)
            else:
                t = torch.cat([t[:, :1], kept], dim=1)
        t = t + blk.mlp(blk.norm2(t))
    return model.head(model.norm(t))


@pytest.mark.parametrize("keep_rate,fuse", [(0.7, True), (0.5, False), (0.9, True)])
def test_reorganisation_matches_official_rules(keep_rate, fuse):
    torch.manual_seed(1)
    model = _tiny_evit(keep_rate=keep_rate, fuse_token=fuse)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = _official_reference(model, x, (3, 6, 9), keep_rate, fuse)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_token_counts_follow_ceil_rule_and_intermediates_are_dense_maps():
    model = _tiny_evit(keep_rate=0.7, fuse_token=True)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[2, 3, 6, 9])
        tokens = model.forward_intermediates(x, indices=[2, 3, 6, 9], output_fmt="NLC", intermediates_only=True)
    # 196 -> ceil(.7*196)=138 kept + 1 fused = 139 -> 98 + 1 = 99 -> 70 + 1 = 71 image tokens
    assert [t.shape for t in inter] == [(1, 32, 14, 14)] * 4  # NCHW: dense maps, dropped cells filled
    assert tokens[0].shape == (1, 196, 32)
    assert [t.shape[1] for t in tokens[1:]] == [139, 99, 71]  # NLC: the reorganised sequences
    assert final.shape == (1, 72, 32)
    model = _tiny_evit(keep_rate=0.7, fuse_token=False)
    with torch.no_grad():
        assert model.forward_features(x).shape[1] == 1 + math.ceil(0.7 * math.ceil(0.7 * math.ceil(0.7 * 196)))


def test_kept_tokens_are_the_most_attended_in_descending_order():
    reorg = TokenReorg(keep_rate=0.5, fuse_token=True)
    x = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 2)  # token i has value i; token 0 is CLS
    attn = torch.tensor([[0.1, 0.1, 0.4, 0.15, 0.25]])
    out = reorg(x, attn)
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 2.0, 4.0, 0.1 * 1 + 0.15 * 3])


def test_flops_fall_with_keep_rate_as_the_official_table():
    model = timm.create_model("vitzoo_evit_deit_small_patch16_224", device="meta").eval()
    x = torch.empty(1, 3, 224, 224, device="meta")
    gmacs = {}
    for rate in (1.0, 0.9, 0.7, 0.5):
        model.set_keep_rate(rate)
        with FlopCounterMode(display=False) as counter:
            model(x)
        gmacs[rate] = counter.get_total_flops() / 2e9
    assert gmacs[1.0] > gmacs[0.9] > gmacs[0.7] > gmacs[0.5]
    assert 0.45 <= gmacs[0.5] / gmacs[1.0] <= 0.55
    official = {1.0: 4.6, 0.9: 4.0, 0.7: 3.0, 0.5: 2.3}  # EViT paper / README, DeiT-S GMACs
    for rate, value in official.items():
        assert gmacs[rate] == pytest.approx(value, abs=0.06)


def _official_adjust_keep_rate(iters, epoch, warmup_epochs, total_epochs, iters_per_epoch, base_keep_rate):
    """helpers.adjust_keep_rate of the official repo (per-iteration cosine)."""
    if epoch < warmup_epochs:
        return 1
    if epoch >= total_epochs:
        return base_keep_rate
    total_iters = iters_per_epoch * (total_epochs - warmup_epochs)
    iters = iters - iters_per_epoch * warmup_epochs
    return base_keep_rate + (1 - base_keep_rate) * (math.cos(iters / total_iters * math.pi) + 1) * 0.5


def test_keep_rate_schedule_is_the_official_cosine():
    ipe = 7
    for epoch in (0, 9, 10, 11, 60, 109, 110, 200):
        for step in (0, 3, 6):
            expected = _official_adjust_keep_rate(epoch * ipe + step, epoch, 10, 110, ipe, 0.7)
            assert keep_rate_at(epoch + step / ipe, 0.7) == pytest.approx(expected)
    assert keep_rate_at(60, 0.5) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="keep_rate"):
        keep_rate_at(0, 1.5)


def test_set_keep_rate_and_target():
    model = _tiny_evit(keep_rate=0.5)
    x = torch.randn(1, 3, 112, 112)
    assert model.target_keep_rate == 0.5
    model.set_keep_rate(1.0)
    assert model.forward_features(x).shape[1] == 197
    model.set_keep_rate(None)
    assert model.forward_features(x).shape[1] == 1 + 27  # 196 -> 98+1 -> 50+1 -> 26+1
    with pytest.raises(ValueError, match="keep_rate"):
        model.set_keep_rate(0.0)
    with pytest.raises(ValueError, match="keep_rate"):
        _tiny_evit(keep_rate=1.2)
    with pytest.raises(ValueError, match="token_reorg_locs"):
        _tiny_evit(token_reorg_locs=(3, 12))


def test_official_tag_sets_keep_rate_and_fusion():
    model = timm.create_model("vitzoo_evit_deit_small_patch16_224.evit_nofuse_kr50_in1k", device="meta")
    assert model.target_keep_rate == 0.5 and not model.fuse_token
    cfg = model.pretrained_cfg
    assert not cfg.get("url") and not cfg.get("hf_hub_id"), "Drive pages are not downloadable files"
    assert "drive.google.com" in cfg["notes"][0]
    notes = {timm.models.get_pretrained_cfg(f"vitzoo_evit_deit_small_patch16_224.evit_{f}_kr{r}_in1k").notes[0]
             for f in ("fuse", "nofuse") for r in (50, 60, 70, 80, 90)}
    assert len(notes) == 10, "each official tag points at its own file"
    with pytest.raises(ValueError, match="no direct download"):
        timm.create_model("vitzoo_evit_deit_small_patch16_224.evit_fuse_kr70_in1k", pretrained=True)
    model = timm.create_model("vitzoo_evit_deit_small_patch16_224", device="meta")
    assert model.target_keep_rate == 0.7 and model.fuse_token
    assert model.token_reorg_locs == (3, 6, 9)
    assert model.pretrained_cfg["tag"] == "deit_fb_in1k"
    assert model.pretrained_cfg["hf_hub_id"] == "timm/deit_small_patch16_224.fb_in1k"


def test_default_tag_with_weights_is_exactly_deit(tmp_path):
    deit = randomize_(timm.create_model("deit_tiny_patch16_224")).eval()
    path = tmp_path / "deit.pth"
    torch.save(deit.state_dict(), path)
    model = timm.create_model("vitzoo_evit_deit_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert model.target_keep_rate == 1.0
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), deit(x), rtol=1e-4, atol=1e-4)
    tuned = timm.create_model("vitzoo_evit_deit_tiny_patch16_224", pretrained=True, keep_rate=0.7,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert tuned.target_keep_rate == 0.7  # EViT's recipe: fine-tune DeiT weights at 0.7


def test_reorg_is_a_switch_on_the_shared_vit_block():
    torch.manual_seed(0)
    plain = vit_block(16, 2)
    reorg = vit_block(16, 2, token_reorg=TokenReorg(0.5, fuse_token=False))
    assert isinstance(reorg, ReorgViTBlock) and type(plain) is MetaFormerBlock
    assert plain.state_dict().keys() == reorg.state_dict().keys()  # no new parameters
    reorg.load_state_dict(plain.state_dict())
    x = torch.randn(2, 11, 16)
    assert reorg(x).shape == (2, 6, 16)
    reorg.token_reorg.keep_rate = 1.0
    torch.testing.assert_close(reorg(x), plain(x))
    with pytest.raises(TypeError, match="forward_with_cls_attn"):
        ReorgViTBlock(16, nn.Linear(16, 16), None, token_reorg=TokenReorg(0.5))
    with pytest.raises(ValueError, match="cls_attn"):
        TokenReorg(0.5)(x, torch.rand(2, 10))
    assert isinstance(reorg.token_mixer, Attention)


def test_training_backward_and_grad_checkpointing():
    model = _tiny_evit(keep_rate=0.5, depth=4, token_reorg_locs=(1, 2)).train()
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 112, 112)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dynamic_img_size_and_pad():
    """timm ViT's dynamic_img_size + dynamic_img_pad (on by default): any size, the image padded to a
    multiple of the patch, the position embedding resampled; off, only the built size is taken."""
    torch.manual_seed(0)
    model = _tiny_evit(keep_rate=1.0)
    x = torch.randn(1, 3, 90, 61)
    padded = torch.nn.functional.pad(x, (0, 64 - 61, 0, 96 - 90))
    with torch.no_grad():
        inter = model.forward_intermediates(x, indices=[11], intermediates_only=True)
        assert inter[0].shape == (1, 32, 12, 8)
        torch.testing.assert_close(model(x), model(padded), rtol=0, atol=0)
        assert _tiny_evit()(x).shape == (1, 5)  # with token dropping too
    fixed = _tiny_evit(dynamic_img_size=False)
    with pytest.raises(ValueError, match="112x112"):
        fixed(torch.randn(1, 3, 96, 96))
    no_pad = _tiny_evit(dynamic_img_pad=False)
    assert no_pad(torch.randn(1, 3, 96, 64)).shape == (1, 5)
    with pytest.raises(ValueError, match="divisible by 8"):
        no_pad(x)


def test_bad_input_and_classifier_api():
    model = _tiny_evit()
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 112, 112)).shape == (1, 32)
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}
