"""EViT token reorganisation switched on in zoo models: vanilla SpectFormer (mean-attention ranking,
no CLS token) and CrossViT's branches (CLS ranking). Off by default; keep rate 1 is exactly off."""
import math
import os
import sys

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import vitzoo  # noqa: F401
from vitzoo.layers.attention import Attention
from vitzoo.layers.token_reorg import ReorgViTBlock, TokenReorg
from vitzoo.layers.vit_block import vit_block
from vitzoo.models.cross_vit import CrossViT
from vitzoo.models.spectformer import SpectFormer

pytestmark = pytest.mark.usefixtures("one_thread")


def _spectformer(**kw) -> SpectFormer:
    """8x8 grid (64 tokens), 2 spectral + 4 attention blocks."""
    args = dict(img_size=64, patch_size=8, embed_dim=32, depth=6, num_heads=2, num_spectral_layers=2, num_classes=5)
    return SpectFormer(**dict(args, **kw)).eval()


def _crossvit(**kw) -> CrossViT:
    """Branch 0: 8x8 grid, 1 block per multi-scale block; branch 1: 6x6 grid, 3 blocks; 2 multi-scale blocks."""
    args = dict(img_size=48, img_scale=(1.0, 1.0), patch_size=(6, 8), embed_dim=(16, 32), depth=((1, 3, 0),) * 2,
                num_heads=(2, 2), mlp_ratio=(2.0, 2.0, 1.0), num_classes=5)
    return CrossViT(**dict(args, **kw)).eval()


def _reorg_blocks(model: nn.Module) -> list[ReorgViTBlock]:
    return [m for m in model.modules() if isinstance(m, ReorgViTBlock)]


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


# ---- the ranking for models without a CLS token ----------------------------------------------

