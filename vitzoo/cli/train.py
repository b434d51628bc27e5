"""`vitzoo-train` / `train_imagenet.py`: train a timm or vitzoo model on an ImageFolder dataset.

timm is the library underneath (data pipeline, mixup/cutmix, optimizer and scheduler factories,
EMA, AMP); this module adds what long runs on shared machines need: exact resume (also
mid-epoch, also after kill -9), crash-safe checkpoints, divergence checks, corrupt-image
skipping, typed recipes, unique run folders, and SIGTERM/SIGINT recovery checkpoints.

    vitzoo-train /data/imagenet --config swin_tiny_in1k
    torchrun --nproc_per_node=8 -m vitzoo.cli.train /data/imagenet --config swin_tiny_in1k
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import time
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import yaml

import timm
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader, resolve_data_config
from timm.layers import convert_sync_batchnorm, set_fast_norm
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import ModelEmaV3, distribute_bn, init_distributed_device, random_seed, setup_default_logging

from . import checkpoints as ckpts
from . import distill
from . import effective_config
from .data import (
    BackgroundCheck, CorruptImageError, SkippingImageDataset, check_same_classes, find_split_dir, preflight,
    resumable_train_loader, shard_eval_loader)
from .engine import Progress, Trainer, evaluate, make_amp, unwrap
from .errors import (
    EXIT_OK, CheckpointError, ConfigError, DataError, DivergenceError, Interrupted, exit_code, one_line)
from .img_size import check_runs_at, create_at_size, size_from_args
from .outputs import (EarlyLog, Scalars, add_log_file, export_safetensors, plot_curves, remove_log_file,
                      write_bad_list)
from .run_dir import CsvLog, RunLock, new_run_name, prepare_run_dir
from .train_args import args_to_dict, build_parser, config_dests, load_config, parse_args  # noqa: F401

try:  # registers the zoo's models in timm
    import vitzoo  # noqa: F401
except ImportError:  # pragma: no cover
    vitzoo = None

_logger = logging.getLogger('train')

__all__ = ['train', 'main', 'build_parser', 'load_config', 'parse_args', 'keep_rate_schedule',
           'CorruptImageError', 'evaluate', 'check_model_name', 'find_split_dir']


# ----------------------------------------------------------------------------------------------
# data and model
# ----------------------------------------------------------------------------------------------

def create_datasets(args: argparse.Namespace):
    """(train, eval or None): one class-to-index map, from train, for both image-folder splits."""
    if args.dataset:
        common = dict(root=args.data_dir, class_map=args.class_map, batch_size=args.batch_size, seed=args.seed,
                      download=args.dataset_download)
        tr = create_dataset(args.dataset, split=args.train_split, is_training=True, **common)
        ev = create_dataset(args.dataset, split=args.val_split, is_training=False, **common) if args.val_split else None
        return tr, ev
    mode = args.input_img_mode or 'RGB'
    train_dir = find_split_dir(args.data_dir, args.train_split)
    tr = SkippingImageDataset(train_dir, class_map=args.class_map or None, input_img_mode=mode,
                              strict=args.strict_data, substitute=True)
    ev = None
    if args.val_split:
        val_dir = find_split_dir(args.data_dir, args.val_split)
        if not args.class_map:
            check_same_classes(tr.class_to_idx, val_dir)
        ev = SkippingImageDataset(val_dir, class_map=dict(tr.class_to_idx), input_img_mode=mode,
                                  strict=args.strict_data, substitute=False)
    return tr, ev


def count_classes(dataset) -> Optional[int]:
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    return len(class_to_idx) if class_to_idx else None


def check_model_name(name: str) -> None:
    """Raise a ConfigError naming an unregistered model, with near names and where to look."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Close names: {', '.join(close)}." if close else ''
    raise ConfigError(
        f"unknown model '{name}'.{hint} List the zoo with `python -c \"import vitzoo; "
        f"print(vitzoo.list_models())\"` or timm's with `timm.list_models()`.")


