#!/usr/bin/env python3
"""Train any timm-registered model (the vitzoo ones included) on an ImageFolder dataset.

timm is used as a library: its data pipeline, mixup/cutmix, optimizer and scheduler
factories, EMA, AMP scaler, checkpoint saver and summary writer. Flags follow timm's
train.py; `--config recipe.yaml` fills them (YAML keys are the argparse dests, e.g. `lr`,
`drop_path`, `model_kwargs`), and flags given on the command line win over the file.

    python train_imagenet.py /data/imagenet --config configs/swin_tiny_in1k.yaml
    torchrun --nproc_per_node=8 train_imagenet.py /data/imagenet --config configs/swin_tiny_in1k.yaml

The data directory holds one folder per split (`train/`, `val/` or `validation/`), each with
one folder per class. Runs as a single process on CPU or one GPU; under torchrun (LOCAL_RANK,
WORLD_SIZE set) it trains with DDP and only rank 0 logs and writes files.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import time
from collections import OrderedDict
from contextlib import suppress
from functools import partial
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import yaml
from PIL import Image
from tqdm import tqdm

import timm
from timm.data import (
    FastCollateMixup, ImageDataset, Mixup, create_dataset, create_loader, resolve_data_config)
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    CheckpointSaver, ModelEmaV3, NativeScaler, ParseKwargs, accuracy, distribute_bn, get_outdir,
    init_distributed_device, random_seed, setup_default_logging, update_summary)

try:  # registers the zoo's models in timm; the script still trains timm's own without it
    import vitzoo  # noqa: F401
except ImportError:  # pragma: no cover
    vitzoo = None

_logger = logging.getLogger('train')

_SPLIT_SYNONYMS = {
    'train': ('train', 'training'),
    'training': ('training', 'train'),
    'validation': ('validation', 'val'),
    'val': ('val', 'validation'),
}


# ----------------------------------------------------------------------------------------------
# Arguments and YAML recipes
# ----------------------------------------------------------------------------------------------

def _floats(n: str) -> dict:
    return dict(type=float, nargs=n)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; dests (and so YAML keys) follow timm's train.py."""
    p = argparse.ArgumentParser(
        description='Train a timm / vitzoo model on an ImageFolder dataset',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('-c', '--config', default='', metavar='FILE',
                   help='YAML recipe; its keys are the dests below and fill the defaults')

    g = p.add_argument_group('Dataset')
    g.add_argument('data', nargs='?', metavar='DIR', help='data root (alternative to --data-dir)')
    g.add_argument('--data-dir', metavar='DIR', help='data root with train/ and val/ folders')
    g.add_argument('--dataset', default='', metavar='NAME',
                   help="'' for an image folder, else a timm dataset name (e.g. torch/cifar10)")
    g.add_argument('--train-split', default='train', metavar='NAME')
    g.add_argument('--val-split', default='validation', metavar='NAME',
                   help="'validation' also finds a 'val' folder; '' to skip evaluation")
    g.add_argument('--class-map', default='', metavar='FILE')
    g.add_argument('--input-img-mode', default=None, metavar='MODE')

    g = p.add_argument_group('Model')
    g.add_argument('--model', default='vitzoo_poolformer_s12', metavar='NAME')
    g.add_argument('--pretrained', action='store_true', help='start from pretrained weights')
    g.add_argument('--pretrained-path', default=None, metavar='PATH',
                   help='load pretrained weights from this file instead of the hub')
    g.add_argument('--initial-checkpoint', default='', metavar='PATH',
                   help='load model weights (weights_only) before training')
    g.add_argument('--resume', default='', metavar='PATH',
                   help='resume model, optimizer and epoch from a checkpoint')
    g.add_argument('--no-resume-opt', action='store_true', help='do not restore the optimizer')
    g.add_argument('--num-classes', type=int, default=None, metavar='N',
                   help='classes; default: the number of class folders in the train split')
    g.add_argument('--gp', default=None, metavar='POOL', help='global pool type')
    g.add_argument('--img-size', type=int, default=None, metavar='N', help='image size')
    g.add_argument('--in-chans', type=int, default=None, metavar='N')
    g.add_argument('--input-size', default=None, type=int, nargs=3, metavar='N',
                   help='C H W, overrides --img-size')
    g.add_argument('--crop-pct', default=None, type=float, metavar='PCT')
    g.add_argument('--mean', default=None, metavar='MEAN', **_floats('+'))
    g.add_argument('--std', default=None, metavar='STD', **_floats('+'))
    g.add_argument('--interpolation', default='', metavar='NAME')
    g.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='per process')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--grad-checkpointing', action='store_true')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   metavar='KEY=VALUE', help='extra create_model kwargs')
    g.add_argument('--drop', type=float, default=None, metavar='PCT', help='dropout rate')
    g.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                   help='stochastic depth rate')

    g = p.add_argument_group('Optimizer')
    g.add_argument('--opt', default='adamw', metavar='NAME')
    g.add_argument('--opt-eps', default=None, type=float, metavar='EPS')
    g.add_argument('--opt-betas', default=None, metavar='BETA', **_floats('+'))
    g.add_argument('--momentum', type=float, default=0.9, metavar='M')
    g.add_argument('--weight-decay', type=float, default=0.05)
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value', 'agc'))
    g.add_argument('--layer-decay', type=float, default=None)
    g.add_argument('--opt-kwargs', dest='opt_args', nargs='*', default={}, action=ParseKwargs,
                   metavar='KEY=VALUE')

    g = p.add_argument_group('Learning rate schedule')
    g.add_argument('--sched', default='cosine', metavar='NAME')
    g.add_argument('--sched-on-updates', action='store_true', help='step the schedule per update')
    g.add_argument('--lr', type=float, default=None, metavar='LR',
                   help='learning rate; default: lr_base * global_batch / lr_base_size')
    g.add_argument('--lr-base', type=float, default=1e-3, metavar='LR')
    g.add_argument('--lr-base-size', type=int, default=1024, metavar='N')
    g.add_argument('--lr-base-scale', default='linear', choices=('linear', 'sqrt'))
    g.add_argument('--warmup-lr', type=float, default=1e-6, metavar='LR')
    g.add_argument('--min-lr', type=float, default=1e-5, metavar='LR')
    g.add_argument('--epochs', type=int, default=300, metavar='N')
    g.add_argument('--start-epoch', type=int, default=None, metavar='N')
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+')
    g.add_argument('--decay-epochs', type=float, default=90)
    g.add_argument('--warmup-epochs', type=int, default=5)
    g.add_argument('--warmup-prefix', action='store_true')
    g.add_argument('--cooldown-epochs', type=int, default=0)
    g.add_argument('--patience-epochs', type=int, default=10)
    g.add_argument('--decay-rate', type=float, default=0.1)

    g = p.add_argument_group('Augmentation and regularization')
    g.add_argument('--no-aug', action='store_true')
    g.add_argument('--scale', default=[0.08, 1.0], metavar='PCT', **_floats('+'))
    g.add_argument('--ratio', default=[3. / 4., 4. / 3.], metavar='RATIO', **_floats('+'))
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.)
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--aa', default=None, metavar='NAME', help='AutoAugment policy, e.g. rand-m9-mstd0.5-inc1')
    g.add_argument('--aug-repeats', type=int, default=0,
                   help='repeated augmentation count (distributed runs only)')
    g.add_argument('--reprob', type=float, default=0., help='random erase probability')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--mixup', type=float, default=0.)
    g.add_argument('--cutmix', type=float, default=0.)
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'))
    g.add_argument('--mixup-off-epoch', type=int, default=0, help='turn mixup off from this epoch')
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--train-interpolation', default='random')

    g.add_argument('--keep-rate-warmup', type=float, nargs=2, default=None, metavar=('START', 'END'),
                   help="EViT-style models (set_keep_rate): keep all tokens until epoch START, then "
                        "cosine down to the model's keep rate at END (official: 10 110)")

    g = p.add_argument_group('EMA')
    g.add_argument('--model-ema', action='store_true')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-force-cpu', action='store_true')
    g.add_argument('--model-ema-warmup', action='store_true')

    g = p.add_argument_group('Runtime')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--log-interval', type=int, default=50, metavar='N')
    g.add_argument('--checkpoint-hist', type=int, default=3, metavar='N')
    g.add_argument('-j', '--workers', type=int, default=4, metavar='N')
    g.add_argument('--amp', action='store_true', help='mixed precision (torch.autocast)')
    g.add_argument('--amp-dtype', default=None, choices=('float16', 'bfloat16'),
                   help='default: float16 on CUDA, bfloat16 on CPU')
    g.add_argument('--device', default=None, help="default: 'cuda' when available, else 'cpu'")
    g.add_argument('--threads', type=int, default=None, metavar='N',
                   help='torch CPU threads (default: torch decides); 1 is fastest on a busy machine')
    g.add_argument('--no-prefetcher', action='store_true')
    g.add_argument('--pin-mem', action='store_true')
    g.add_argument('--dist-bn', default='reduce', choices=('reduce', 'broadcast', ''))
    g.add_argument('--output', default='', metavar='DIR', help='default: ./output/train')
    g.add_argument('--experiment', default='', metavar='NAME', help='run folder name')
    g.add_argument('--eval-metric', default='top1', choices=('top1', 'top5', 'loss'))
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True,
                   help='tqdm progress bar per epoch')
    return p


