"""Registration into timm's registry under the `vitzoo_` prefix, never over a timm name."""
from __future__ import annotations

import fnmatch
from typing import Callable

import timm
from timm.models import register_model as _timm_register_model

PREFIX = "vitzoo_"


def register_model(fn: Callable) -> Callable:
    """timm's `register_model`, refusing names without our prefix or already taken.

    timm only warns when a name is registered twice; we refuse, so a zoo model can never
    shadow one of timm's (or be registered twice by a reload).
    """
    name = fn.__name__
    if not name.startswith(PREFIX):
        raise ValueError(f"zoo model names must start with {PREFIX!r}: {name!r}")
    if timm.is_model(name):
        raise ValueError(f"model name {name!r} is already registered in timm")
    return _timm_register_model(fn)


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names of the zoo's models matching `pattern` (with or without the `vitzoo_` prefix)."""
    if not pattern.startswith(PREFIX) and not pattern.startswith("*"):
        pattern = PREFIX + pattern
    names = timm.list_models(PREFIX + "*", pretrained=pretrained)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
