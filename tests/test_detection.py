"""torchvision detectors on zoo backbones (vitzoo.detection): one training step and one eval forward.

Detection inputs have whatever size augmentation gives, so the images here reach the backbone
at odd sizes (torchvision's transform with `size_divisible=1` and a scale of 1), a different one
for training and for eval. The backbones are shrunk (depth 1-2 per stage, narrow) for CPU speed;
they keep every stage, the real window/kernel sizes and the padding those small maps need.
"""
from __future__ import annotations

import importlib.util
import math
import os
from collections import OrderedDict

import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

import vitzoo  # noqa: F401  (registers the zoo)
from interpreter_child import run_interpreted
from vitzoo.detection import TimmBackboneWithFPN, anchor_generator, backbone_with_fpn
from vitzoo.models.nat import dinat_dilations

HAS_TRITON = importlib.util.find_spec("triton") is not None
IS_CHILD = os.environ.get("VITZOO_DET_TEST_CHILD") == "1"

_NARROW_NAT = dict(embed_dim=32, num_heads=(1, 2, 4, 8), drop_path_rate=0.0)
SHRUNK = {
    "vitzoo_nat_mini": dict(_NARROW_NAT, depths=(1, 1, 1, 1)),
    "vitzoo_dinat_mini": dict(_NARROW_NAT, depths=(2, 2, 2, 2),
                              dilations=dinat_dilations((2, 2, 2, 2), (8, 4, 2, 1))),
    "vitzoo_swin_tiny_patch4_window7_224": dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                                drop_path_rate=0.0),
    "vitzoo_biformer_tiny": dict(embed_dims=(32, 64, 128, 256), depths=(1, 1, 1, 1), drop_path_rate=0.0),
}
# (model, detector); two different odd sizes each (train, eval): (h, w)
CASES = [
    ("vitzoo_nat_mini", "maskrcnn", (97, 131), (75, 109)),
    ("vitzoo_dinat_mini", "fasterrcnn", (83, 117), (101, 69)),
    ("vitzoo_swin_tiny_patch4_window7_224", "maskrcnn", (89, 123), (111, 77)),
    ("vitzoo_biformer_tiny", "retinanet", (105, 129), (71, 93)),
]
FPN_CHANNELS = 32


def _detector(name: str, kind: str, train_hw: tuple[int, int]) -> torch.nn.Module:
    """A small detector whose transform hands images of `train_hw` to the backbone unchanged."""
    torch.manual_seed(0)
    # torchvision's transform scales an image by min(min_size/short side, max_size/long side):
    # 1 here, and size_divisible=1 pads nothing, so the odd size reaches the backbone
    size = dict(min_size=min(train_hw), max_size=max(train_hw), size_divisible=1)
    if kind == "retinanet":
        backbone = backbone_with_fpn(name, out_indices=(1, 2, 3), fpn_channels=FPN_CHANNELS,
                                     extra_blocks="p6p7", **SHRUNK[name])
        return RetinaNet(backbone, num_classes=3, anchor_generator=anchor_generator(backbone, scales_per_octave=3),
                         topk_candidates=50, detections_per_img=20, **size)
    backbone = backbone_with_fpn(name, fpn_channels=FPN_CHANNELS, **SHRUNK[name])
    small = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
                 rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=32,
                 box_detections_per_img=20, **size)
    if kind == "maskrcnn":
        return MaskRCNN(backbone, num_classes=3, **small)
    return FasterRCNN(backbone, num_classes=3, **small)


