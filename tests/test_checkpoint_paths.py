"""Every timm loading path accepts timm's and the official key layouts, not only `pretrained=True`.

For one model per family, a foreign-layout file (timm's own model's weights where timm has the
family, else the official layout built by the family test's inverse mapping) goes through
`pretrained_cfg_overlay` (the family's filter, the reference), `checkpoint_path=`,
`timm.models.load_checkpoint`, and `model.load_state_dict`; all give identical outputs.
"""
from __future__ import annotations

import re
from typing import Callable, Dict

import pytest
import timm
import torch
from timm.models import load_checkpoint

import vitzoo  # noqa: F401
from test_nat import _to_official_nat
from test_spectformer import _to_official_vanilla
from zoo_cases import randomize_

Layout = Callable[[], Dict[str, torch.Tensor]]


def _timm_layout(timm_name: str, **kw) -> Layout:
    def make():
        return randomize_(timm.create_model(timm_name, **kw)).state_dict()
    return make


def _official_from_zoo(zoo_name: str, to_official: Callable, per_key: bool, **kw) -> Layout:
    def make():
        sd = randomize_(timm.create_model(zoo_name, **kw)).state_dict()
        official = {to_official(k): v for k, v in sd.items()} if per_key else to_official(sd)
        return {"model": official}
    return make


# (zoo name, maker of a foreign-layout checkpoint, model kwargs, input size)
CASES = [
    ("vitzoo_swin_tiny_patch4_window7_224", _timm_layout("swin_tiny_patch4_window7_224"), {}, 224),
    ("vitzoo_poolformer_s12", _timm_layout("poolformer_s12"), {}, 64),
    ("vitzoo_caformer_s18", _timm_layout("caformer_s18"), {}, 64),
    ("vitzoo_efficientvit_m0", _timm_layout("efficientvit_m0"), {}, 64),
    ("vitzoo_shvit_s1", _timm_layout("shvit_s1"), {}, 64),
    ("vitzoo_crossvit_tiny_240", _timm_layout("crossvit_tiny_240"), {}, 240),
    ("vitzoo_evit_deit_tiny_patch16_224", _timm_layout("deit_tiny_patch16_224"), {"keep_rate": 1.0}, 224),
    ("vitzoo_nat_mini", _official_from_zoo("vitzoo_nat_mini", _to_official_nat, True), {}, 64),
    ("vitzoo_spectformer_ti", _official_from_zoo("vitzoo_spectformer_ti", _to_official_vanilla, False,
                                                 img_size=64), {"img_size": 64}, 64),
]


def _ids(case):
    return re.sub(r"^vitzoo_", "", case[0]).split("_patch")[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpt")


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_every_loading_path_accepts_the_foreign_layout(case, files):
    name, make, kw, size = case
    path = files / f"{_ids(case)}.pth"
    torch.save(make(), path)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))

    reference = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
    via_path = timm.create_model(name, checkpoint_path=str(path), **kw)
    via_load = timm.create_model(name, **kw)
    load_checkpoint(via_load, str(path))
    via_sd = timm.create_model(name, **kw)
    result = via_sd.load_state_dict(torch.load(path, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys

    with torch.no_grad():
        want = reference.eval()(x)
        fresh = timm.create_model(name, **kw).eval()(x)
        assert not torch.allclose(fresh, want), "the checkpoint must change the model's output"
        for model in (via_path, via_load, via_sd):
            torch.testing.assert_close(model.eval()(x), want, rtol=0, atol=0)


def test_validate_and_initial_checkpoint_take_a_timm_checkpoint(tmp_path):
    from train_helpers import make_folder
    from vitzoo.cli import checkpoints as ckpts
    from vitzoo.cli.validate import validate

    make_folder(tmp_path, classes=3)
    twin = randomize_(timm.create_model("efficientvit_m0", num_classes=3)).eval()
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": twin.state_dict()}, path)  # as timm's saver writes it
    result = validate(["--data-dir", str(tmp_path), "--model", "vitzoo_efficientvit_m0", "--num-classes", "3",
                       "--checkpoint", str(path), "--img-size", "64", "--no-progress"])
    assert result["images"] == 9
    model = timm.create_model("vitzoo_efficientvit_m0", num_classes=3).eval()
    ckpts.load_weights(model, ckpts.model_state(ckpts.load_file(str(path))), str(path))  # --initial-checkpoint
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=0, atol=1e-5)


def test_zoo_layout_is_loaded_untouched_and_bad_keys_still_fail():
    model = timm.create_model("vitzoo_poolformer_s12")
    sd = randomize_(timm.create_model("vitzoo_poolformer_s12")).state_dict()
    model.load_state_dict(sd)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    bad = dict(sd, **{"not_a_key.weight": torch.zeros(1)})
    with pytest.raises(Exception):
        model.load_state_dict(bad)
