#!/usr/bin/env python3
"""Export scikit-learn's bundled handwritten digits to an ImageFolder for the demo.

`sklearn.datasets.load_digits` ships 1797 8x8 grey images inside the package, so the demo
needs no download. They are split 80/20 per class with a fixed seed, upscaled and written
as RGB PNGs to `<out>/{train,val}/<digit>/<index>.png`. An existing export is kept.

    python tools/export_digits.py --out data/digits --size 32
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data', 'digits')
_MARKER = 'export.json'


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise ImportError("the digits demo needs scikit-learn: pip install 'vitzoo[demo]'") from e
    return load_digits()


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation samples: `val_fraction` of each class, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_val[idx[:int(round(len(idx) * val_fraction))]] = True
    return is_val


def export_digits(
        out_dir: str = DEFAULT_OUT,
        size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
        force: bool = False,
) -> dict[str, int]:
    """Write the digits ImageFolder once; returns the image count per split.

    A previous export with the same settings (recorded in `export.json`) is reused as is.
    """
    if size < 8:
        raise ValueError(f'size must be at least 8 (the digits are 8x8), got {size}')
    if not 0 < val_fraction < 1:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
    settings = dict(size=size, val_fraction=val_fraction, seed=seed)
    marker = os.path.join(out_dir, _MARKER)
    if not force and os.path.isfile(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get('settings') == settings:
            return done['counts']

    digits = _load_digits()
    images = (digits.images / 16.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    labels = digits.target
    is_val = stratified_split(labels, val_fraction, seed)
    counts = {'train': 0, 'val': 0}
    for i, (img, label) in enumerate(zip(images, labels)):
        split = 'val' if is_val[i] else 'train'
        class_dir = os.path.join(out_dir, split, str(int(label)))
        os.makedirs(class_dir, exist_ok=True)
        pil = Image.fromarray(img, mode='L').resize((size, size), Image.BICUBIC).convert('RGB')
        pil.save(os.path.join(class_dir, f'{i:04d}.png'))
        counts[split] += 1
    with open(marker, 'w') as f:
        json.dump(dict(settings=settings, counts=counts), f)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=DEFAULT_OUT, help='output folder')
    p.add_argument('--size', type=int, default=32, help='image side in pixels')
    p.add_argument('--val-fraction', type=float, default=0.2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--force', action='store_true', help='export again even if present')
    args = p.parse_args(argv)
    counts = export_digits(args.out, args.size, args.val_fraction, args.seed, args.force)
    print(f"digits in {args.out}: {counts['train']} train, {counts['val']} val images")
    return 0


if __name__ == '__main__':
    sys.exit(main())
