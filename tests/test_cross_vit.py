"""CrossViT: timm parity, parameter layout of every variant, the timm contract on two branches."""
import pytest
import timm
import torch
import torch.nn as nn

import vitzoo  # noqa: F401
from vitzoo.layers.cross_attention import CrossAttention, CrossAttentionBlock
from vitzoo.models.cross_vit import CrossViT, checkpoint_filter_fn


pytestmark = pytest.mark.usefixtures("one_thread")

TIMM_VARIANTS = [
    "crossvit_tiny_240", "crossvit_small_240", "crossvit_base_240", "crossvit_9_240", "crossvit_15_240",
    "crossvit_18_240", "crossvit_9_dagger_240", "crossvit_15_dagger_240", "crossvit_15_dagger_408",
    "crossvit_18_dagger_240", "crossvit_18_dagger_408",
]


def _toy(**kw):
    args = dict(img_size=48, embed_dim=(16, 32), depth=((1, 2, 0), (1, 2, 0)), num_heads=(2, 2),
                mlp_ratio=(2.0, 2.0, 1.0), num_classes=7)
    return CrossViT(**dict(args, **kw)).eval()


def test_every_timm_variant_is_registered():
    assert sorted(timm.list_models("crossvit_*")) == sorted(TIMM_VARIANTS)
    assert sorted(timm.list_models("vitzoo_crossvit_*")) == sorted("vitzoo_" + n for n in TIMM_VARIANTS)


@pytest.mark.parametrize("name", TIMM_VARIANTS)
def test_parameters_match_timm(name):
    ref = timm.create_model(name, device="meta")
    ours = timm.create_model("vitzoo_" + name, device="meta")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    mapped = {k: v.shape for k, v in checkpoint_filter_fn(ref.state_dict(), ours).items()}
    assert mapped == {k: v.shape for k, v in ours.state_dict().items()}
    assert ours.pretrained_cfg["hf_hub_id"] == f"timm/{name}.in1k"


@pytest.mark.parametrize("name", ["crossvit_tiny_240", "crossvit_9_dagger_240"])
def test_logits_match_timm(name):
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    ours = timm.create_model("vitzoo_" + name, device="meta")
    ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours), strict=True, assign=True)
    ours.eval()
    x = torch.randn(2, 3, 240, 240)
    with torch.no_grad():
        assert (ref(x) - ours(x)).abs().max().item() <= 1e-4
        ref_final, ref_inter = ref.forward_intermediates(x, indices=[0, 4])
        final, inter = ours.forward_intermediates(x, indices=[0, 4])
    assert [t.shape for t in inter] == [t.shape for t in ref_inter]
    for a, b in zip(inter + final, ref_inter + ref_final):
        assert (a - b).abs().max().item() <= 1e-4


def test_filter_takes_official_key_layout():
    ours = timm.create_model("vitzoo_crossvit_tiny_240", device="meta")
    ref = timm.create_model("crossvit_tiny_240", device="meta").state_dict()
    official = {k.replace("pos_embed_", "pos_embed.").replace("cls_token_", "cls_token."): v for k, v in ref.items()}
    mapped = checkpoint_filter_fn({"model": official}, ours)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_cross_attention_is_cls_query_softmax_attention():
    torch.manual_seed(0)
    layer = CrossAttention(8, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(3, 5, 8)
    q = layer.wq(x[:, :1]).view(3, 1, 2, 4).transpose(1, 2)
    k = layer.wk(x).view(3, 5, 2, 4).transpose(1, 2)
    v = layer.wv(x).view(3, 5, 2, 4).transpose(1, 2)
    attn = (q @ k.transpose(-2, -1) * 4 ** -0.5).softmax(-1)
    expected = layer.proj((attn @ v).transpose(1, 2).reshape(3, 1, 8))
    torch.testing.assert_close(layer(x), expected)
    block = CrossAttentionBlock(8, 2)
    assert block(x).shape == (3, 1, 8)


def test_branch_views_and_intermediates():
    model = _toy()
    assert model.img_size_scaled == [(48, 48), (44, 44)]  # int(48 * 224 / 240) = 44, as timm
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=[1, 3], output_fmt="NLC", intermediates_only=True)
        feats = model.forward_features(x)
    assert [t.shape for t in inter] == [(2, 16, 4, 4), (2, 16, 4, 4), (2, 32, 2, 2), (2, 32, 2, 2)]
    assert [t.shape for t in only] == [(2, 16, 16), (2, 4, 32)]
    assert [f.shape for f in final] == [(2, 17, 16), (2, 5, 32)]
    for a, b in zip(final, feats):
        torch.testing.assert_close(a, b)
    assert [f["num_chs"] for f in model.feature_info] == [16, 16, 32, 32]
    assert [f["reduction"] for f in model.feature_info] == [12, 12, 17, 17]


def test_reset_classifier_and_pooling():
    model = _toy()
    x = torch.randn(2, 3, 48, 48)
    assert model(x).shape == (2, 7)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and len(model.get_classifier()) == 2
    model.reset_classifier(0, global_pool="avg")
    assert model.head.pool_type == "avg" and model(x).shape == (2, 48)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, global_pool="max")
    assert model.no_weight_decay() == {"cls_token_0", "cls_token_1", "pos_embed_0", "pos_embed_1"}


def test_any_image_size_is_rescaled_per_branch_and_channels_raise():
    """timm's rule: each branch sees the image resized to its built size, so any size works and the
    feature grids are the built ones; an image of the built size is used as it is."""
    model = _toy()
    x = torch.randn(1, 3, 37, 61)
    with torch.no_grad():
        inter = model.forward_intermediates(x, intermediates_only=True)
        assert [t.shape[-2:] for t in inter] == [(4, 4)] * 2 + [(2, 2)] * 2  # 48/12, 44/16
        resized = torch.nn.functional.interpolate(x, size=(48, 48), mode="bicubic", align_corners=False)
        torch.testing.assert_close(model.patch_embed[0](resized), model._embed(x)[0][:, 1:] - model.pos_embed_0[:, 1:])
        assert model(x).shape == (1, 7)
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 48, 48))
    with pytest.raises(ValueError, match="patch sizes 12 and 16"):
        _toy(patch_size=(8, 16), multi_conv=True)


def test_features_only_and_pruning():
    feats = timm.create_model("vitzoo_crossvit_9_240", features_only=True, img_size=48).eval()
    with torch.no_grad():
        out = feats(torch.randn(1, 3, 48, 48))
    assert [t.shape for t in out] == [(1, 128, 4, 4), (1, 256, 2, 2)]
    model = _toy()
    assert model.prune_intermediate_layers([0, 2]) == [0, 2] and len(model.blocks) == 1
    assert isinstance(model.get_classifier()[0], nn.Identity)


def test_grad_checkpointing_backward():
    model = _toy(drop_path_rate=0.1).train()
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 48, 48)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