def create_model_from_args(args: argparse.Namespace, num_classes: Optional[int]) -> nn.Module:
    """timm.create_model with the training flags (dropout, stochastic depth, kwargs)."""
    check_model_name(args.model)
    kwargs = dict(args.model_kwargs or {})
    for flag, key in (('drop_block', 'drop_block_rate'), ('bn_momentum', 'bn_momentum'), ('bn_eps', 'bn_eps')):
        if getattr(args, flag, None) is not None:  # passed only when set (as in timm): a model may not take them
            kwargs[key] = getattr(args, flag)
    if args.pretrained_path:
        kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    size = size_from_args(args.img_size, args.input_size)  # built at that size where it can be
    try:
        model = create_at_size(
            args.model, size, pretrained=args.pretrained, num_classes=num_classes, in_chans=args.in_chans,
            global_pool=args.gp, drop_rate=args.drop, drop_path_rate=args.drop_path, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model '{args.model}' rejects model_kwargs {kwargs}: {one_line(e)}") from None
    check_runs_at(model, args.model, size, args.input_size[0] if args.input_size else (args.in_chans or 3),
                  '--input-size' if args.input_size else '--img-size')
    if args.initial_checkpoint:
        path = args.initial_checkpoint
        ckpts.load_weights(model, ckpts.model_state(ckpts.load_file(path)), path)
    if args.head_init_scale is not None or args.head_init_bias is not None:
        head = model.get_classifier()
        with torch.no_grad():
            if args.head_init_scale is not None:
                head.weight.mul_(args.head_init_scale)
                if head.bias is not None:
                    head.bias.mul_(args.head_init_scale)
            if args.head_init_bias is not None and head.bias is not None:
                nn.init.constant_(head.bias, args.head_init_bias)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def apply_sync_bn(model: nn.Module, args: argparse.Namespace, device: torch.device, primary: bool) -> nn.Module:
    """`--sync-bn`: SyncBatchNorm under DDP (dist-bn off, as in timm); one process: a noted no-op."""
    if not args.sync_bn:
        return model
    if args.fsdp:
        raise ConfigError("argument 'sync_bn': not supported with --fsdp (use DDP)")
    if not args.distributed:
        if primary:
            _logger.info('--sync-bn: one process, nothing to synchronise (BatchNorm left as is)')
        return model
    if device.type == 'cpu':
        raise ConfigError("argument 'sync_bn': torch's SyncBatchNorm needs accelerator devices, "
                          "this DDP run is on CPU (leave --sync-bn off; --dist-bn syncs the statistics)")
    args.dist_bn = ''  # statistics are already synchronised every step
    model = convert_sync_batchnorm(model)
    if primary:
        _logger.info('converted BatchNorm layers to SyncBatchNorm')
    return model


def warmup_end_lr(args: argparse.Namespace, num_epochs: int) -> float:
    """The lr at the last epoch of a warm-up that outlasts the run (timm's linear warm-up)."""
    frac = max(num_epochs - 1, 0) / max(args.warmup_epochs, 1)
    return args.warmup_lr + (args.lr - args.warmup_lr) * frac


def keep_rate_schedule(model: nn.Module, start: float, end: float) -> Callable[[Optional[float]], None]:
    """Per-step keep-rate setter for token-reorganising models (EViT); None restores the target."""
    from vitzoo.layers.token_reorg import keep_rate_at
    if not hasattr(model, 'set_keep_rate') or not hasattr(model, 'target_keep_rate'):
        raise ConfigError(f'--keep-rate-warmup needs a model with set_keep_rate(), '
                          f'{type(model).__name__} has none')

    def set_rate(epoch: Optional[float]) -> None:
        rate = None if epoch is None else keep_rate_at(epoch, model.target_keep_rate, start, end)
        model.set_keep_rate(rate)
    return set_rate


class _QuietWorker:
    """Loader worker init: ignore SIGINT/SIGTERM (the main process stops the run cleanly), then timm's."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


def _quiet_workers(loader) -> None:
    inner = getattr(loader, 'loader', loader)
    inner.worker_init_fn = _QuietWorker(inner.worker_init_fn)


def build_loaders(args: argparse.Namespace, data_config: dict, dataset_train, dataset_eval,
                  num_classes: int, device: torch.device):
    """timm loaders (workers re-seeded per epoch, no padding in DDP eval), mixup and the train loss."""
    mixup_fn, collate_fn = None, None
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixup_active:
        if args.batch_size % 2:
            raise ConfigError(f"argument 'batch_size' expects an even number with mixup/cutmix, got {args.batch_size}")
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    common = dict(mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
                  pin_memory=args.pin_mem, device=device, use_prefetcher=args.prefetcher)
    # workers live for the whole run (train and eval); an iterable dataset's are restarted per
    # epoch instead (its resume re-reads the consumed batches from a fresh, epoch-seeded start)
    iterable = isinstance(dataset_train, torch.utils.data.IterableDataset)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size,
        is_training=True, no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode,
        re_count=args.recount, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        num_aug_repeats=args.aug_repeats if args.distributed else 0, collate_fn=collate_fn,
        interpolation=args.train_interpolation, distributed=args.distributed,
        persistent_workers=not iterable, **common)
    if len(loader_train) == 0:
        raise DataError(f'train split has {len(dataset_train)} images, fewer than one batch '
                        f'of {args.batch_size} per process: lower --batch-size')
    # every random draw seeded by (seed, epoch, index): exact mid-epoch resume with live workers
    loader_train = resumable_train_loader(loader_train, args.seed, args.rank, args.mixup_off_epoch)
    _quiet_workers(loader_train)
    loader_eval = None
    if dataset_eval is not None:
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
            distributed=False, persistent_workers=True, **common)
        if args.distributed:
            loader_eval = shard_eval_loader(loader_eval, args.rank, args.world_size)
        _quiet_workers(loader_eval)
    if args.bce_loss:
        loss_fn = BinaryCrossEntropy(smoothing=0. if mixup_active else args.smoothing,
                                     target_threshold=args.bce_target_thresh)
    elif mixup_active:
        loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()
    return loader_train, loader_eval, mixup_fn, loss_fn.to(device)


# ----------------------------------------------------------------------------------------------
# resume, checkpoints, signals
# ----------------------------------------------------------------------------------------------

def resolve_resume(args: argparse.Namespace) -> Optional[str]:
    """The checkpoint file `--resume` means: a file, the newest valid one in a folder, or 'auto'."""
    if not args.resume:
        return None
    target = args.resume
    if target == 'auto':
        if not args.experiment:
            raise ConfigError("argument 'resume': 'auto' needs --experiment NAME (the run folder under --output)")
        target = os.path.join(args.output or './output/train', args.experiment)
        if not os.path.isdir(target):
            return None  # nothing to resume yet: start the run in that folder
    if os.path.isdir(target):
        found = ckpts.newest_valid(target)
        if found is None and args.resume != 'auto':
            raise CheckpointError(f'no valid checkpoint to resume in {target}')
        return found
    if not os.path.isfile(target):
        raise FileNotFoundError(f'checkpoint to resume not found: {target}')
    return target


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop writes a recovery checkpoint at the next update and exits."""

    def __init__(self):
        self.signum = 0
        self._old: dict = {}

    def install(self) -> None:
        import threading
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGTERM, signal.SIGINT):
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()

    def agreed(self, device: torch.device, distributed: bool) -> int:
        """The signal number any rank got (all ranks stop at the same update)."""
        if not distributed:
            return self.signum
        t = torch.tensor([self.signum], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())


