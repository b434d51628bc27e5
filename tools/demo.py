#!/usr/bin/env python3
"""`make demo`: train a small zoo model on handwritten digits on the CPU, then profile the zoo.

1. exports scikit-learn's bundled 8x8 digits to data/digits/{train,val} (once, no download);
2. trains a shrunken `vitzoo_poolformer_s12` with train_imagenet.py and configs/demo/digits.yaml
   (about two minutes on two cores) and prints its validation top-1; exits 1 below 90%;
3. prints parameters, GMACs and CPU latency of a few zoo models at 224x224.

    python tools/demo.py [--epochs N] [--threads N] [--no-profile]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import timm  # noqa: E402
import vitzoo  # noqa: E402,F401  (registers the zoo)
import train_imagenet  # noqa: E402
from export_digits import export_digits  # noqa: E402
from profile_models import markdown_table, profile_model  # noqa: E402

CONFIG = os.path.join(ROOT, 'configs', 'demo', 'digits.yaml')
DEMO_MODEL = 'vitzoo_poolformer_s12'
# used only while the zoo model is missing (e.g. a partial checkout): a tiny timm convnet
FALLBACK_MODEL, FALLBACK_KWARGS = 'test_convnext', []
PROFILE_MODELS = (
    'vitzoo_poolformer_s12', 'vitzoo_swin_tiny_patch4_window7_224', 'vitzoo_nat_mini',
    'vitzoo_evit_deit_small_patch16_224',
)
TARGET_TOP1 = 90.0


def pick_threads() -> int:
    """All cores on an idle machine, one when it is already busy (threads then only contend)."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores
    except OSError:  # pragma: no cover  (no load average on this platform)
        busy = False
    return 1 if busy else cores


def train_digits(data_dir: str, out_dir: str, threads: int, epochs: Optional[int] = None,
                 progress: bool = True) -> dict:
    """Train the demo recipe; returns train_imagenet.main's result."""
    argv = [data_dir, '--config', CONFIG, '--output', out_dir,
            '--experiment', time.strftime('digits-%Y%m%d-%H%M%S'), '--threads', str(threads)]
    if not timm.is_model(DEMO_MODEL):
        print(f'warning: {DEMO_MODEL} is not registered; the demo trains timm\'s {FALLBACK_MODEL}',
              file=sys.stderr)
        argv += ['--model', FALLBACK_MODEL, '--model-kwargs', *FALLBACK_KWARGS]
    if epochs is not None:
        argv += ['--epochs', str(epochs)]
    if not progress:
        argv.append('--no-progress')
    return train_imagenet.main(argv)


def profile_zoo(names: Sequence[str], budget_s: float = 40.0) -> list[dict]:
    """Params, GMACs and batch-1 CPU latency at 224 for the registered `names`, within a time budget."""
    rows, t0 = [], time.perf_counter()
    for name in names:
        if not timm.is_model(name):
            continue
        if time.perf_counter() - t0 > budget_s:
            print(f'(profile time budget spent, skipping {name} and later)', file=sys.stderr)
            break
        r = profile_model(name, device='cpu', batch_size=1, warmup=1, repeats=3)
        rows.append(dict(model=r['model'], params_m=r['params_m'], gmacs=r.get('gmacs'),
                         cpu_ms_b1=r['ms_b1'], img_s=1e3 / r['ms_b1']))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-dir', default=os.path.join(ROOT, 'data', 'digits'))
    p.add_argument('--output', default=os.path.join(ROOT, 'output', 'demo'))
    p.add_argument('--epochs', type=int, default=None, help='override the recipe (10)')
    p.add_argument('--threads', type=int, default=None, help='default: cores, or 1 on a busy machine')
    p.add_argument('--no-profile', action='store_true')
    p.add_argument('--no-progress', action='store_true')
    args = p.parse_args(argv)

    logging.getLogger('timm.utils.checkpoint_saver').setLevel(logging.WARNING)  # per-epoch file lists
    t_start = time.perf_counter()
    counts = export_digits(args.data_dir)
    print(f"digits: {counts['train']} train / {counts['val']} val images in {args.data_dir}")
    threads = args.threads or pick_threads()
    print(f'training on CPU with {threads} thread(s), recipe {os.path.relpath(CONFIG, ROOT)}')
    result = train_digits(args.data_dir, args.output, threads, args.epochs, not args.no_progress)
    top1 = result['eval']['top1']
    t_train = time.perf_counter() - t_start
    print(f"\nvalidation top-1 {top1:.2f}% (last epoch; best {result['best_metric']:.2f}%) "
          f"in {t_train:.0f}s, run saved in {result['output_dir']}")
    best = os.path.relpath(os.path.join(result['output_dir'], 'model_best.pth.tar'), os.getcwd())
    print(f'evaluate it again with: python tools/validate.py {os.path.relpath(args.data_dir)} '
          f'--checkpoint {best}')

    if not args.no_profile:
        torch.set_num_threads(threads)
        print('\nzoo models on CPU, batch 1, 224x224 (fvcore GMACs; latency median of 3):')
        print(markdown_table(profile_zoo(PROFILE_MODELS)))
    print(f'\ndemo finished in {time.perf_counter() - t_start:.0f}s')
    if top1 < TARGET_TOP1:
        print(f'FAILED: top-1 {top1:.2f}% is below the {TARGET_TOP1:.0f}% target', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
