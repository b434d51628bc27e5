"""timm's `feature_cls='list' | 'dict' | 'hook'` wrappers over the zoo's pyramids.

timm's FeatureListNet / FeatureDictNet / FeatureHookNet walk a model's top-level modules by name
and call them one by one, past `forward_features`. The zoo's versions subclass them (so
`isinstance` checks written for timm hold) and add what that walk skips: the model's input check
first (channels, minimum size, and the per-size rule it selects, e.g. Swin's window rule), maps in
the family's feature layout (NCHW; NHWC where timm's twin gives NHWC, as Swin's does), and a
`load_state_dict` that also takes timm's twin's keys and the zoo's or official layouts. The
isotropic families keep timm's hook wrapper (token sequences, as timm's ViT gives); 'list' / 'dict'
there, and any of the three on the two-branch CrossViT, get a clear error: the default getter
(and `'fx'`) serve them.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models import FeatureDictNet, FeatureGraphNet, FeatureHookNet, FeatureListNet

__all__ = ["ZooFeatureDictNet", "ZooFeatureGraphNet", "ZooFeatureHookNet", "ZooFeatureListNet", "resolve_feature_cls"]


def _paths(root: nn.Module) -> dict[int, str]:
    return {id(m): p for p, m in root.named_modules() if p}


def _swap_prefix(key: str, table: dict[str, str]) -> str:
    """`key` with its longest dotted prefix found in `table` replaced by the table's value."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:n])
        if head in table:
            return table[head] + "." + ".".join(parts[n:])
    return key


def _take_foreign_keys(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """`load_state_dict` pre-hook: keys of timm's twin's wrapper (the family's timm names, flattened
    as `layers_0`), of the zoo model or of an official layout -> the wrapper's own keys."""
    from ._base import to_zoo_layout

    keys = [k for k in state_dict if k.startswith(prefix)]
    own = set(module.state_dict())
    if not keys or all(k[len(prefix):] in own for k in keys):
        return
    model = module.__dict__["_zoo_model"]
    top = module.__dict__["_zoo_names"]  # wrapper child name -> (its path in the view, its path in the model)
    to_view = {name: view for name, (view, _) in top.items()}
    sub = {_swap_prefix(k[len(prefix):], to_view): state_dict.pop(k) for k in keys}
    sub = to_zoo_layout(model, sub)  # the family's filter: timm's / official names -> the zoo's
    to_wrapper = {path: name for name, (_, path) in top.items()}
    state_dict.update({prefix + _swap_prefix(k, to_wrapper): v for k, v in sub.items()})


class _ZooTimmFeatures:
    """What the zoo adds to timm's list / dict / hook wrappers (see the module docstring)."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        if getattr(model, "feature_norms", None) is not None:
            raise ValueError(
                "feature_norms=True applies the per-output norms in forward_intermediates: use the default "
                "feature_cls (or 'getter'), not timm's list / dict / hook wrappers")
        kwargs["output_fmt"] = model.features_fmt
        view = model.timm_feature_view()
        super().__init__(view, **kwargs)
        in_view, in_model = _paths(view), _paths(model)
        self.__dict__["_zoo_model"] = model  # not a child: its modules are already the wrapper's
        self.__dict__["_zoo_names"] = {
            name: (in_view[id(m)], in_model[id(m)]) for name, m in self.named_children() if id(m) in in_model}
        self._to_nchw = model.output_fmt == "NHWC" and model.features_fmt == "NCHW"
        self.register_load_state_dict_pre_hook(_take_foreign_keys)

    def forward(self, x: torch.Tensor) -> Any:
        if not torch.jit.is_scripting():
            self.__dict__["_zoo_model"].check_input(x)
        out = super().forward(x)
        if not self._to_nchw:
            return out
        if isinstance(out, dict):
            return {k: v.permute(0, 3, 1, 2) for k, v in out.items()}
        return [v.permute(0, 3, 1, 2) for v in out]


class ZooFeatureListNet(_ZooTimmFeatures, FeatureListNet):
    """`feature_cls='list'`: timm's FeatureListNet over a zoo pyramid."""


class ZooFeatureDictNet(_ZooTimmFeatures, FeatureDictNet):
    """`feature_cls='dict'`: timm's FeatureDictNet over a zoo pyramid."""


class ZooFeatureHookNet(_ZooTimmFeatures, FeatureHookNet):
    """`feature_cls='hook'`: timm's FeatureHookNet over a zoo pyramid."""


class ZooFeatureGraphNet(FeatureGraphNet):
    """`feature_cls='fx'` for a family whose timm twin names its modules otherwise (Swin): the graph is
    traced through the renamed view, so timm's node names (`layers.0`, ...) exist."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model.timm_feature_view(), **kwargs)


_ZOO_CLASSES = {FeatureListNet: ZooFeatureListNet, FeatureDictNet: ZooFeatureDictNet, FeatureHookNet: ZooFeatureHookNet}


def _timm_class(feature_cls: Any) -> type | None:
    """timm's list / dict / hook class that `feature_cls` names (as timm's builder parses it), else None."""
    if isinstance(feature_cls, str):
        name = feature_cls.lower()
        name = "hook" if "hook" in name else name
        return {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet}.get(name)
    return feature_cls if feature_cls in _ZOO_CLASSES else None


def resolve_feature_cls(model_cls: type, variant: str, feature_cls: Any) -> Any:
    """The class `build_model_with_cfg` gets for `feature_cls`: the zoo's list / dict / hook wrapper for a
    pyramid (a model with stage modules), a ValueError for the others, anything else unchanged."""
    from ._base import HierarchicalBackbone, IsotropicBackbone, ZooModel

    renamed = getattr(model_cls, "timm_feature_view", None) is not ZooModel.timm_feature_view
    if renamed and (feature_cls is FeatureGraphNet or (isinstance(feature_cls, str) and feature_cls.lower() == "fx")):
        return ZooFeatureGraphNet
    timm_cls = _timm_class(feature_cls)
    if timm_cls is None:
        return feature_cls

    if issubclass(model_cls, HierarchicalBackbone):
        return _ZOO_CLASSES[timm_cls]
    if timm_cls is FeatureHookNet and issubclass(model_cls, IsotropicBackbone):
        return feature_cls  # timm's hooks on the blocks (token sequences), as on timm's ViT
    raise ValueError(
        f"{variant}: feature_cls={feature_cls!r} needs stage modules to walk, and {model_cls.__name__} is "
        "not a pyramid: use the default feature_cls ('getter', maps from forward_intermediates) or 'fx'")
