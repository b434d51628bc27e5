"""`--img-size` with one meaning in vitzoo-train, vitzoo-validate and vitzoo-profile.

The model is built at the requested size where its constructor takes `img_size` (ViT-style
position embeddings, Swin's window layout), and one forward at batch 1 proves it runs there;
otherwise the user gets one line naming the flag, before any run folder or loader worker exists.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn

import timm

from .errors import ConfigError, one_line

Size = Optional[tuple[int, int]]


def parse_img_size(text: Union[str, int]) -> tuple[int, int]:
    """'224' -> (224, 224); '800x1333' (H x W) -> (800, 1333); argparse type for --img-size."""
    s = str(text).strip().lower()
    parts = s.split('x') if 'x' in s else [s, s]
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 224 or 800x1333), got {text!r}") from None
    if len(parts) != 2 or h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive sides, got {text!r}")
    return h, w


def size_arg(size: Size) -> Union[int, tuple[int, int], None]:
    """What `img_size=` gets: an int for a square (every timm model takes that), else (H, W)."""
    if size is None:
        return None
    return size[0] if size[0] == size[1] else tuple(size)


def fmt_size(size: Size) -> str:
    return '' if size is None else (str(size[0]) if size[0] == size[1] else f'{size[0]}x{size[1]}')


def size_from_args(img_size: Optional[int], input_size: Optional[Sequence[int]]) -> Size:
    """(H, W) asked for by a tool's --input-size C H W or --img-size N, else None."""
    if input_size:
        return int(input_size[-2]), int(input_size[-1])
    if img_size:
        return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return None


def create_at_size(name: str, size: Size, **kwargs: Any) -> nn.Module:
    """timm.create_model, with `img_size` when a size is asked for and the model takes it.

    A TypeError from the constructor with img_size is retried without it (most convnets have no
    such argument); a TypeError then is the caller's (bad model kwargs)."""
    if size is not None and 'img_size' not in kwargs:
        try:
            return timm.create_model(name, img_size=size_arg(size), **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, **kwargs)


def check_runs_at(model: nn.Module, name: str, size: Size, in_chans: int = 3, flag: str = '--img-size') -> None:
    """ConfigError (one line naming `flag`) unless one eval forward at `size` works (skipped at the
    model's own input size, which it was built for)."""
    own = tuple((getattr(model, 'pretrained_cfg', None) or {}).get('input_size', ())[-2:])
    if size is None or own == tuple(size):
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, *size))
    except Exception as e:  # the model's own refusal (divisibility, fixed position embedding, ...)
        raise ConfigError(f'{name} cannot take {flag} {fmt_size(size)}: {one_line(e)}') from None
    finally:
        model.train(was_training)
