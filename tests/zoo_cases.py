"""Which zoo models the cross-family tests run on, and timm's rule for their input sizes.

One representative per distinct architecture (the smallest variant of each mixer/layout), so a
contract or TorchScript/FX check exercises every family's code paths without building all 80
models. test_contract checks that every family module has a representative here.
"""
from typing import Optional, Tuple

import torch
from timm.models._registry import get_pretrained_cfg_value

#: pyramids and other spatial models: timm's "standard" default-cfg checks apply
SPATIAL_MODELS = [
    "vitzoo_swin_tiny_patch4_window7_224",
    "vitzoo_poolformer_s12",
    "vitzoo_poolformerv2_s12",
    "vitzoo_convformer_s18",
    "vitzoo_caformer_s18",
    "vitzoo_nat_mini",
    "vitzoo_dinat_mini",
    "vitzoo_dinat_s_tiny",
    "vitzoo_nat_isotropic_small",
    "vitzoo_efficientvit_m0",
    "vitzoo_shvit_s1",
    "vitzoo_spectformer_h_s",
    "vitzoo_biformer_tiny",
]
#: token models: timm puts its own vit_*/deit*/crossvit_* under its "non-standard" checks
TOKEN_MODELS = [
    "vitzoo_spectformer_ti",
    "vitzoo_evit_deit_tiny_patch16_224",
    "vitzoo_crossvit_tiny_240",
]
REPRESENTATIVES = SPATIAL_MODELS + TOKEN_MODELS

#: per representative: kwargs for a shallow variant and its image size, for the slow-to-trace checks
#: (ONNX export, torch.export, torch.compile, channels_last, autocast)
SMALL = {
    "vitzoo_swin_tiny_patch4_window7_224": (dict(depths=(1, 1, 1, 1)), 224),
    "vitzoo_poolformer_s12": (dict(depths=(1, 1, 1, 1)), 64),
    "vitzoo_poolformerv2_s12": (dict(depths=(1, 1, 1, 1)), 64),
    "vitzoo_convformer_s18": (dict(depths=(1, 1, 1, 1)), 64),
    "vitzoo_caformer_s18": (dict(depths=(1, 1, 1, 1)), 64),
    "vitzoo_nat_mini": (dict(depths=(1, 1, 1, 1)), 64),
    "vitzoo_dinat_mini": (dict(depths=(2, 2, 2, 2), dilations=((1, 2), (1, 1), (1, 1), (1, 1))), 64),
    "vitzoo_dinat_s_tiny": (dict(depths=(2, 2, 2, 2), dilations=((1, 2), (1, 1), (1, 1), (1, 1))), 64),
    "vitzoo_nat_isotropic_small": (dict(depth=2), 64),
    "vitzoo_biformer_tiny": (dict(depths=(1, 1, 1, 1)), 64),
    "vitzoo_efficientvit_m0": (dict(img_size=64, depth=(1, 1, 1)), 64),
    "vitzoo_shvit_s1": (dict(depth=(1, 1, 1)), 64),
    "vitzoo_spectformer_h_s": (dict(depths=(1, 1, 1, 1), img_size=64), 64),
    "vitzoo_spectformer_ti": (dict(depth=2, num_spectral_layers=1, img_size=64), 64),
    "vitzoo_evit_deit_tiny_patch16_224": (dict(img_size=64, depth=4, token_reorg_locs=(1, 2)), 64),
    "vitzoo_crossvit_tiny_240": (dict(img_size=(120, 120)), 120),
}
#: timm's test sizes: TARGET_BWD/JIT/FX_SIZE and TARGET_FFEAT_SIZE
TARGET_SIZE = 128
TARGET_FEAT_SIZE = 96


def input_size(name: str, target: Optional[int] = TARGET_SIZE) -> Tuple[int, ...]:
    """timm's `_get_input_size`: the cfg size clipped to `target`, unless the cfg fixes it."""
    size = tuple(get_pretrained_cfg_value(name, "input_size"))
    if get_pretrained_cfg_value(name, "fixed_input_size") or target is None:
        return size
    min_size = get_pretrained_cfg_value(name, "min_input_size")
    if min_size and max(size) > target:
        return tuple(min_size)
    return tuple(min(s, target) for s in size)


def seeded_input(size: Tuple[int, ...], batch: int) -> torch.Tensor:
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(0))


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every float tensor (BN statistics, zero-initialised branches) so no branch
    is trivial in a parity test; running variances stay positive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return model


def timm_and_ours(variant: str, filter_fn, **kwargs):
    """timm's `variant` with randomized weights, and `vitzoo_<variant>` loaded from them through `filter_fn`."""
    import timm
    ref = randomize_(timm.create_model(variant, **kwargs)).eval()
    ours = timm.create_model(f"vitzoo_{variant}", **kwargs).eval()
    ours.load_state_dict(filter_fn(ref.state_dict(), ours), strict=True)
    return ref, ours


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