def test_token_scores_modes_match_the_attention_map():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(2, 7, 16)
    q, k, _ = attn._qkv(x)
    amap = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, Nq, Nk]
    out_mean, mean_scores = attn.forward_with_token_scores(x, "mean")
    out_cls, cls_scores = attn.forward_with_cls_attn(x)
    torch.testing.assert_close(mean_scores, amap.mean(dim=(1, 2)))
    torch.testing.assert_close(cls_scores, amap[:, :, 0].mean(dim=1))
    torch.testing.assert_close(mean_scores.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(out_mean, attn(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_cls, out_mean)
    with pytest.raises(ValueError, match="mode"):
        attn.forward_with_token_scores(x, "max")


def test_mean_ranking_keeps_the_most_attended_and_carries_no_cls():
    reorg = TokenReorg(keep_rate=0.5, fuse_token=True, rank_by="mean")
    x = torch.arange(5.0).view(1, 5, 1).expand(1, 5, 2)  # token i has value i; no CLS token
    scores = torch.tensor([[0.3, 0.1, 0.25, 0.15, 0.2]])
    out = reorg(x, scores)  # ceil(0.5 * 5) = 3 kept, in descending score order, + 1 fused
    assert out[0, :, 0].tolist() == pytest.approx([0.0, 2.0, 4.0, 0.1 * 1 + 0.15 * 3])
    reorg.fuse_token = False
    assert reorg(x, scores)[0, :, 0].tolist() == pytest.approx([0.0, 2.0, 4.0])
    assert reorg.drops(5) and not TokenReorg(0.9, rank_by="mean").drops(5)  # ceil(0.9 * 5) = 5
    with pytest.raises(ValueError, match="rank_by"):
        TokenReorg(0.5, rank_by="max")
    with pytest.raises(ValueError, match="token scores"):
        reorg(x, scores[:, :4])
    with pytest.raises(TypeError, match="forward_with_token_scores"):
        ReorgViTBlock(16, nn.Linear(16, 16), None, token_reorg=TokenReorg(0.5, rank_by="mean"))


def test_mean_ranking_block_against_a_direct_computation():
    torch.manual_seed(0)
    blk = vit_block(16, 2, token_reorg=TokenReorg(0.6, fuse_token=True, rank_by="mean")).eval()
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        out = blk(x)
        # direct: attention residual, rank by column means of the head-averaged attention map, fuse, MLP
        mixer = blk.token_mixer
        h = blk.norm1(x)
        q, k, v = mixer._qkv(h)
        amap = ((q * mixer.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = x + mixer.proj((amap @ v).transpose(1, 2).reshape(2, 10, 16))
        score = amap.mean(dim=1).mean(dim=1)
        expected = []
        for b in range(2):
            order = sorted(range(10), key=lambda i: -score[b, i].item())
            keep, drop = order[:6], order[6:]
            fused = sum(score[b, i] * y[b, i] for i in drop)
            expected.append(torch.cat([y[b, keep], fused[None]]))
        expected = torch.stack(expected)
        expected = expected + blk.mlp(blk.norm2(expected))
    assert out.shape == (2, 7, 16)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


# ---- SpectFormer -----------------------------------------------------------------------------

def test_spectformer_default_is_off_and_keep_rate_one_is_exact():
    torch.manual_seed(0)
    off = _spectformer()
    assert off.token_reorg_locs == () and not _reorg_blocks(off)
    on = _spectformer(token_reorg_locs=(2, 4), keep_rate=1.0)
    assert len(_reorg_blocks(on)) == 2
    assert on.state_dict().keys() == off.state_dict().keys()  # no new parameters
    on.load_state_dict(off.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = off(x)
        assert torch.equal(on(x), ref)
        half = _spectformer(token_reorg_locs=(2, 4), keep_rate=0.5)
        half.load_state_dict(off.state_dict())
        assert not torch.allclose(half(x), ref)
        half.set_keep_rate(1.0)
        assert torch.equal(half(x), ref)
    meta = dict(device="meta")
    assert sum(p.numel() for p in timm.create_model("vitzoo_spectformer_ti", **meta).parameters()) == sum(
        p.numel() for p in timm.create_model("vitzoo_spectformer_ti", token_reorg_locs=(4, 7, 10), **meta).parameters())


def test_spectformer_token_counts_follow_ceil_rule():
    model = _spectformer(token_reorg_locs=(2, 4), keep_rate=0.5)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[1, 2, 3, 4])
        tokens = model.forward_intermediates(x, indices=[1, 2, 3, 4], output_fmt="NLC", intermediates_only=True)
        # 64 -> 32 kept + 1 fused = 33 -> ceil(0.5 * 33) = 17 + 1 = 18 (every token is ranked, none carried)
        assert [t.shape for t in inter] == [(1, 32, 8, 8)] * 4  # NCHW: dense maps once tokens were dropped too
        assert [t.shape[1] for t in tokens[1:]] == [33, 33, 18]  # NLC: the reorganised sequences
        assert final.shape == (1, 18, 32)
        assert model(x).shape == (1, 5)  # the GAP head takes any token count
        nofuse = _spectformer(token_reorg_locs=(2, 4), keep_rate=0.5, fuse_token=False)
        assert nofuse.forward_features(x).shape[1] == math.ceil(0.5 * math.ceil(0.5 * 64)) == 16
        model.set_keep_rate(None)
        assert model.forward_features(x).shape[1] == 18
        model.set_keep_rate(0.7)  # 64 -> 45 + 1 = 46 -> 33 + 1
        assert model.forward_features(x).shape[1] == 34


def test_spectformer_flops_fall_with_keep_rate():
    x = torch.empty(1, 3, 224, 224, device="meta")
    off = timm.create_model("vitzoo_spectformer_ti", device="meta").eval()
    model = timm.create_model("vitzoo_spectformer_ti", token_reorg_locs=(4, 7, 10), device="meta").eval()
    assert model.target_keep_rate == 0.7 and model.fuse_token
    flops = {}
    for rate in (1.0, 0.9, 0.7, 0.5):
        model.set_keep_rate(rate)
        flops[rate] = _flops(model, x)
    assert flops[1.0] == _flops(off, x)
    assert flops[1.0] > flops[0.9] > flops[0.7] > flops[0.5]
    assert flops[0.5] < 0.75 * flops[1.0]


def test_spectformer_backward_and_grad_checkpointing():
    model = _spectformer(token_reorg_locs=(3,), keep_rate=0.5, drop_path_rate=0.1).train()
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_spectformer_bad_reorg_locations():
    with pytest.raises(ValueError, match="spectral"):
        _spectformer(token_reorg_locs=(1, 3))
    with pytest.raises(ValueError, match="outside"):
        _spectformer(token_reorg_locs=(6,))
    with pytest.raises(ValueError, match="keep_rate"):
        _spectformer(token_reorg_locs=(3,), keep_rate=0.0)
    with pytest.raises(ValueError, match="keep_rate"):
        _spectformer(keep_rate=1.5)
    with pytest.raises(TypeError, match="token_reorg_locs"):
        _spectformer(token_reorg_locs=3)
    with pytest.raises(ValueError, match="keep_rate"):
        _spectformer(token_reorg_locs=(3,)).set_keep_rate(2.0)


# ---- CrossViT --------------------------------------------------------------------------------

def test_crossvit_default_is_off_and_keep_rate_one_is_exact():
    torch.manual_seed(0)
    off = _crossvit()
    assert off.token_reorg_locs == ((), ()) and not _reorg_blocks(off)
    on = _crossvit(token_reorg_locs=((0,), (1,)), keep_rate=0.5)
    assert len(_reorg_blocks(on)) == 4  # one per branch in each of the 2 multi-scale blocks
    assert on.state_dict().keys() == off.state_dict().keys()
    on.load_state_dict(off.state_dict())
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ref = off(x)
        assert not torch.allclose(on(x), ref)
        on.set_keep_rate(1.0)
        assert torch.equal(on(x), ref)
        one = _crossvit(token_reorg_locs=((0,), (1,)), keep_rate=1.0)
        one.load_state_dict(off.state_dict())
        assert torch.equal(one(x), ref)


def test_crossvit_token_counts_follow_ceil_rule():
    model = _crossvit(token_reorg_locs=(None, (1,)), keep_rate=0.5)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        # branch 1: 36 -> 18 + 1 fused = 19 -> ceil(0.5 * 19) = 10 + 1 = 11 patch tokens (+ CLS)
        assert [t.shape for t in final] == [(1, 65, 16), (1, 12, 32)]
        assert [t.shape for t in inter] == [(1, 16, 8, 8), (1, 16, 8, 8), (1, 19, 32), (1, 11, 32)]
        assert model(x).shape == (1, 5)
        both = _crossvit(token_reorg_locs=((0,), (0, 2)), keep_rate=0.5, fuse_token=False)
        # branch 0: 64 -> 32 -> 16; branch 1: 36 -> 18 -> 9 -> 5 -> 3
        assert [t.shape[1] for t in both.forward_features(x)] == [17, 4]
        avg = _crossvit(token_reorg_locs=((0,), (1,)), global_pool="avg")
        assert avg(x).shape == (1, 5)


def test_crossvit_flops_fall_with_keep_rate():
    assert timm.create_model("vitzoo_crossvit_tiny_240", token_reorg_locs=((), (1, 3)), device="meta").blocks[0] \
        .blocks[1][3].token_reorg.target_keep_rate == 0.7  # through the registry, default keep rate
    x = torch.randn(1, 3, 48, 48)  # tiny CPU model (meta CrossViT forwards are slow: bicubic resize)
    off, model = _crossvit(), _crossvit(token_reorg_locs=((0,), (0, 2)))
    flops = {}
    with torch.no_grad():
        for rate in (1.0, 0.9, 0.7, 0.5):
            model.set_keep_rate(rate)
            flops[rate] = _flops(model, x)
        assert flops[1.0] == _flops(off, x)
    assert flops[1.0] > flops[0.9] > flops[0.7] > flops[0.5]
    assert flops[0.5] < 0.6 * flops[1.0]


def test_crossvit_backward():
    model = _crossvit(token_reorg_locs=((0,), (1,)), keep_rate=0.5, drop_path_rate=0.1).train()
    model(torch.randn(2, 3, 48, 48)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_crossvit_bad_reorg_locations():
    with pytest.raises(ValueError, match="per branch"):
        _crossvit(token_reorg_locs=(1, 2))
    with pytest.raises(ValueError, match="per branch"):
        _crossvit(token_reorg_locs=((1,),))
    with pytest.raises(ValueError, match="branch 0"):
        _crossvit(token_reorg_locs=((1,), ()))  # branch 0 has one block per multi-scale block
    with pytest.raises(ValueError, match="branch 1"):
        _crossvit(token_reorg_locs=((), (3,)))
    with pytest.raises(ValueError, match="keep_rate"):
        _crossvit(token_reorg_locs=((), (1,)), keep_rate=1.5)


# ---- the training script's hook --------------------------------------------------------------

def test_training_script_keep_rate_warmup_drives_both_models():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        from train_imagenet import keep_rate_schedule
    finally:
        sys.path.pop(0)
    models = (_spectformer(token_reorg_locs=(3,), keep_rate=0.5), _crossvit(token_reorg_locs=((), (1,)), keep_rate=0.5))
    for model in models:
        schedule = keep_rate_schedule(model, 10, 110)
        rates = lambda: [m.keep_rate for m in model.modules() if isinstance(m, TokenReorg)]  # noqa: E731
        schedule(0.0)
        assert rates() and all(r == 1.0 for r in rates())
        schedule(60.0)  # halfway down the cosine from 1 to 0.5
        assert rates() == pytest.approx([0.75] * len(rates()))
        schedule(None)
        assert all(r == 0.5 for r in rates())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_reorganising_models_also_script():
    """Not required (eager is the contract with reorganisation on), but kept working: scripted == eager."""
    x, y = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 48, 48)
    for model, inp in ((_spectformer(token_reorg_locs=(2, 4), keep_rate=0.5), x),
                       (_crossvit(token_reorg_locs=((0,), (1,)), keep_rate=0.5), y)):
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.script(model)(inp), model(inp))