def _targets(hw: tuple[int, int], masks: bool) -> list[dict]:
    """Two boxes (with filled masks when asked) inside an image of size `hw`."""
    h, w = hw
    boxes = torch.tensor([[3.0, 5.0, w * 0.6, h * 0.7], [w * 0.4, h * 0.3, w - 2.0, h - 4.0]])
    target = dict(boxes=boxes, labels=torch.tensor([1, 2]))
    if masks:
        m = torch.zeros(2, h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            m[i, y0:y1, x0:x1] = 1
        target["masks"] = m
    return [target]


def _seen_sizes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """Record the spatial size of every batch that reaches the backbone's body."""
    seen: list[tuple[int, int]] = []
    model.backbone.body.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    return seen


def _train_and_eval(name: str, kind: str, train_hw: tuple[int, int], eval_hw: tuple[int, int]) -> None:
    """One SGD step (finite losses, gradient in the backbone's first layer), then eval at another size."""
    model = _detector(name, kind, train_hw)
    seen = _seen_sizes(model)
    gen = torch.Generator().manual_seed(1)
    model.train()
    losses = model([torch.rand(3, *train_hw, generator=gen)], _targets(train_hw, kind == "maskrcnn"))
    expected = {"maskrcnn": "loss_mask", "fasterrcnn": "loss_box_reg", "retinanet": "bbox_regression"}[kind]
    assert expected in losses, sorted(losses)
    for k, v in losses.items():
        assert torch.isfinite(v), f"{name}/{kind}: {k} = {v}"
    sum(losses.values()).backward()
    first_name, first = next(iter(model.backbone.body.named_parameters()))
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0, first_name
    torch.optim.SGD(model.parameters(), lr=1e-3).step()

    model.eval()
    model.transform.min_size, model.transform.max_size = (min(eval_hw),), max(eval_hw)
    with torch.no_grad():
        out = model([torch.rand(3, *eval_hw, generator=gen)])
    assert len(out) == 1 and {"boxes", "scores", "labels"} <= out[0].keys()
    assert torch.isfinite(out[0]["boxes"]).all()
    if kind == "maskrcnn":
        assert out[0]["masks"].shape[-2:] == eval_hw
    assert seen == [train_hw, eval_hw], f"backbone saw {seen}"


@pytest.mark.parametrize("name,kind,train_hw,eval_hw", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_detector_train_step_and_eval_at_odd_sizes(name, kind, train_hw, eval_hw, one_thread):
    _train_and_eval(name, kind, train_hw, eval_hw)


def test_fpn_levels_shapes_and_strides_at_odd_size(one_thread):
    """Levels "0".."3" + "pool", each at the body's stride (ceil of size/stride), all FPN channels."""
    backbone = backbone_with_fpn("vitzoo_nat_mini", fpn_channels=FPN_CHANNELS, **SHRUNK["vitzoo_nat_mini"]).eval()
    h, w = 75, 109
    with torch.no_grad():
        body = backbone.body_features(torch.randn(1, 3, h, w))
        out = backbone(torch.randn(1, 3, h, w))
    assert backbone.out_channels == FPN_CHANNELS and isinstance(out, OrderedDict)
    assert list(out) == ["0", "1", "2", "3", "pool"] and backbone.strides == [4, 8, 16, 32]
    for (key, m), c, s in zip(body.items(), backbone.in_channels_list, backbone.strides):
        assert m.shape[:2] == (1, c) and abs(m.shape[2] - h / s) <= 1 and abs(m.shape[3] - w / s) <= 1, (key, m.shape)
        assert out[key].shape == (1, FPN_CHANNELS, *m.shape[2:])


def test_nhwc_backbone_is_read_by_its_declared_layout():
    """timm's own Swin returns NHWC from features_only; the adapter permutes it for the FPN."""
    body = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, pretrained=False,
                             embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)).eval()
    backbone = TimmBackboneWithFPN(body, fpn_channels=FPN_CHANNELS)
    assert backbone.channels_last
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        raw = body(x)
        maps = backbone.body_features(x)
    for r, (key, m), c in zip(raw, maps.items(), [32, 64, 128, 256]):
        assert r.shape[-1] == c and m.shape[1] == c
        assert torch.equal(m, r.permute(0, 3, 1, 2)), key


def test_zoo_swin_feature_layout_matches_timm():
    """The zoo's Swin declares the layout timm's Swin does, and the adapter accepts both."""
    kw = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    zoo = backbone_with_fpn("vitzoo_swin_tiny_patch4_window7_224", fpn_channels=FPN_CHANNELS, **kw)
    ref = backbone_with_fpn("swin_tiny_patch4_window7_224", fpn_channels=FPN_CHANNELS, **kw)
    assert zoo.channels_last == ref.channels_last
    assert zoo.in_channels_list == ref.in_channels_list and zoo.strides == ref.strides


def test_anchor_generator_matches_levels():
    """One anchor size per level: 4 stages + pool = 5, 3 stages + p6p7 = 5 (x3 scales), EfficientViT 3 + pool,
    an isotropic model's last 2 blocks + pool."""
    nat = backbone_with_fpn("vitzoo_nat_mini", fpn_channels=FPN_CHANNELS, **SHRUNK["vitzoo_nat_mini"])
    assert anchor_generator(nat).sizes == ((32,), (64,), (128,), (256,), (512,))
    retina = backbone_with_fpn("vitzoo_nat_mini", out_indices=(1, 2, 3), extra_blocks="p6p7",
                               fpn_channels=FPN_CHANNELS, **SHRUNK["vitzoo_nat_mini"])
    assert [len(s) for s in anchor_generator(retina, scales_per_octave=3).sizes] == [3] * 5
    evit = backbone_with_fpn("vitzoo_efficientvit_m0", fpn_channels=FPN_CHANNELS)
    assert evit.strides == [16, 32, 64] and len(anchor_generator(evit).sizes) == 4
    iso = backbone_with_fpn("vitzoo_nat_isotropic_small", out_indices=2, fpn_channels=FPN_CHANNELS, depth=2)
    assert iso.strides == [16, 16] and len(anchor_generator(iso).sizes) == 3  # int: timm's "last n blocks"


