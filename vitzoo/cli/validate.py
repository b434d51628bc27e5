"""`vitzoo-validate` / `tools/validate.py`: top-1, top-5 and cross-entropy of a model or checkpoint
on an ImageFolder split.

    vitzoo-validate /data/imagenet --model vitzoo_swin_tiny_patch4_window7_224 --pretrained
    vitzoo-validate data/digits --checkpoint output/demo/<run>/model_best.pth.tar

A checkpoint loads with weights_only=True (a refusal is reported before anything else); its
saved training args fill --model, --num-classes, --model-kwargs and the input size / crop /
normalisation, its class map orders the split's classes as in training, and by default the
weights that ranked it (the EMA ones when model_best was chosen by EMA accuracy) are evaluated.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import suppress
from functools import partial
from typing import Optional, Sequence

import torch

import timm
from timm.data import create_loader, resolve_data_config
from timm.utils import ParseKwargs

from . import checkpoints as ckpts
from .data import SkippingImageDataset, check_same_classes, find_split_dir, preflight
from .engine import evaluate
from .errors import CheckpointError, ConfigError, DataError, exit_code, one_line
from .help_format import DefaultsOnceFormatter
from .img_size import check_runs_at, create_at_size, size_from_args
from .train import check_model_name, count_classes
from .train_args import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog='vitzoo-validate', description=__doc__.split('\n')[0],
                      formatter_class=DefaultsOnceFormatter)
    p.add_argument('data', nargs='?', default=None, metavar='DIR', help='data root (or --data-dir)')
    p.add_argument('--data-dir', default=None, metavar='DIR', help='data root holding the split folder')
    p.add_argument('--split', default='validation', help="split folder ('validation' finds 'val')")
    p.add_argument('--model', default=None, help='model name (default: the one recorded in --checkpoint)')
    p.add_argument('--pretrained', action='store_true', help='load the pretrained weights')
    p.add_argument('--checkpoint', default='', metavar='PATH', help='a training checkpoint to evaluate')
    p.add_argument('--weights', default='auto', choices=('auto', 'model', 'ema'),
                   help="which weights of --checkpoint: 'auto' = the ones that ranked it (EMA if so recorded)")
    p.add_argument('--use-ema', action='store_true', help="same as --weights ema")
    p.add_argument('--num-classes', type=int, default=None, help='classes (default: checkpoint or split)')
    p.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs, metavar='KEY=VALUE',
                   help='extra create_model kwargs (default: the checkpoint\'s)')
    p.add_argument('--img-size', type=int, default=None, metavar='N',
                   help="image size; the model is built at it where it can be (default: checkpoint's or model's)")
    p.add_argument('--input-size', type=int, nargs=3, default=None, metavar='N', help='C H W, overrides --img-size')
    p.add_argument('--crop-pct', type=float, default=None, help='center-crop fraction (default: checkpoint or model)')
    p.add_argument('--interpolation', default='', help='resize interpolation (default: checkpoint or model)')
    p.add_argument('--mean', type=float, nargs='+', default=None, help='normalisation mean')
    p.add_argument('--std', type=float, nargs='+', default=None, help='normalisation std')
    p.add_argument('-b', '--batch-size', type=int, default=64, help='batch size')
    p.add_argument('-j', '--workers', type=int, default=2, help='data-loading processes')
    p.add_argument('--amp', action='store_true', help='autocast (bf16 on CPU, fp16 on CUDA)')
    p.add_argument('--amp-dtype', default=None, choices=('float16', 'bfloat16'), help='autocast dtype')
    p.add_argument('--channels-last', action='store_true', help='channels-last memory format')
    p.add_argument('--device', default=None, help="default: 'cuda' when available, else 'cpu'")
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def validate(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the evaluation; returns {'model', 'weights', 'top1', 'top5', 'loss', 'images', 'seconds',
    'bad_images'}: `images` counts the scored images, `bad_images` the unreadable ones (skipped,
    found the way the trainer finds them: a header check of every file, then any decode failure)."""
    args = build_parser().parse_args(argv)
    if not args.model and not args.checkpoint:
        raise ConfigError('say what to evaluate: --model NAME (with --pretrained for its weights) '
                          'or --checkpoint PATH')
    ckpt, saved = None, {}
    if args.checkpoint:  # the refusal of an unsafe file comes first
        ckpt = ckpts.load_file(args.checkpoint)
        saved = ckpts.saved_args(ckpt)
    split_dir = find_split_dir(args.data_dir or args.data, args.split)
    name = args.model or saved.get('model')
    if not name:
        raise ConfigError('no --model given and none recorded in the checkpoint')
    check_model_name(name)
    model_kwargs = args.model_kwargs if args.model_kwargs is not None else saved.get('model_kwargs') or {}
    for key in ('img_size', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation'):
        if not getattr(args, key) and saved.get(key):  # evaluate the way the run did
            setattr(args, key, saved[key])
    class_map = ckpt.get('class_to_idx') if ckpt else None
    if class_map:
        check_same_classes(class_map, split_dir)
    dataset = SkippingImageDataset(split_dir, class_map=dict(class_map) if class_map else None, substitute=False)
    num_classes = args.num_classes or saved.get('num_classes') or \
        (None if args.pretrained else count_classes(dataset))

    size = size_from_args(args.img_size, args.input_size)  # built at that size where it can be
    model = create_at_size(name, size, pretrained=args.pretrained, num_classes=num_classes, **model_kwargs)
    check_runs_at(model, name, size, args.input_size[0] if args.input_size else 3,
                  '--input-size' if args.input_size else '--img-size')
    weights = 'pretrained' if args.pretrained else 'initial'
    if ckpt is not None:
        choice = 'ema' if args.use_ema else args.weights
        if choice == 'auto':
            choice = 'ema' if ckpt.get('best_weights') == 'ema' and 'state_dict_ema' in ckpt else 'model'
        ckpts.load_weights(model, ckpts.model_state(ckpt, use_ema=choice == 'ema'), args.checkpoint)
        weights = choice
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
    bad = set(preflight(dataset, strict=False))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # workers append what fails to decode here
        dataset.bad_log = os.path.join(tmp, 'bad_images.txt')
        metrics = evaluate(model, loader, eval_args, device, amp, desc=f'validate {name}')
        if os.path.exists(dataset.bad_log):
            with open(dataset.bad_log) as f:
                bad.update(ln.strip() for ln in f if ln.strip())
    return dict(model=name, weights=weights, **metrics, images=len(dataset) - len(bad),
                bad_images=sorted(bad), seconds=time.perf_counter() - t0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point: one line per error, exit codes as in vitzoo.cli.errors."""
    try:
        r = validate(argv)
    except (ConfigError, CheckpointError, DataError, FileNotFoundError, ValueError) as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return exit_code(e)
    bad = r['bad_images']
    if bad:
        print(f"warning: {len(bad)} unreadable image(s) skipped: " + ', '.join(bad[:10])
              + (' ...' if len(bad) > 10 else ''), file=sys.stderr)
    skipped = f", {len(bad)} unreadable skipped" if bad else ''
    print(f"{r['model']} ({r['weights']} weights): top1 {r['top1']:.3f}  top5 {r['top5']:.3f}  "
          f"loss {r['loss']:.4f}  ({r['images']} images scored{skipped}, {r['seconds']:.1f}s)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