def _config_dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}


def _coerce(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """Give a YAML value the type argparse would have given the same text on the command line."""
    if isinstance(action, ParseKwargs):
        if isinstance(value, dict):
            return value
        ns = argparse.Namespace()
        action(None, ns, list(value) if isinstance(value, (list, tuple)) else [value])
        return getattr(ns, action.dest)
    if value is None or action.type is None:
        return value
    try:
        if isinstance(value, (list, tuple)):
            return [action.type(v) for v in value]
        return action.type(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f'bad value {value!r} for key {key!r} in {path}: {e}') from None


def load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """Read a YAML recipe; every key must be one of the parser's dests."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f'{path} must hold a mapping of argument names to values')
    dests = _config_dests(parser)
    out = {}
    for key, value in cfg.items():
        key = str(key).replace('-', '_')
        if key not in dests:
            close = difflib.get_close_matches(key, dests, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise ValueError(f"unknown key '{key}' in {path}{hint}")
        out[key] = _coerce(dests[key], key, value, path)
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; a `--config` YAML fills defaults, explicit flags win."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config(pre.config, parser))
    args = parser.parse_args(argv)
    args.data_dir = args.data_dir or args.data
    return args


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------

class CorruptImageError(ValueError):
    """An image file of the dataset cannot be decoded; the message names the file."""


class StrictImageDataset(ImageDataset):
    """timm's ImageDataset, but an unreadable image stops the run naming the file.

    timm's own dataset skips such a sample with a warning, which hides a broken dataset.
    """

    def __getitem__(self, index: int):
        img, target, *features = self.reader[index]
        try:
            if self.load_bytes:
                img = img.read()
            else:
                with img if hasattr(img, 'read') else suppress():
                    img = Image.open(img)
                    img = img.convert(self.input_img_mode) if self.input_img_mode else img
                    img.load()
        except (OSError, ValueError, SyntaxError) as e:
            path = self.reader.filename(index, absolute=True)
            raise CorruptImageError(f'corrupt or unreadable image: {path} ({e})') from e
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return (img, target, *features) if features else (img, target)


def find_split_dir(root: str, split: str) -> str:
    """The folder of `split` under `root` (accepting val/validation, train/training)."""
    if not root:
        raise ValueError('no data directory given (positional DIR or --data-dir)')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'data directory not found: {root}')
    names = _SPLIT_SYNONYMS.get(split, (split,))
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    tried = ', '.join(os.path.join(root, n) for n in names)
    raise FileNotFoundError(f"no '{split}' split in data directory {root} (looked for {tried})")


def create_image_dataset(args: argparse.Namespace, split: str, is_training: bool):
    """An image-folder split (strict about unreadable files), or a named timm dataset."""
    if args.dataset:
        return create_dataset(
            args.dataset, root=args.data_dir, split=split, is_training=is_training,
            class_map=args.class_map, batch_size=args.batch_size, seed=args.seed)
    split_dir = find_split_dir(args.data_dir, split)
    try:
        return StrictImageDataset(split_dir, class_map=args.class_map,
                                  input_img_mode=args.input_img_mode or 'RGB')
    except RuntimeError as e:  # timm's reader: 'Found 0 images in subfolders of ...'
        raise ValueError(str(e)) from None


def count_classes(dataset) -> Optional[int]:
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    return len(class_to_idx) if class_to_idx else None


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

def check_model_name(name: str) -> None:
    """Raise a ValueError naming an unregistered model, with near names and where to look."""
    if timm.is_model(name):
        return
    pool = timm.list_models()
    close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    hint = f" Close names: {', '.join(close)}." if close else ''
    raise ValueError(
        f"unknown model '{name}'.{hint} List the zoo with `python -c \"import vitzoo; "
        f"print(vitzoo.list_models())\"` or timm's with `timm.list_models()`.")


def create_model_from_args(args: argparse.Namespace, num_classes: Optional[int]) -> nn.Module:
    """timm.create_model with the training flags (dropout, stochastic depth, kwargs)."""
    check_model_name(args.model)
    kwargs = dict(args.model_kwargs or {})
    if args.pretrained_path:
        kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    model = timm.create_model(
        args.model,
        pretrained=args.pretrained,
        num_classes=num_classes,
        in_chans=args.in_chans,
        global_pool=args.gp,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        **kwargs,
    )
    if args.initial_checkpoint:
        load_checkpoint(model, args.initial_checkpoint, weights_only=True)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


# ----------------------------------------------------------------------------------------------
# Train / evaluate
# ----------------------------------------------------------------------------------------------

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, 'module') else model


def _all_reduce_sum(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    if not distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_one_epoch(
        epoch: int,
        model: nn.Module,
        loader,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        args: argparse.Namespace,
        device: torch.device,
        lr_scheduler=None,
        amp_autocast: Callable = suppress,
        loss_scaler: Optional[NativeScaler] = None,
        model_ema: Optional[ModelEmaV3] = None,
        mixup_fn: Optional[Mixup] = None,
        num_updates: int = 0,
        before_step: Optional[Callable[[float], None]] = None,
) -> tuple[OrderedDict, int]:
    """One pass over `loader`; returns the mean loss and the updated step count.

    `before_step(fractional_epoch)` runs before each step (e.g. a token keep-rate schedule).
    """
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and getattr(loader, 'mixup_enabled', False):
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False
    model.train()
    loss_sum, n_seen = 0.0, 0
    bar = tqdm(loader, desc=f'train {epoch}', leave=False, dynamic_ncols=True,
               disable=not (args.progress and args.rank == 0))
    for i, (x, y) in enumerate(bar):
        if before_step is not None:
            before_step(epoch + i / len(loader))
        if not args.prefetcher:
            x, y = x.to(device), y.to(device)
            if mixup_fn is not None:
                x, y = mixup_fn(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'loss is {loss.item()} at epoch {epoch}, step {i}')
        optimizer.zero_grad(set_to_none=True)
        params = model.parameters() if args.clip_grad is not None else None
        if loss_scaler is not None:
            loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                        parameters=params)
        else:
            loss.backward()
            if args.clip_grad is not None:
                timm.utils.dispatch_clip_grad(params, args.clip_grad, mode=args.clip_mode)
            optimizer.step()
        num_updates += 1
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        loss_sum += loss.item() * x.shape[0]
        n_seen += x.shape[0]
        if i % max(args.log_interval, 1) == 0:
            bar.set_postfix(loss=f'{loss_sum / n_seen:.4f}', lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    loss_sum, n_seen = _all_reduce_sum([loss_sum, n_seen], device, args.distributed)
    return OrderedDict(loss=loss_sum / max(n_seen, 1)), num_updates


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader,
        args: argparse.Namespace,
        device: torch.device,
        amp_autocast: Callable = suppress,
        desc: str = 'eval',
) -> OrderedDict:
    """Top-1, top-5 (percent) and cross-entropy over `loader`, summed over all ranks."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction='sum')
    loss_sum = top1 = top5 = n = 0.0
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=not (args.progress and args.rank == 0))
    for x, y in bar:
        if not args.prefetcher:
            x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            out = model(x)
        out = out.float()
        k5 = min(5, out.shape[1])
        a1, a5 = accuracy(out, y, topk=(1, k5))
        b = x.shape[0]
        loss_sum += loss_fn(out, y).item()
        top1 += a1.item() * b / 100.
        top5 += a5.item() * b / 100.
        n += b
    loss_sum, top1, top5, n = _all_reduce_sum([loss_sum, top1, top5, n], device, args.distributed)
    n = max(n, 1)
    return OrderedDict(loss=loss_sum / n, top1=100. * top1 / n, top5=100. * top5 / n)


