"""Official downstream (mmdet) checkpoints of EfficientViT (MSRA) and SHViT load into `features_only`.

microsoft/Cream `EfficientViT/downstream/efficientvit.py` (`retinanet_efficientvit_m4_fpn_1x_coco.pth`,
`mask_rcnn_efficientvit_m4_fpn_1x_coco.pth`) and ysj9909/SHViT `downstream/shvit.py`
(`retinanet_shvit_s4_1x_coco.pth`, `maskrcnn_shvit_s4_1x_coco.pth`) are the classification layout
(`patch_embed`, `blocks1..3`) without the head, returning the outputs of `blocks1`, `blocks2` and
`blocks3`; mmdet saves them as `{'meta', 'state_dict': {'backbone.*', 'neck.*', ...}}`. Here random
timm weights are written in that layout (the official-layout converters of the family tests), and
the three loading paths must give the maps of timm's `features_only` twin on the same weights, at an
odd size where EfficientViT's window attention pads (as the official downstream block does).
"""
from __future__ import annotations

import pytest
import timm
import torch

import vitzoo  # noqa: F401
from test_efficientvit_cga import timm_to_official as efficientvit_to_official
from test_single_head_vit import timm_to_official as shvit_to_official
from vitzoo.models import efficientvit_cga, single_head_vit

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = {
    "efficientvit_m0": (lambda m: efficientvit_to_official(m.state_dict(), m), efficientvit_cga,
                        "retinanet_efficientvit_m4_fpn_1x_coco.pth"),
    "shvit_s1": (lambda m: shvit_to_official(m.state_dict()), single_head_vit, "maskrcnn_shvit_s4_1x_coco.pth"),
}


def _mmdet_checkpoint(official: dict) -> dict:
    """What mmdet saves: the backbone without its classifier head, a neck and heads beside it."""
    backbone = {f"backbone.{k}": v for k, v in official.items() if not k.startswith(("head.", "head_dist."))}
    others = {"neck.lateral_convs.0.conv.weight": torch.randn(8, 4, 1, 1), "bbox_head.retina_cls.bias": torch.randn(9)}
    return {"meta": {"epoch": 12}, "state_dict": {**backbone, **others}}


@pytest.mark.parametrize("name", list(CASES))
def test_official_downstream_checkpoint_loads_and_gives_the_twins_maps(name, tmp_path):
    to_official, module, file_name = CASES[name]
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    with torch.no_grad():  # BN statistics away from their init, so a missed buffer shows
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    twin = timm.create_model(name, features_only=True, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(tmp_path / "timm.pth"))).eval()
    path = tmp_path / file_name
    torch.save(_mmdet_checkpoint(to_official(ref)["model"]), path)
    x = torch.randn(1, 3, 161, 227)
    with torch.no_grad():
        want = twin(x)
    m1 = timm.create_model(f"vitzoo_{name}", features_only=True, pretrained=True,
                           pretrained_cfg_overlay=dict(file=str(path))).eval()
    m2 = timm.create_model(f"vitzoo_{name}", features_only=True).eval()
    m2.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    m3 = timm.create_model(f"vitzoo_{name}", features_only=True).eval()
    m3.model.load_state_dict(module.checkpoint_filter_fn(torch.load(path, weights_only=True), m3.model), strict=True)
    for m in (m1, m2, m3):
        with torch.no_grad():
            got = m(x)
        assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
