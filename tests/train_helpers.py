"""Shared helpers of the training tests: a tiny synthetic ImageFolder and the demo's shrunken model."""
import argparse
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(ROOT, 'train_imagenet.py')
# the demo's shrunken PoolFormer (29k params), 32x32 inputs
TINY = ['--model', 'vitzoo_poolformer_s12', '--model-kwargs', 'depths=(1,1,1,1)', 'dims=(8,16,24,32)',
        '--img-size', '32']
FAST = ['-b', '4', '--epochs', '1', '--warmup-epochs', '0', '--workers', '0', '--no-progress',
        '--lr', '1e-3', '--threads', '1']


def make_folder(root, classes=3, n_train=8, n_val=3, size=32, val_classes=None):
    """A tiny ImageFolder: class k is mostly colour channel k, so it is learnable."""
    rng = np.random.default_rng(0)
    for split, n, cls in (('train', n_train, range(classes)),
                          ('val', n_val, val_classes if val_classes is not None else range(classes))):
        for c in cls:
            d = os.path.join(root, split, f'class{c}')
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                a[..., c % 3] += 180
                Image.fromarray(a).save(os.path.join(d, f'{i}.png'))
    return str(root)


def write_corrupt(path):
    with open(path, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n not really a png')


def load_ckpt(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def run_cli(*argv, env=None, timeout=300):
    """train_imagenet.py in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    return subprocess.run([sys.executable, TRAIN_PY, *argv], capture_output=True, text=True,
                          timeout=timeout, env=e)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
