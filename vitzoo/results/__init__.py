"""Official parameter counts, GMACs and ImageNet top-1 of the zoo's variants, with their sources.

``official.csv`` holds one row per zoo model: the official code's parameters (M) and GMACs (one
multiply-add = one MAC, at ``img_size``), the paper's / official README's ImageNet-1k top-1, and
timm's measured top-1 of the twin's weights (timm's ``results-imagenet.csv``). Each number has a
source key, spelled out in ``sources.csv``. An empty cell means no source was found; it is never
filled by a guess.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources
from typing import Dict, Optional

__all__ = ["official", "official_table", "source_text"]

_NUMBERS = ("img_size", "params_m", "gmacs", "top1", "timm_top1")


def _read(name: str) -> list[dict]:
    with resources.files(__name__).joinpath(name).open(newline="") as f:
        return list(csv.DictReader(f))


@lru_cache(maxsize=1)
def _sources() -> Dict[str, str]:
    return {row["key"]: row["source"] for row in _read("sources.csv")}


def source_text(key: str) -> str:
    """The full source of a key (``TIMM:<tag>`` keeps its tag: ``"<timm source> [<tag>]"``)."""
    if not key:
        return ""
    base, _, tag = key.partition(":")
    text = _sources()[base]
    return f"{text} [{tag}]" if tag else text


@lru_cache(maxsize=1)
def official_table() -> Dict[str, dict]:
    """Model name -> its row: numbers as floats (``None`` where empty), sources as full text."""
    table = {}
    for row in _read("official.csv"):
        out: dict = dict(row)
        for key in _NUMBERS:
            out[key] = float(row[key]) if row[key] else None
        for key in [k for k in row if k.endswith("_source")]:
            out[key] = source_text(row[key])
        table[row["model"]] = out
    return table


def official(model: str) -> Optional[dict]:
    """The official row of zoo model ``model`` (``None`` when the data file has none)."""
    return official_table().get(model)