class Saver:
    """Crash-safe checkpoints of one run: recovery (mid-epoch), last, per-epoch history, best.

    The weights are checked before every save: a non-finite state never replaces a good file.
    """

    def __init__(self, run_dir: Optional[str], args: argparse.Namespace, model, optimizer, lr_scheduler,
                 model_ema, loss_scaler, metric_key: Optional[str]):
        self.run_dir, self.args = run_dir, args
        self.model, self.optimizer, self.lr_scheduler = model, optimizer, lr_scheduler
        self.model_ema, self.loss_scaler, self.metric_key = model_ema, loss_scaler, metric_key
        self.best_metric: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_weights = 'ema' if metric_key and metric_key.startswith('ema_') else 'model'
        self.decreasing = args.eval_metric == 'loss'
        self.class_to_idx: Optional[dict] = None

    def state(self, progress: Progress, resume_epoch: int, resume_step: int, rng: bool) -> dict:
        from .fsdp import full_model_state, full_optimizer_state
        s = dict(
            arch=self.args.model, args=args_to_dict(self.args), version=2,
            epoch=resume_epoch - 1 if resume_step == 0 else progress.epoch - 1,
            resume_epoch=resume_epoch, resume_step=resume_step, num_updates=progress.num_updates,
            loss_sum=progress.loss_sum, n_seen=progress.n_seen, nonfinite=progress.nonfinite,
            state_dict=full_model_state(self.model, self.args),
            optimizer=full_optimizer_state(self.model, self.optimizer, self.args),
            scheduler=self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            best_metric=self.best_metric, best_epoch=self.best_epoch, metric_key=self.metric_key,
            best_weights=self.best_weights, class_to_idx=self.class_to_idx)
        if self.model_ema is not None:
            s['state_dict_ema'] = self.model_ema.module.state_dict()
        if self.loss_scaler is not None:
            s['scaler'] = self.loss_scaler.state_dict()
        if rng:  # one state per rank: each rank's drop path etc. continues its own stream
            mine = ckpts.rng_state()
            if self.args.distributed:
                states = [None] * self.args.world_size
                torch.distributed.all_gather_object(states, mine)
            else:
                states = [mine]
            s['rng'] = states
        return s

    def _check_finite(self, progress: Progress, what: str) -> None:
        ema = self.model_ema.module if self.model_ema is not None else None
        if not ckpts.all_finite(unwrap(self.model), ema):
            raise DivergenceError(f'non-finite weights at epoch {progress.epoch} step {progress.step} '
                                  f'(update {progress.num_updates}); {what} not written, the last good '
                                  f'checkpoint is kept')

    def save_recovery(self, progress: Progress) -> Optional[str]:
        self._check_finite(progress, 'recovery checkpoint')
        state = self.state(progress, progress.epoch, progress.step, rng=True)
        if self.run_dir is None:
            return None
        path = os.path.join(self.run_dir, 'recovery.pth.tar')
        ckpts.atomic_save(state, path)
        return path

    def save_epoch(self, progress: Progress, epoch: int, metric: Optional[float]) -> None:
        """After epoch `epoch` (evaluated, scheduler stepped): last, history, and best if better."""
        self._check_finite(progress, 'checkpoint')
        better = metric is not None and (
            self.best_metric is None or (metric < self.best_metric if self.decreasing else metric > self.best_metric))
        if better:
            self.best_metric, self.best_epoch = metric, epoch
        state = self.state(progress, epoch + 1, 0, rng=False)
        if self.run_dir is None:
            return
        last = os.path.join(self.run_dir, 'last.pth.tar')
        ckpts.atomic_save(state, last)
        if self.args.checkpoint_hist:
            ckpts.atomic_copy(last, os.path.join(self.run_dir, f'checkpoint-{epoch}.pth.tar'))
            old = os.path.join(self.run_dir, f'checkpoint-{epoch - self.args.checkpoint_hist}.pth.tar')
            if os.path.exists(old):
                os.remove(old)
        if better:
            ckpts.atomic_copy(last, os.path.join(self.run_dir, 'model_best.pth.tar'))
            best_sd = state['state_dict_ema'] if self.best_weights == 'ema' else state['state_dict']
            export_safetensors(best_sd, os.path.join(self.run_dir, 'model_best.safetensors'))
        rec = os.path.join(self.run_dir, 'recovery.pth.tar')
        if os.path.exists(rec):  # the epoch checkpoint is further along
            os.remove(rec)

    def restore(self, ckpt: dict, path: str, load_opt: bool) -> Progress:
        """Load every state of a checkpoint into the live objects; returns where to continue."""
        from .fsdp import load_full_optimizer_state  # the weights were loaded before wrapping
        if load_opt and ckpt.get('optimizer') is not None:
            try:
                load_full_optimizer_state(self.model, self.optimizer, ckpt['optimizer'], self.args)
            except (ValueError, KeyError, RuntimeError) as e:
                raise CheckpointError(f'optimizer state of {path} does not fit: {one_line(e)}') from None
        if self.model_ema is not None:
            if 'state_dict_ema' in ckpt:
                ckpts.load_weights(self.model_ema.module, ckpts.model_state(ckpt, use_ema=True), path)
            else:
                _logger.warning(f'{path} has no EMA weights; the EMA restarts from the model')
        if self.loss_scaler is not None and ckpt.get('scaler') is not None:
            self.loss_scaler.load_state_dict(ckpt['scaler'])
        if self.lr_scheduler is not None and ckpt.get('scheduler') is not None:
            self.lr_scheduler.load_state_dict(ckpt['scheduler'])
        if ckpt.get('metric_key') == self.metric_key:
            self.best_metric, self.best_epoch = ckpt.get('best_metric'), ckpt.get('best_epoch')
        epoch, step = ckpts.progress_of(ckpt)
        rng = ckpt.get('rng') if step else None
        if isinstance(rng, list):
            if len(rng) != self.args.world_size:
                _logger.warning(f'{path} was written by {len(rng)} processes, this run has '
                                f'{self.args.world_size}: the resumed epoch will not be bit-exact')
            rng = rng[self.args.rank] if self.args.rank < len(rng) else rng[0]
        return Progress(epoch=epoch, step=step, num_updates=int(ckpt.get('num_updates', 0)),
                        loss_sum=float(ckpt.get('loss_sum', 0.0)) if step else 0.0,
                        n_seen=int(ckpt.get('n_seen', 0)) if step else 0,
                        nonfinite=int(ckpt.get('nonfinite', 0)), rng=rng)


