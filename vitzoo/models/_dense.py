"""What the official detection / segmentation backbones add to a classification pyramid.

The dense backbones of NAT / DiNAT / DiNAT-s (SHI-Labs `detection/`, `segmentation/`), Swin
(`Swin-Transformer-Object-Detection`, `mmdet/models/backbones/swin_transformer.py`) and BiFormer
(`object_detection/models_mm/biformer_mm.py`, `semantic_segmentation/models_mm/biformer_mm.py`) and
PoolFormer (sail-sg/poolformer `models/poolformer.py`, `fork_feat=True`) are the classification
model without its final norm and head, plus one norm per stage output (`norm0..norm3` /
`extra_norms.0..3` / PoolFormer's `norm0/2/4/6`) applied to the features they return. Their checkpoints are
what mmdet / mmseg save: `{'meta', 'state_dict': {'backbone.*', 'neck.*', 'rpn_head.*', ...}}`.

`FeatureNormsMixin` gives a hierarchical family those per-output norms (model argument
`feature_norms=True`); `backbone_state` and `take_feature_norms` are the two steps a
family's `checkpoint_filter_fn` adds to read such a checkpoint.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

from ._base import _to_fmt, unwrap_state_dict

__all__ = ["FeatureNormsMixin", "backbone_state", "dense_backbone_weights", "take_feature_norms"]


class FeatureNormsMixin:
    """Per-stage output norms for a `HierarchicalBackbone` (list it first among the bases).

    With `feature_norms` built (`init_feature_norms(True, ...)`), `forward_intermediates` (so also
    `features_only`) returns `feature_norms[i](stage_i output)` for every stage taken, as the
    official dense backbones do; without them nothing changes. Pruning drops the norms of cut stages.
    """

    # `self.feature_norms`: nn.ModuleList or None (no class annotation: TorchScript would read it)

    def init_feature_norms(self, enabled: bool, dims: Sequence[int], norm_layer: Callable[[int], nn.Module]) -> None:
        self.feature_norms = nn.ModuleList([norm_layer(int(d)) for d in dims]) if enabled else None

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The base's intermediates, each passed through its stage's output norm when there are norms."""
        if self.feature_norms is None:
            return super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, _ = feature_take_indices(len(self.stages), indices)
        native = self.output_fmt
        out = super().forward_intermediates(x, indices, norm, stop_early, native, intermediates_only)
        feats = out if intermediates_only else out[1]
        feats = [_to_fmt(self.feature_norms[i](f), native, output_fmt) for i, f in zip(sorted(set(take_indices)), feats)]
        return feats if intermediates_only else (out[0], feats)

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        take = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if self.feature_norms is not None:
            self.feature_norms = self.feature_norms[:len(self.stages)]
        return take


def dense_backbone_weights(state_dict: dict[str, Any]) -> dict[str, Any]:
    """The backbone of an mmdet / mmseg checkpoint: `backbone.*` keys without the prefix (neck and
    heads dropped). A state dict without `backbone.` keys is returned unchanged."""
    if not any(k.startswith("backbone.") for k in state_dict):
        return state_dict
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}


def backbone_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's weights in a checkpoint file (`unwrap_state_dict`), and of those the backbone of an
    mmdet / mmseg detector (`dense_backbone_weights`)."""
    return dense_backbone_weights(unwrap_state_dict(checkpoint))


def take_feature_norms(state_dict: dict[str, Any], pattern: str, model: nn.Module) -> dict[str, Any]:
    """Rename the official per-output norms (`pattern` matches the module prefix, group 1 = stage)
    to `feature_norms.<stage>.`; a clear error when `model` was built without `feature_norms=True`."""
    rx = re.compile(pattern)
    found = sorted({m.group(0) for k in state_dict for m in [rx.match(k)] if m})
    if not found:
        return state_dict
    if getattr(model, "feature_norms", None) is None:
        raise ValueError(
            f"this checkpoint holds the per-output norms of an official detection/segmentation backbone "
            f"({', '.join(n.rstrip('.') for n in found)}); create the model with feature_norms=True "
            f"(e.g. timm.create_model(name, features_only=True, feature_norms=True)) to load them")
    return {rx.sub(lambda m: f"feature_norms.{m.group(1)}.", k, count=1): v for k, v in state_dict.items()}