def keep_rate_schedule(model: nn.Module, start: float, end: float) -> Callable[[Optional[float]], None]:
    """Per-step keep-rate setter for token-reorganising models (EViT); None restores the target."""
    from vitzoo.layers.token_reorg import keep_rate_at
    if not hasattr(model, 'set_keep_rate') or not hasattr(model, 'target_keep_rate'):
        raise ValueError(f'--keep-rate-warmup needs a model with set_keep_rate(), '
                         f'{type(model).__name__} has none')

    def set_rate(epoch: Optional[float]) -> None:
        rate = None if epoch is None else keep_rate_at(epoch, model.target_keep_rate, start, end)
        model.set_keep_rate(rate)
    return set_rate


def _amp(args: argparse.Namespace, device: torch.device) -> tuple[Callable, Optional[NativeScaler]]:
    if not args.amp:
        return suppress, None
    name = args.amp_dtype or ('float16' if device.type == 'cuda' else 'bfloat16')
    dtype = getattr(torch, name)
    scaler = NativeScaler(device=device.type) if dtype == torch.float16 else None
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


def build_loaders(args: argparse.Namespace, data_config: dict, dataset_train, dataset_eval,
                  num_classes: int, device: torch.device):
    """timm loaders with the recipe's augmentation, mixup/cutmix, and the matching train loss.

    Returns (loader_train, loader_eval or None, mixup_fn or None, train_loss_fn). With the
    prefetcher, mixup runs in the collate function; without it, `mixup_fn` runs per batch.
    """
    mixup_fn, collate_fn = None, None
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixup_active:
        if args.batch_size % 2:
            raise ValueError(f'mixup/cutmix needs an even --batch-size, got {args.batch_size}')
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    loader_common = dict(
        mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
        distributed=args.distributed, pin_memory=args.pin_mem, device=device,
        use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size,
        is_training=True, no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        num_aug_repeats=args.aug_repeats if args.distributed else 0, collate_fn=collate_fn,
        interpolation=args.train_interpolation, **loader_common)
    if len(loader_train) == 0:
        raise ValueError(f'train split has {len(dataset_train)} images, fewer than one batch '
                         f'of {args.batch_size} per process: lower --batch-size')
    loader_eval = None
    if dataset_eval is not None:
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
            **loader_common)

    if mixup_active:
        train_loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()
    return loader_train, loader_eval, mixup_fn, train_loss_fn.to(device)