def test_three_level_backbone_with_anchor_generator(one_thread):
    """EfficientViT-M0 (three levels): Faster R-CNN takes it with `anchor_generator(backbone)`,
    which the README names; torchvision's five-level default would not match."""
    torch.manual_seed(0)
    backbone = backbone_with_fpn("vitzoo_efficientvit_m0", fpn_channels=FPN_CHANNELS)
    hw = (97, 131)
    model = FasterRCNN(backbone, num_classes=3, rpn_anchor_generator=anchor_generator(backbone),
                       min_size=min(hw), max_size=max(hw), size_divisible=1)
    losses = model([torch.rand(3, *hw)], _targets(hw, False))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    first = next(iter(backbone.body.parameters()))
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="features_only"):
        TimmBackboneWithFPN(torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="extra_blocks"):
        backbone_with_fpn("vitzoo_nat_mini", extra_blocks="p7", **SHRUNK["vitzoo_nat_mini"])
    body = timm.create_model("vitzoo_nat_mini", features_only=True, **SHRUNK["vitzoo_nat_mini"])
    with pytest.raises(ValueError, match="only when model is a name"):
        backbone_with_fpn(body, out_indices=(1, 2))


# ----------------------------------------------------------------------------------------------
# The Triton path under the interpreter: a FasterRCNN step on a NAT backbone at an odd size, the
# kernels forced (VITZOO_KERNELS=triton refuses any fallback), checked against the reference.
# ----------------------------------------------------------------------------------------------
def _check_triton_detector(hw: tuple[int, int] = (45, 61)) -> None:
    """Triton kernels take the (padded) maps of an odd-size detector input: same losses, same
    backbone gradients as the reference path, and every attention call went to Triton."""
    import vitzoo.kernels._neighborhood_triton as tri

    calls: list[tuple[str, tuple[int, ...]]] = []
    fwd, bwd = tri.na2d_triton_forward, tri.na2d_triton_backward
    tri.na2d_triton_forward = lambda *a: calls.append(("f", tuple(a[0].shape))) or fwd(*a)
    tri.na2d_triton_backward = lambda *a: calls.append(("b", tuple(a[0].shape))) or bwd(*a)
    os.environ["VITZOO_FP32_PRECISION"] = "tf32x3"  # interpreter computes it as IEEE fp32
    results = {}
    for mode in ("reference", "triton"):
        os.environ["VITZOO_KERNELS"] = mode
        calls.clear()
        model = _detector("vitzoo_nat_mini", "fasterrcnn", hw)
        model.train()
        gen = torch.Generator().manual_seed(1)
        torch.manual_seed(2)  # the RPN/ROI samplers draw from the global RNG
        losses = model([torch.rand(3, *hw, generator=gen)], _targets(hw, False))
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.backbone.body.named_parameters() if p.grad is not None}
        results[mode] = ({k: v.detach() for k, v in losses.items()}, grads, list(calls))
    (ref_l, ref_g, ref_calls), (tri_l, tri_g, tri_calls) = results["reference"], results["triton"]
    assert not ref_calls
    blocks = len(SHRUNK["vitzoo_nat_mini"]["depths"])
    assert [c[0] for c in tri_calls].count("f") == blocks and [c[0] for c in tri_calls].count("b") == blocks, tri_calls
    # stage i's map is ceil(side / 2^(i+2)); a side under the 7x7 kernel is padded to 7 (NATTEN's rule)
    maps = [tuple(max(math.ceil(side / 2 ** (i + 2)), 7) for side in hw) for i in range(blocks)]
    assert [c[1][1:3] for c in tri_calls if c[0] == "f"] == maps, tri_calls
    for k in ref_l:
        torch.testing.assert_close(tri_l[k], ref_l[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    assert ref_g.keys() == tri_g.keys() and any("rpb" in n for n in ref_g)
    for n in ref_g:
        torch.testing.assert_close(tri_g[n], ref_g[n], rtol=1e-3, atol=1e-4, msg=lambda m: f"{n}: {m}")
    print("ok triton detector", [c[1] for c in tri_calls if c[0] == "f"], flush=True)


@pytest.mark.skipif(not IS_CHILD, reason="runs inside test_detector_on_triton_interpreter")
def test_interp_child_detector():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.set_num_threads(1)
    _check_triton_detector()


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.skipif(IS_CHILD, reason="parent test")
def test_detector_on_triton_interpreter():
    out = run_interpreted(__file__, "test_interp_child_detector", "VITZOO_DET_TEST_CHILD", timeout=600,
                          drop_env=("VITZOO_NA_TILE", "VITZOO_FP32_PRECISION"))
    assert "ok triton detector" in out, out[-4000:]
