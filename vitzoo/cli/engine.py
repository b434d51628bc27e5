"""The train and eval loops, written so that a run stopped anywhere resumes bit-exactly.

The training loader (vitzoo.cli.data.resumable_train_loader) keeps its workers for the whole
run and makes every random draw of data loading a function of (seed, epoch, sample or batch
index), so a mid-epoch resume only tells its sampler where to start. Each epoch also seeds the
main process's torch/numpy/python from (seed, epoch, rank) for the training draws (drop path),
and a recovery checkpoint saves that state. A loader without indices (an iterable dataset)
falls back to re-reading the consumed batches. Only complete optimizer updates are checkpointed.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from timm.utils import NativeScaler, accuracy, dispatch_clip_grad

from .checkpoints import rng_state, seed_epoch, set_rng_state
from .data import begin_epoch
from .errors import DivergenceError

_logger = logging.getLogger('train')
# seconds to sleep after every step: lets fault-injection tests kill a tiny run mid-epoch
_STEP_SLEEP = float(os.environ.get('VITZOO_DEBUG_STEP_SLEEP', '0') or 0)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    model = getattr(model, '_orig_mod', model)
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return getattr(model, '_orig_mod', model)


def all_reduce_sum(values: list[float], device: torch.device, distributed: bool) -> list[float]:
    if not distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def make_amp(args: argparse.Namespace, device: torch.device) -> tuple[Callable, Optional[NativeScaler]]:
    """autocast context factory and the fp16 loss scaler (None for fp32 and bf16)."""
    if not args.amp:
        return suppress, None
    name = args.amp_dtype or ('float16' if device.type == 'cuda' else 'bfloat16')
    dtype = getattr(torch, name)
    scaler = NativeScaler(device=device.type) if dtype == torch.float16 else None
    return partial(torch.autocast, device_type=device.type, dtype=dtype), scaler


class RngStream:
    """A separate torch/numpy/python RNG stream for the main-process side of data loading.

    Loading runs ahead of training (timm's prefetcher holds the next batch; with workers=0 the
    augmentation runs here). Swapping this stream in around every `next(loader)` keeps the data's
    random draws apart from the training's (drop path), so replaying the consumed batches on
    resume leaves both streams where the interrupted run had them.
    """

    def __init__(self, seed: int, epoch: int, rank: int):
        outer = rng_state()
        seed_epoch(seed + 7919, epoch, rank)
        self.state = rng_state()
        set_rng_state(outer)
        self._outer: Optional[dict] = None

    def __enter__(self):
        self._outer = rng_state()
        set_rng_state(self.state)
        return self

    def __exit__(self, *exc):
        self.state = rng_state()
        set_rng_state(self._outer)
        return False


@dataclass
class Progress:
    """Where the run is: what a recovery checkpoint stores besides the module states."""
    epoch: int = 0
    step: int = 0               # micro-batches of `epoch` already trained
    num_updates: int = 0
    loss_sum: float = 0.0
    n_seen: int = 0
    nonfinite: int = 0          # steps skipped for a non-finite loss (--skip-nonfinite)
    rng: Optional[dict] = None  # main-process RNG at `step` (mid-epoch resume only)


@dataclass
class Trainer:
    """What one training step needs; `on_update(progress, end_of_epoch)` may save or stop."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    args: argparse.Namespace
    device: torch.device
    lr_scheduler: Any = None
    amp_autocast: Callable = suppress
    loss_scaler: Optional[NativeScaler] = None
    model_ema: Any = None
    mixup_fn: Any = None
    before_step: Optional[Callable[[float], None]] = None
    on_update: Optional[Callable[[Progress, bool], None]] = None
    log_step: Optional[Callable[[dict], None]] = None
    total_epochs: int = 1
    t_start: float = field(default_factory=time.perf_counter)
    steps_timed: int = 0

    def _set_mixup(self, loader, epoch: int) -> None:
        if self.args.mixup_off_epoch and epoch >= self.args.mixup_off_epoch:
            if getattr(loader, 'mixup_enabled', False):
                loader.mixup_enabled = False
            if self.mixup_fn is not None:
                self.mixup_fn.mixup_enabled = False

    def train_one_epoch(self, loader, progress: Progress) -> OrderedDict:
        """Train `progress.epoch` from micro-batch `progress.step` to its end; returns the mean loss."""
        args, epoch = self.args, progress.epoch
        self._set_mixup(loader, epoch)
        sampler = getattr(loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        self.model.train()
        n_batches = len(loader)
        accum = args.grad_accum_steps
        data_rng = RngStream(args.seed, epoch, args.rank)
        seed_epoch(args.seed, epoch, args.rank)  # the training stream (drop path, mixup_fn, ...)
        skips = begin_epoch(loader, epoch, progress.step)  # resumable loader: starts at `step`
        with data_rng:
            it = iter(loader)
            if not skips:  # any other loader: re-read what was consumed (same order, same RNG)
                for _ in range(progress.step):
                    next(it)
        if progress.step and progress.rng is not None:
            set_rng_state(progress.rng)
        progress.rng = None
        self.optimizer.zero_grad(set_to_none=True)
        t_last = time.perf_counter()
        for i in range(progress.step, n_batches):
            with data_rng:
                x, y = next(it)
            if self.before_step is not None:
                self.before_step(epoch + i / n_batches)
            if not args.prefetcher:
                x, y = x.to(self.device), y.to(self.device)
                if self.mixup_fn is not None:
                    x, y = self.mixup_fn(x, y)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            boundary = (i + 1) % accum == 0 or i + 1 == n_batches
            sync = nullcontext() if boundary or not hasattr(self.model, 'no_sync') else self.model.no_sync()
            with sync:
                with self.amp_autocast():
                    out = self.model(x)
                    loss = self.loss_fn(out, y, x) if getattr(self.loss_fn, 'needs_inputs', False) \
                        else self.loss_fn(out, y)
                finite = bool(torch.isfinite(loss))
                if args.distributed:  # every rank skips together, or DDP would wait for the others
                    flag = torch.tensor([1.0 if finite else 0.0], device=self.device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
                    finite = bool(flag.item() > 0)
                if finite:
                    scaled = loss / accum
                    if self.loss_scaler is not None:
                        self.loss_scaler._scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
            if not finite:
                progress.nonfinite += 1
                if progress.nonfinite > args.skip_nonfinite:
                    hint = ('' if args.skip_nonfinite else '; lower --lr, add --clip-grad, '
                            'or pass --skip-nonfinite N')
                    raise DivergenceError(f'non-finite loss ({loss.item()}) at epoch {epoch} step {i}'
                                          f' (update {progress.num_updates}){hint}')
                _logger.warning(f'skipped step {i} of epoch {epoch}: non-finite loss ({loss.item()}), '
                                f'{progress.nonfinite}/{args.skip_nonfinite} skips used')
            if boundary:
                self._update()
                progress.num_updates += 1
                if self.model_ema is not None:
                    self.model_ema.update(unwrap(self.model), step=progress.num_updates)
                if self.lr_scheduler is not None:
                    self.lr_scheduler.step_update(num_updates=progress.num_updates)
            lv = loss.item() if finite else float('nan')
            if finite:
                progress.loss_sum += lv * x.shape[0]
                progress.n_seen += x.shape[0]
            progress.step = i + 1
            lr = self.optimizer.param_groups[0]['lr']
            if self.log_step is not None:
                self.log_step(dict(epoch=epoch, step=i, update=progress.num_updates, loss=repr(lv), lr=repr(lr)))
            now = time.perf_counter()
            self.steps_timed += 1
            if (i + 1) % args.log_interval == 0 or i + 1 == n_batches:
                self._log(epoch, i, n_batches, progress, lr, x.shape[0], now - t_last)
            t_last = now
            if _STEP_SLEEP:
                time.sleep(_STEP_SLEEP)
            if boundary and self.on_update is not None:
                self.on_update(progress, i + 1 == n_batches)
        loss_sum, n_seen = all_reduce_sum([progress.loss_sum, progress.n_seen], self.device, args.distributed)
        return OrderedDict(loss=loss_sum / max(n_seen, 1))

    def _update(self) -> None:
        args = self.args
        params = self.model.parameters() if args.clip_grad is not None else None
        if self.loss_scaler is not None:
            scaler = self.loss_scaler._scaler
            if args.clip_grad is not None:
                scaler.unscale_(self.optimizer)
                dispatch_clip_grad(params, args.clip_grad, mode=args.clip_mode)
            scaler.step(self.optimizer)
            scaler.update()
        else:
            if args.clip_grad is not None:
                dispatch_clip_grad(params, args.clip_grad, mode=args.clip_mode)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _log(self, epoch: int, i: int, n: int, progress: Progress, lr: float, batch: int, dt: float) -> None:
        if self.args.rank != 0:
            return
        elapsed = time.perf_counter() - self.t_start
        rate = self.steps_timed / max(elapsed, 1e-9)  # steps/s since this process started
        left = (n - i - 1) + (self.total_epochs - epoch - 1) * n
        eta = left / max(rate, 1e-9)
        ips = batch * self.args.world_size / max(dt, 1e-9)
        _logger.info(f'epoch {epoch} step {i + 1}/{n} '  # epochs counted from 0 everywhere, as in timm
                     f'loss {progress.loss_sum / max(progress.n_seen, 1):.4f} lr {lr:.3g} '
                     f'{ips:.1f} img/s eta {_fmt_time(eta)}')


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return '?'
    s = int(s)
    return f'{s // 3600}h{s % 3600 // 60:02d}m' if s >= 3600 else f'{s // 60}m{s % 60:02d}s'


@torch.no_grad()
def evaluate(model: nn.Module, loader, args: argparse.Namespace, device: torch.device,
             amp_autocast: Callable = suppress, desc: str = 'eval') -> OrderedDict:
    """Top-1, top-5 (percent) and cross-entropy over `loader`, summed over all ranks.

    Samples with target -1 (unreadable images) are left out of every metric.
    """
    from tqdm import tqdm
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction='sum')
    loss_sum = top1 = top5 = n = 0.0
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=not (getattr(args, 'progress', False) and args.rank == 0))
    for x, y in bar:
        if not args.prefetcher:
            x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            out = model(x)
        out = out.float()
        keep = y >= 0
        if not bool(keep.all()):
            out, y = out[keep], y[keep]
        b = y.shape[0]
        if b == 0:
            continue
        k5 = min(5, out.shape[1])
        a1, a5 = accuracy(out, y, topk=(1, k5))
        loss_sum += loss_fn(out, y).item()
        top1 += a1.item() * b / 100.
        top5 += a5.item() * b / 100.
        n += b
    loss_sum, top1, top5, n = all_reduce_sum([loss_sum, top1, top5, n], device, args.distributed)
    n = max(n, 1)
    return OrderedDict(loss=loss_sum / n, top1=100. * top1 / n, top5=100. * top5 / n)