def setup_output(args: argparse.Namespace, model: nn.Module, optimizer, model_ema, loss_scaler,
                 data_config: dict) -> tuple[str, CheckpointSaver]:
    """The run folder (args.yaml written there) and its checkpoint saver; rank 0 only.

    Resuming from a checkpoint inside the same folder also restores the saver's ranking.
    """
    exp = args.experiment or '-'.join([
        time.strftime('%Y%m%d-%H%M%S'), args.model.replace('/', '_'), str(data_config['input_size'][-1])])
    output_dir = get_outdir(args.output or './output/train', exp)
    saver = CheckpointSaver(
        model=model, optimizer=optimizer, args=args, model_ema=model_ema, amp_scaler=loss_scaler,
        checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=args.eval_metric == 'loss',
        max_history=args.checkpoint_hist)
    if args.resume and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(output_dir):
        saver.load_state_dict_from_checkpoint(args.resume)
    dests = _config_dests(build_parser())
    with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
        yaml.safe_dump({k: v for k, v in vars(args).items() if k in dests}, f, sort_keys=False)
    return output_dir, saver


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Train; returns {'output_dir', 'best_metric', 'best_epoch', 'eval', 'train'}."""
    args = parse_args(argv)
    args.prefetcher = not args.no_prefetcher
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    device = init_distributed_device(args)
    primary = args.rank == 0
    if primary and not logging.getLogger().handlers:
        setup_default_logging()
    random_seed(args.seed, args.rank)

    # data first: the class count sizes the head
    dataset_train = create_image_dataset(args, args.train_split, is_training=True)
    dataset_eval = create_image_dataset(args, args.val_split, False) if args.val_split else None
    num_classes = args.num_classes or count_classes(dataset_train)
    args.num_classes = num_classes

    model = create_model_from_args(args, num_classes)
    num_classes = args.num_classes = _unwrap(model).num_classes
    if primary:
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info(f'Model {args.model}: {n_params / 1e6:.3f}M params, {num_classes} classes')
    data_config = resolve_data_config(vars(args), model=model, verbose=primary)
    if args.aug_repeats and not args.distributed and primary:
        _logger.warning('--aug-repeats only applies to distributed runs; ignored')

    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    keep_rate = keep_rate_schedule(model, *args.keep_rate_warmup) if args.keep_rate_warmup else None

    if args.lr is None:
        global_batch = args.batch_size * args.world_size
        ratio = global_batch / args.lr_base_size
        args.lr = args.lr_base * (ratio ** 0.5 if args.lr_base_scale == 'sqrt' else ratio)
        if primary:
            _logger.info(f'lr {args.lr:.3g} = lr_base {args.lr_base} x ({global_batch} / '
                         f'{args.lr_base_size}), {args.lr_base_scale} scaling')
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    amp_autocast, loss_scaler = _amp(args, device)

    resume_epoch = None
    if args.resume:
        if not os.path.isfile(args.resume):
            raise FileNotFoundError(f'checkpoint to resume not found: {args.resume}')
        resume_epoch = resume_checkpoint(
            model, args.resume, optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=loss_scaler, log_info=primary, weights_only=True)

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(
            model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
            device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_checkpoint(model_ema.module, args.resume, use_ema=True, weights_only=True)

    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == 'cuda' else None)

    loader_train, loader_eval, mixup_fn, train_loss_fn = build_loaders(
        args, data_config, dataset_train, dataset_eval, num_classes, device)

    updates_per_epoch = len(loader_train)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    metric_key = None
    if loader_eval is not None:
        metric_key = f'ema_{args.eval_metric}' if model_ema is not None else args.eval_metric
    output_dir, saver = None, None
    if primary:
        output_dir, saver = setup_output(args, model, optimizer, model_ema, loss_scaler, data_config)
        _logger.info(f'Training {num_epochs - start_epoch} epochs from epoch {start_epoch}, '
                     f'{updates_per_epoch} steps each, output in {output_dir}')

    best_metric, best_epoch = None, None
    train_metrics, eval_metrics = OrderedDict(), OrderedDict()
    num_updates = start_epoch * updates_per_epoch
    for epoch in range(start_epoch, num_epochs):
        if args.distributed and hasattr(loader_train.sampler, 'set_epoch'):
            loader_train.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        train_metrics, num_updates = train_one_epoch(
            epoch, model, loader_train, optimizer, train_loss_fn, args, device,
            lr_scheduler=lr_scheduler, amp_autocast=amp_autocast, loss_scaler=loss_scaler,
            model_ema=model_ema, mixup_fn=mixup_fn, num_updates=num_updates, before_step=keep_rate)
        if keep_rate is not None:
            keep_rate(None)  # evaluate at the target rate
        if args.distributed and args.dist_bn:
            distribute_bn(model, args.world_size, args.dist_bn == 'reduce')

        eval_metrics = OrderedDict()
        if loader_eval is not None:
            eval_metrics = evaluate(model, loader_eval, args, device, amp_autocast)
            if model_ema is not None:
                ema = evaluate(model_ema.module, loader_eval, args, device, amp_autocast, 'eval ema')
                eval_metrics.update((f'ema_{k}', v) for k, v in ema.items())
        lrs = [g['lr'] for g in optimizer.param_groups]
        if primary:
            text = ' '.join(f'eval_{k} {v:.4g}' for k, v in eval_metrics.items())
            _logger.info(f'epoch {epoch + 1}/{num_epochs} train_loss {train_metrics["loss"]:.4f} '
                         f'{text} lr {lrs[0]:.3g} ({time.perf_counter() - t0:.1f}s)')
            update_summary(epoch, train_metrics, eval_metrics,
                           filename=os.path.join(output_dir, 'summary.csv'), lr=sum(lrs) / len(lrs))
            metric = eval_metrics[metric_key] if metric_key else None
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=metric)
        lr_scheduler.step(epoch + 1, eval_metrics.get(metric_key) if metric_key else None)

    if primary and best_metric is not None:
        _logger.info(f'*** best {metric_key}: {best_metric:.4f} (epoch {best_epoch})')
    if args.distributed:
        torch.distributed.barrier()
    return dict(output_dir=output_dir, best_metric=best_metric, best_epoch=best_epoch,
                eval=dict(eval_metrics), train=dict(train_metrics))


if __name__ == '__main__':
    try:
        main()
    except (ValueError, FileNotFoundError) as err:
        # from a DataLoader worker the message carries the worker's traceback: keep its last line
        sys.exit(f'error: {str(err).strip().splitlines()[-1]}')
