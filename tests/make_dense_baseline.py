"""Record today's features and logits at each family's trained size, for tests/test_dense_sizes.py.

Issue 17 lets every family take any input size; at the trained size the outputs must stay
bit-for-bit what they were. This script stores a small fingerprint of them (shape, sums and
two 64-value slices per map, NCHW order) for one or two small models per family. Run it on
the code to freeze, from the repository root:

    PYTHONPATH=/path/to/old/checkout python tests/make_dense_baseline.py [out.pt]

The weights do not come from the RNG order of a model's constructor (which a refactor may
change) but from each parameter's name (`fill_by_name`), and reach the `features_only`
model through timm's checkpoint loading path, so a renamed feature wrapper still loads them.
"""
from __future__ import annotations

import os
import sys
import tempfile
import zlib

import torch

# One small model per family (a hierarchical SpectFormer besides the isotropic one): the default
# test run checks these, the slow run every registered model (all are recorded).
SMALL_MODELS: list[str] = [
    "vitzoo_biformer_tiny",
    "vitzoo_caformer_s18",
    "vitzoo_poolformer_s12",
    "vitzoo_crossvit_tiny_240",
    "vitzoo_nat_mini",
    "vitzoo_dinat_mini",
    "vitzoo_dinat_s_tiny",
    "vitzoo_nat_isotropic_small",
    "vitzoo_efficientvit_m0",
    "vitzoo_evit_deit_tiny_patch16_224",
    "vitzoo_shvit_s1",
    "vitzoo_spectformer_ti",
    "vitzoo_spectformer_h_s",
    "vitzoo_swin_tiny_patch4_window7_224",
]

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dense_baseline.pt")


def fill_by_name(model: torch.nn.Module) -> None:
    """Overwrite every float parameter with values seeded by its name (RNG-order independent).

    A parameter its constructor made constant (norm weights 1, biases 0, layer scales) keeps
    that constant plus small noise; any other gets N(0, 0.02^2) noise, like timm's inits.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.02
            flat = p.detach().reshape(-1)
            base = flat[0].item() if flat.numel() and bool((flat == flat[0]).all()) else 0.0
            p.copy_((noise + base).to(p.dtype))


def fingerprint(t: torch.Tensor) -> dict:
    """Shape, float64 sum and abs-sum, the first 64 values and 64 evenly spaced ones."""
    flat = t.detach().float().reshape(-1)
    step = max(1, flat.numel() // 64)
    return dict(shape=tuple(t.shape), sum=flat.double().sum().item(),
                abs_sum=flat.double().abs().sum().item(),
                head=flat[:64].clone(), spread=flat[::step][:64].clone())


def to_nchw(maps: list[torch.Tensor], feature_model: torch.nn.Module) -> list[torch.Tensor]:
    """Feature maps in NCHW whatever layout the wrapper returns (timm's NHWC Swin included)."""
    fmt = getattr(feature_model, "output_fmt", "NCHW")
    fmt = getattr(fmt, "value", fmt)  # timm's Format enum or a string
    channels = feature_model.feature_info.channels()
    out = []
    for m, c in zip(maps, channels):
        if fmt == "NHWC" or (m.shape[1] != c and m.shape[-1] == c):
            m = m.permute(0, 3, 1, 2)
        out.append(m)
    return out


def build(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The classifier and its `features_only` twin, in eval mode, on the same name-seeded weights."""
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    fill_by_name(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.pth")
        torch.save(model.state_dict(), path)
        features = timm.create_model(name, pretrained=True, features_only=True,
                                     pretrained_cfg_overlay=dict(file=path)).eval()
    return model, features


def record(name: str, size: int) -> dict:
    """Fingerprints of the classifier's logits and the `features_only` maps at `size` x `size`."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    model, features = build(name)
    with torch.no_grad():
        logits = model(x)
        maps = to_nchw(list(features(x)), features)
    return dict(size=size, logits=fingerprint(logits), features=[fingerprint(m) for m in maps],
                channels=list(features.feature_info.channels()),
                reduction=list(features.feature_info.reduction()))


def trained_size(name: str) -> int:
    """The variant's own input size (its pretrained_cfg's)."""
    import timm

    return int(timm.models.get_pretrained_cfg(name).input_size[-1])


def main(out: str = DEFAULT_OUT) -> None:
    import timm
    import vitzoo

    print("recording from", vitzoo.__file__)
    torch.set_num_threads(1)  # the test recomputes single-threaded too: same summation order
    data = {"vitzoo_file": vitzoo.__file__, "torch": str(torch.__version__),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "models": {}}
    for name in timm.list_models("vitzoo_*"):
        size = trained_size(name)
        data["models"][name] = record(name, size)
        print(name, [f["shape"] for f in data["models"][name]["features"]])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save(data, out)
    print("wrote", out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main(*sys.argv[1:])
