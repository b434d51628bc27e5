#!/usr/bin/env python3
"""Evaluate a timm / vitzoo model on an ImageFolder split: top-1, top-5 and cross-entropy.

    python tools/validate.py /data/imagenet --model vitzoo_swin_tiny_patch4_window7_224 --pretrained
    python tools/validate.py data/digits --checkpoint output/demo/digits-<time>/model_best.pth.tar

The data pipeline is timm's eval transform for the model (resolve_data_config: resize,
center crop, normalisation). A `--checkpoint` written by train_imagenet.py is loaded with
weights_only=True; its saved training args fill --model, --num-classes, --model-kwargs and
the input size / crop / normalisation when those are not given.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import suppress
from functools import partial
from typing import Optional, Sequence

import torch

import timm
from timm.data import create_loader, resolve_data_config
from timm.models import load_checkpoint
from timm.utils import ParseKwargs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_imagenet import (  # noqa: E402  (the shared data/model helpers and evaluation loop)
    StrictImageDataset, check_model_name, count_classes, evaluate, find_split_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('data', nargs='?', metavar='DIR', help='data root (or --data-dir)')
    p.add_argument('--data-dir', metavar='DIR')
    p.add_argument('--split', default='validation', help="split folder ('validation' finds 'val')")
    p.add_argument('--model', default=None, help='default: the one recorded in --checkpoint')
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--checkpoint', default='', metavar='PATH')
    p.add_argument('--use-ema', action='store_true', help="use the checkpoint's EMA weights")
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs, metavar='KEY=VALUE')
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--input-size', type=int, nargs=3, default=None, metavar='N')
    p.add_argument('--crop-pct', type=float, default=None)
    p.add_argument('--interpolation', default='')
    p.add_argument('--mean', type=float, nargs='+', default=None)
    p.add_argument('--std', type=float, nargs='+', default=None)
    p.add_argument('-b', '--batch-size', type=int, default=64)
    p.add_argument('-j', '--workers', type=int, default=2)
    p.add_argument('--amp', action='store_true', help='autocast (bf16 on CPU, fp16 on CUDA)')
    p.add_argument('--amp-dtype', default=None, choices=('float16', 'bfloat16'))
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--device', default=None)
    p.add_argument('--no-progress', action='store_true')
    return p


def _checkpoint_args(path: str) -> dict:
    """The training args stored in a train_imagenet.py checkpoint ({} when absent)."""
    from timm.utils.checkpoint_saver import load_checkpoint_metadata
    try:
        meta = load_checkpoint_metadata(path)
    except Exception:  # noqa: BLE001  (a plain state dict or an unreadable file: load_checkpoint reports it)
        return {}
    saved = meta.get('args') if isinstance(meta, dict) else None
    return vars(saved) if isinstance(saved, argparse.Namespace) else dict(saved or {})


def validate(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the evaluation; returns {'model', 'top1', 'top5', 'loss', 'images', 'seconds'}."""
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or args.data
    split_dir = find_split_dir(data_dir, args.split)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')

    saved = _checkpoint_args(args.checkpoint) if args.checkpoint else {}
    name = args.model or saved.get('model')
    if not name:
        raise ValueError('no --model given and none recorded in the checkpoint')
    check_model_name(name)
    model_kwargs = args.model_kwargs if args.model_kwargs is not None else saved.get('model_kwargs') or {}
    for key in ('img_size', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation'):
        if not getattr(args, key) and saved.get(key):  # evaluate the way the run did
            setattr(args, key, saved[key])
    dataset = StrictImageDataset(split_dir)
    num_classes = args.num_classes or saved.get('num_classes') or \
        (None if args.pretrained else count_classes(dataset))

    model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes,
                              **model_kwargs)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema, weights_only=True)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    data_config = resolve_data_config(vars(args), model=model)
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        crop_pct=data_config['crop_pct'], crop_mode=data_config.get('crop_mode'),
        num_workers=args.workers, device=device, use_prefetcher=False)

    amp = suppress
    if args.amp:
        dtype = getattr(torch, args.amp_dtype or ('float16' if device.type == 'cuda' else 'bfloat16'))
        amp = partial(torch.autocast, device_type=device.type, dtype=dtype)
    eval_args = argparse.Namespace(prefetcher=False, channels_last=args.channels_last,
                                   progress=not args.no_progress, rank=0, distributed=False)
    t0 = time.perf_counter()
    metrics = evaluate(model, loader, eval_args, device, amp, desc=f'validate {name}')
    return dict(model=name, **metrics, images=len(dataset), seconds=time.perf_counter() - t0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        r = validate(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f"{r['model']}: top1 {r['top1']:.3f}  top5 {r['top5']:.3f}  loss {r['loss']:.4f}  "
          f"({r['images']} images, {r['seconds']:.1f}s)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