# ----------------------------------------------------------------------------------------------
# the program
# ----------------------------------------------------------------------------------------------

def _setup_runtime(args: argparse.Namespace) -> torch.device:
    args.prefetcher = not args.no_prefetcher
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fast_norm:
        set_fast_norm()
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    device = init_distributed_device(args)
    if args.rank == 0 and not logging.getLogger().handlers:
        setup_default_logging()
    logging.getLogger('train').setLevel(logging.INFO)
    random_seed(args.seed, args.rank)
    return device


def train(argv: Optional[Sequence[str]] = None) -> dict:
    """Train; returns {'output_dir', 'best_metric', 'best_epoch', 'eval', 'train', 'bad_images'}.

    Raises ConfigError, DataError, CheckpointError, DivergenceError, FileNotFoundError or
    Interrupted (after writing a recovery checkpoint); `main` turns them into one line.
    """
    args = parse_args(argv)
    if args.print_config:  # the effective recipe only: no data, no run folder, no process group
        return effective_config.print_config(args)
    device = _setup_runtime(args)
    early_log = EarlyLog() if args.rank == 0 else None  # the lines before the run folder exists
    primary = args.rank == 0
    resume_path = resolve_resume(args)
    resume_ckpt = ckpts.load_file(resume_path) if resume_path else None

    dataset_train, dataset_eval = create_datasets(args)
    args.num_classes = args.num_classes or count_classes(dataset_train)
    model = create_model_from_args(args, args.num_classes)
    args.num_classes = unwrap(model).num_classes
    data_config = resolve_data_config(vars(args), model=model, verbose=False)
    if primary:
        n_params = sum(p.numel() for p in model.parameters())
        _logger.info(f'Model {args.model}: {n_params / 1e6:.3f}M params, {args.num_classes} classes, '
                     f'input {tuple(data_config["input_size"])}')
    if args.aug_repeats and not args.distributed and primary:
        _logger.warning(f'--aug-repeats {args.aug_repeats}: repeated augmentation (timm RepeatAugSampler) needs '
                        'more than one process; this one-process run samples each image once per epoch')
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    keep_rate = keep_rate_schedule(model, *args.keep_rate_warmup) if args.keep_rate_warmup else None
    model = apply_sync_bn(model, args, device, primary)

    if args.lr is None:  # the rule --print-config shows (vitzoo/cli/effective_config.py)
        args.lr_base_scale = effective_config.lr_scale_rule(args)
        args.lr, how = effective_config.scaled_lr(args, effective_config.global_batch(args, args.world_size))
        if primary:
            _logger.info(f'lr {args.lr:.3g} = {how}')
    recipe_note = effective_config.recipe_note(args, args.world_size)
    if recipe_note and primary:
        _logger.info(recipe_note)
    model_ema = None
    if args.model_ema:
        if args.fsdp:
            raise ConfigError("argument 'model_ema': not supported with --fsdp (the EMA would need sharding too)")
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device='cpu' if args.model_ema_force_cpu else None)
    if resume_ckpt is not None:  # weights before wrapping: the names carry no 'module.' prefix
        ckpts.load_weights(model, ckpts.model_state(resume_ckpt), resume_path)
    if args.fsdp:
        from .fsdp import shard_model
        model = shard_model(model, args, device)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    amp_autocast, loss_scaler = make_amp(args, device)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile)
    if args.distributed and not args.fsdp:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None,
                                                    broadcast_buffers=not args.no_ddp_bb)

    loader_train, loader_eval, mixup_fn, train_loss_fn = build_loaders(
        args, data_config, dataset_train, dataset_eval, args.num_classes, device)
    if args.aug_repeats and args.distributed and primary:
        _logger.info(effective_config.repeat_aug_line(args, loader_train))
    train_loss_fn = distill.wrap_loss(args, unwrap(model), train_loss_fn, args.num_classes, device)
    if args.distill_teacher and primary:
        note = distill.student_note(unwrap(model))
        _logger.info(f'distilling from {args.distill_teacher} ({args.distill_type}, alpha {args.distill_alpha})'
                     + (f'; {note}' if note else ''))
    updates_per_epoch = -(-len(loader_train) // args.grad_accum_steps)
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    if primary and args.warmup_epochs and args.warmup_epochs >= num_epochs:
        _logger.warning(f'--warmup-epochs {args.warmup_epochs} >= {num_epochs} epochs: the lr never reaches '
                        f'{args.lr:.3g} (it ends its warm-up at about {warmup_end_lr(args, num_epochs):.3g}); '
                        f'lower --warmup-epochs or raise --epochs')
    metric_key = None
    if loader_eval is not None:
        metric_key = f'ema_{args.eval_metric}' if model_ema is not None else args.eval_metric

    run_dir = None
    if primary:
        output = args.output or './output/train'
        if resume_path and not args.experiment:
            run_dir = os.path.dirname(os.path.abspath(resume_path))
        else:
            name = args.experiment or new_run_name(args.model, data_config['input_size'][-1])
            run_dir = prepare_run_dir(output, name, resuming=bool(args.resume), named=bool(args.experiment))
    saver = Saver(run_dir, args, model, optimizer, lr_scheduler, model_ema, loss_scaler, metric_key)
    saver.class_to_idx = dict(getattr(dataset_train, 'class_to_idx', None) or {}) or None
    progress = Progress()
    if resume_ckpt is not None:
        progress = saver.restore(resume_ckpt, resume_path, load_opt=not args.no_resume_opt)
    elif args.start_epoch:
        progress = Progress(epoch=args.start_epoch, num_updates=args.start_epoch * updates_per_epoch)
        lr_scheduler.step(args.start_epoch)
    if resume_ckpt is not None and progress.step == 0:
        progress.num_updates = progress.epoch * updates_per_epoch if args.no_resume_opt else progress.num_updates

    lock = log_handler = None
    summary = steps_log = None
    if primary:
        lock = RunLock(run_dir)
        lock.acquire()
        log_handler = add_log_file(run_dir)
        early_log.flush_to(log_handler)
        with open(os.path.join(run_dir, 'args.yaml'), 'w') as f:
            yaml.safe_dump(args_to_dict(args), f, sort_keys=False)
        summary = CsvLog(os.path.join(run_dir, 'summary.csv'))
        steps_log = CsvLog(os.path.join(run_dir, 'steps.csv'))
        pos = (progress.epoch, progress.step)
        summary.truncate(lambda r: int(r['epoch']) < progress.epoch)
        steps_log.truncate(lambda r: (int(r['epoch']), int(r['step'])) < pos)
        fin = os.path.join(run_dir, 'finished')
        if os.path.exists(fin):
            os.remove(fin)
        bad_log = os.path.join(run_dir, 'bad_images.txt')
        open(bad_log, 'a').close()  # always written (empty when every image reads)
        for ds in (dataset_train, dataset_eval):
            if isinstance(ds, SkippingImageDataset):
                ds.bad_log = bad_log
        if resume_path:
            _logger.info(f'resumed {resume_path}: epoch {progress.epoch} step {progress.step} '
                         f'(update {progress.num_updates})')
    if isinstance(dataset_eval, SkippingImageDataset) and progress.epoch < num_epochs:
        bad = preflight(dataset_eval, strict=args.strict_data)
        if bad and primary:
            _logger.warning(f'val pre-flight: {len(bad)} unreadable image(s) will be skipped: {bad[0]}'
                            + (' ...' if len(bad) > 1 else ''))
            with open(bad_log, 'a') as f:
                f.writelines(p + '\n' for p in bad)

    train_check = None  # every train image's header, checked beside training (nothing it draws is random)
    if primary and isinstance(dataset_train, SkippingImageDataset) and progress.epoch < num_epochs:
        train_check = BackgroundCheck(dataset_train)
    scalars = Scalars(run_dir if primary else None)
    stop = StopFlag()

    def on_update(p: Progress, end_of_epoch: bool) -> None:
        signum = stop.agreed(device, args.distributed)
        if signum:
            path = saver.save_recovery(p)
            raise Interrupted(signum, path)
        if args.checkpoint_interval and not end_of_epoch and p.num_updates % args.checkpoint_interval == 0:
            saver.save_recovery(p)

    def log_step(row: dict) -> None:
        if primary:
            steps_log.append(row)
            scalars.add('train/loss', float(row['loss']), row['update'])
            scalars.add('train/lr', float(row['lr']), row['update'])

    trainer = Trainer(model, optimizer, train_loss_fn, args, device, lr_scheduler=lr_scheduler,
                      amp_autocast=amp_autocast, loss_scaler=loss_scaler, model_ema=model_ema,
                      mixup_fn=mixup_fn, before_step=keep_rate, on_update=on_update,
                      log_step=log_step, total_epochs=num_epochs)
    if primary:
        _logger.info(f'Training epochs {progress.epoch}..{num_epochs - 1}, {len(loader_train)} steps each '
                     f'({updates_per_epoch} updates), output in {run_dir}')
    train_metrics, eval_metrics = OrderedDict(), OrderedDict()
    stop.install()
    try:
        while progress.epoch < num_epochs:
            epoch = progress.epoch
            t0 = time.perf_counter()
            n_imgs = (len(loader_train) - progress.step) * args.batch_size * args.world_size
            train_metrics = trainer.train_one_epoch(loader_train, progress)
            t_train = time.perf_counter() - t0
            if keep_rate is not None:
                keep_rate(None)  # evaluate at the target rate
            if args.distributed and args.dist_bn and not args.fsdp:
                distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
            eval_metrics = OrderedDict()
            if loader_eval is not None:
                eval_metrics = evaluate(model, loader_eval, args, device, amp_autocast)
                if model_ema is not None:
                    ema = evaluate(model_ema.module, loader_eval, args, device, amp_autocast, 'eval ema')
                    eval_metrics.update((f'ema_{k}', v) for k, v in ema.items())
            metric = eval_metrics.get(metric_key) if metric_key else None
            lr_scheduler.step(epoch + 1, metric)
            lrs = [g['lr'] for g in optimizer.param_groups]
            progress.epoch, progress.step, progress.loss_sum, progress.n_seen = epoch + 1, 0, 0.0, 0
            if primary:
                text = ' '.join(f'eval_{k} {v:.4g}' for k, v in eval_metrics.items())
                _logger.info(f'epoch {epoch} train_loss {train_metrics["loss"]:.4f} {text} '
                             f'lr {lrs[0]:.3g} ({n_imgs / max(t_train, 1e-9):.1f} img/s, '
                             f'{time.perf_counter() - t0:.1f}s)')
                row = OrderedDict(epoch=epoch)
                row.update((f'train_{k}', v) for k, v in train_metrics.items())
                row.update((f'eval_{k}', v) for k, v in eval_metrics.items())
                row['lr'] = sum(lrs) / len(lrs)
                row['img_per_s'] = n_imgs / max(t_train, 1e-9)
                summary.append(row)
                for k, v in eval_metrics.items():
                    scalars.add(f'eval/{k}', v, epoch)
                scalars.add('train/img_per_s', row['img_per_s'], epoch)
            saver.save_epoch(progress, epoch, metric)
            if args.distributed:
                torch.distributed.barrier()
    finally:
        stop.restore()
        scalars.close()
        if lock is not None:
            lock.release()
        if log_handler is not None and sys.exc_info()[0] is not None:
            remove_log_file(log_handler)

    bad_images: list[str] = []
    if primary:
        export_safetensors(ckpts.model_state(ckpts.load_file(os.path.join(run_dir, 'last.pth.tar'))),
                           os.path.join(run_dir, 'model_final.safetensors')) \
            if os.path.exists(os.path.join(run_dir, 'last.pth.tar')) else None
        plot_curves(summary.rows(), os.path.join(run_dir, 'curves.png'))
        bad_log = os.path.join(run_dir, 'bad_images.txt')
        bad_images = write_bad_list(bad_log, train_check.result() if train_check is not None else [])
        if bad_images:
            _logger.warning(f'{len(bad_images)} unreadable image(s) skipped (list in {bad_log}): '
                            + ', '.join(bad_images[:10]) + (' ...' if len(bad_images) > 10 else ''))
        if saver.best_metric is not None:
            _logger.info(f'*** best {metric_key}: {saver.best_metric:.4f} (epoch {saver.best_epoch}, '
                         f'{saver.best_weights} weights)')
        open(os.path.join(run_dir, 'finished'), 'w').close()
        remove_log_file(log_handler)
    if args.distributed:
        torch.distributed.barrier()
    return dict(output_dir=run_dir, best_metric=saver.best_metric, best_epoch=saver.best_epoch,
                eval=dict(eval_metrics), train=dict(train_metrics), bad_images=bad_images)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point: one line per error, exit codes as in vitzoo.cli.errors."""
    try:
        train(argv)
    except Interrupted as e:
        print(f'stopped by {signal.Signals(e.signum).name}: recovery checkpoint {e.path}; '
              f'continue with --resume auto (or --resume {e.path})', file=sys.stderr)
        return 128 + e.signum
    except (ConfigError, DataError, CheckpointError, DivergenceError, FileNotFoundError, ValueError) as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return exit_code(e)
    return EXIT_OK


if __name__ == '__main__':
    sys.exit(main())
