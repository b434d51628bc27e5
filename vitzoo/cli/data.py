"""Datasets for training: one class-to-index map for every split, corrupt images skipped and
listed (or fatal with --strict-data), a cheap pre-flight of the val split, and an eval sampler
that shards without padding (DDP metrics count every image once).
"""
from __future__ import annotations

import logging
import math
import os
import random
from contextlib import suppress
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset
from timm.data.readers.reader_image_folder import find_images_and_targets

from .errors import DataError

_logger = logging.getLogger('train')

SPLIT_SYNONYMS = {
    'train': ('train', 'training'),
    'training': ('training', 'train'),
    'validation': ('validation', 'val'),
    'val': ('val', 'validation'),
}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class CorruptImageError(DataError):
    """An image of the dataset cannot be decoded (with --strict-data); the message names the file."""


def find_split_dir(root: Optional[str], split: str) -> str:
    """The folder of `split` under `root` (accepting val/validation, train/training)."""
    if not root:
        raise DataError('no data directory given (positional DIR or --data-dir)')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'data directory not found: {root}')
    names = SPLIT_SYNONYMS.get(split, (split,))
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    tried = ', '.join(os.path.join(root, n) for n in names)
    raise FileNotFoundError(f"no '{split}' split in data directory {root} (looked for {tried})")


class SkippingImageDataset(ImageDataset):
    """timm's ImageDataset that names every unreadable image.

    Training (`substitute=True`) replaces a bad sample by the next readable one (deterministic,
    so exact resume holds); evaluation returns a blank image with target -1, which the eval loop
    leaves out. Each bad path is logged and appended to `bad_log` (one line per path; loader
    workers append too). `strict=True` raises CorruptImageError at the first one instead.
    """

    def __init__(self, root: str, class_map=None, input_img_mode: str = 'RGB', strict: bool = False,
                 substitute: bool = True):
        try:
            super().__init__(root, class_map=class_map, input_img_mode=input_img_mode)
        except RuntimeError as e:  # timm's reader: 'Found 0 images in subfolders of ...'
            raise DataError(str(e)) from None
        self.strict, self.substitute = strict, substitute
        self.bad_log: Optional[str] = None

    @property
    def class_to_idx(self) -> dict:
        return self.reader.class_to_idx

    def _load(self, index: int):
        img, target, *_ = self.reader[index]
        with img if hasattr(img, 'read') else suppress():
            img = Image.open(img)
            img = img.convert(self.input_img_mode) if self.input_img_mode else img
            img.load()
        return img, target

    def _report(self, index: int, err: Exception) -> None:
        path = self.reader.filename(index, absolute=True)
        if self.strict:
            raise CorruptImageError(f'corrupt or unreadable image: {path} ({err})')
        _logger.warning(f'skipped corrupt or unreadable image: {path} ({err})')
        if self.bad_log:
            with open(self.bad_log, 'a') as f:
                f.write(f'{path}\n')

    def __getitem__(self, index: int):
        n = len(self.reader)
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                img, target = self._load(i)
                break
            except _DECODE_ERRORS as e:
                self._report(i, e)
                if not self.substitute:
                    img, target = Image.new(self.input_img_mode or 'RGB', (32, 32)), None
                    target = -1
                    break
        else:
            raise DataError(f'no readable image in {self.reader.root}')
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None and target >= 0:
            target = self.target_transform(target)
        return img, target


def split_classes(split_dir: str) -> dict:
    """The class-to-index map timm's folder reader would build for this split alone."""
    _, class_to_idx = find_images_and_targets(split_dir)
    return class_to_idx


def check_same_classes(train_classes: dict, val_dir: str) -> None:
    """A val class unknown to train, or a train class with no val folder, is a DataError."""
    val_classes = set(split_classes(val_dir))
    unknown = sorted(val_classes - set(train_classes))
    missing = sorted(set(train_classes) - val_classes)
    if unknown:
        raise DataError(f'val split {val_dir} has {len(unknown)} class folder(s) that train lacks: '
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    if missing:
        raise DataError(f'val split {val_dir} lacks {len(missing)} class folder(s) that train has: '
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")


def preflight(dataset: SkippingImageDataset, strict: bool) -> list[str]:
    """Open every image's header (cheap: no pixel decode) and return the unreadable paths.

    With strict=True the first one is a CorruptImageError, before any training.
    """
    bad = []
    for i in range(len(dataset.reader)):
        path = dataset.reader.filename(i, absolute=True)
        try:
            with Image.open(path) as im:
                im.verify()
        except _DECODE_ERRORS as e:
            if strict:
                raise CorruptImageError(f'corrupt or unreadable image: {path} ({e})') from None
            bad.append(path)
    return bad


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... : every sample on exactly one rank, no padding."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.world))


def shard_eval_loader(loader, rank: int, world: int):
    """Rebuild a timm eval loader (plain or prefetching) over a padding-free ShardSampler."""
    inner = getattr(loader, 'loader', loader)
    new = torch.utils.data.DataLoader(
        inner.dataset, batch_size=inner.batch_size, sampler=ShardSampler(len(inner.dataset), rank, world),
        num_workers=inner.num_workers, collate_fn=inner.collate_fn, pin_memory=inner.pin_memory,
        drop_last=False, worker_init_fn=inner.worker_init_fn, persistent_workers=inner.persistent_workers)
    if inner is loader:
        return new
    loader.loader = new
    return loader


# ------------------------------------------------------------------------------------------
# a loader that keeps its workers and still resumes exactly
# ------------------------------------------------------------------------------------------
#
# Persistent workers keep their RNG from epoch to epoch, so no worker-side RNG may carry state
# that a resumed run would lack. Instead every random draw is made a function of where it
# happens: the sampler (main process) hands each worker `(epoch, index)`, the dataset seeds
# torch/numpy/python from (seed, rank, epoch, index) before loading and augmenting that sample
# (the collate's mixup/cutmix then follows from the batch's last sample), and the prefetcher's
# random erasing is seeded per batch. A mid-epoch resume then only skips the consumed indices
# in the sampler: nothing is re-read and every later sample is augmented exactly as before.

def _mix64(x: int) -> int:
    """splitmix64 finaliser: nearby (seed, epoch, index) give unrelated seeds."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def sample_seed(seed: int, rank: int, epoch: int, index: int) -> int:
    """One 63-bit seed per (run seed, rank, epoch, sample or batch index)."""
    h = _mix64(seed * 0x9E3779B97F4A7C15 + rank)
    h = _mix64(h + epoch * 0xD1B54A32D192ED03)
    return _mix64(h + index) >> 1


def seed_all(s: int) -> None:
    """Seed python, numpy and torch's CPU generator (not CUDA's: a worker has none, and the main
    process keeps data draws apart from training draws with RngStream)."""
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.default_generator.manual_seed(s)


class EpochSampler(torch.utils.data.Sampler):
    """Yields `(epoch, index)`: the shuffled order of `epoch`, from sample `start` on.

    The order comes from a generator seeded by (seed, epoch) alone, or from a wrapped
    distributed sampler's own `set_epoch` (DistributedSampler, timm's RepeatAugSampler), so it
    never depends on the global RNG. `len()` is the whole epoch's count, also while skipping.
    """

    def __init__(self, n: int, seed: int, inner: Optional[torch.utils.data.Sampler] = None):
        self.n, self.seed, self.inner = n, seed, inner
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if self.inner is not None:
            self.inner.set_epoch(self.epoch)
            return list(self.inner)
        g = torch.Generator()
        g.manual_seed(sample_seed(self.seed, 0, self.epoch, -1))
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order()[self.start:]:
            yield self.epoch, i

    def __len__(self) -> int:
        return len(self.inner) if self.inner is not None else self.n


class SeededDataset(torch.utils.data.Dataset):
    """A map-style dataset indexed by `(epoch, index)`: seeds every RNG for that sample first.

    Returns `(*sample, epoch)`; EpochCollate strips the epoch (and uses it for mixup-off).
    A plain int index (evaluation) loads without seeding.
    """

    def __init__(self, dataset, seed: int, rank: int):
        self.dataset, self.seed, self.rank = dataset, seed, rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            epoch, index = key
            seed_all(sample_seed(self.seed, self.rank, epoch, index))
            return (*self.dataset[index], epoch)
        return self.dataset[key]


class EpochCollate:
    """The loader's collate (timm's fast_collate / FastCollateMixup / default) on samples that
    carry their epoch: mixup/cutmix switch off from `mixup_off_epoch` on inside the workers
    (a persistent worker's copy of the collate never sees a flag set in the main process)."""

    def __init__(self, inner: Callable, mixup_off_epoch: int = 0):
        self.inner, self.mixup_off_epoch = inner, mixup_off_epoch

    def __call__(self, batch):
        epoch = batch[0][-1]
        if self.mixup_off_epoch and hasattr(self.inner, 'mixup_enabled'):
            self.inner.mixup_enabled = epoch < self.mixup_off_epoch
        return self.inner([s[:-1] for s in batch])


class SeededErasing:
    """timm's prefetcher RandomErasing, seeded per batch: the prefetcher erases batch i+1 while
    handing out batch i, so a call counter (reset by `begin`) names the batch being erased."""

    def __init__(self, inner: Callable, seed: int, rank: int):
        self.inner, self.seed, self.rank = inner, seed, rank
        self.epoch = self.batch = 0

    def begin(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = sample_seed(self.seed, self.rank, self.epoch, -2 - self.batch)
        py_state = random.getstate()
        try:  # erasing draws python's random (boxes) and torch's (pixels, on x's device)
            with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
                random.seed(s)
                torch.default_generator.manual_seed(s)
                if x.is_cuda:
                    torch.cuda.manual_seed(s)
                return self.inner(x)
        finally:
            self.batch += 1
            random.setstate(py_state)


def resumable_train_loader(loader, seed: int, rank: int, mixup_off_epoch: int = 0, persistent: bool = True):
    """Rebuild a timm train loader (plain or prefetching) over EpochSampler/SeededDataset with
    persistent workers; an iterable dataset's loader is returned unchanged (it has no indices)."""
    inner = getattr(loader, 'loader', loader)
    if isinstance(inner.dataset, torch.utils.data.IterableDataset):
        return loader
    sampler = EpochSampler(len(inner.dataset), seed, inner=getattr(inner, 'sampler', None)
                           if hasattr(getattr(inner, 'sampler', None), 'set_epoch') else None)
    new = torch.utils.data.DataLoader(
        SeededDataset(inner.dataset, seed, rank), batch_size=inner.batch_size, sampler=sampler,
        num_workers=inner.num_workers, collate_fn=EpochCollate(inner.collate_fn, mixup_off_epoch),
        pin_memory=inner.pin_memory, drop_last=inner.drop_last, worker_init_fn=inner.worker_init_fn,
        persistent_workers=persistent and inner.num_workers > 0)
    if inner is loader:
        return new
    loader.loader = new
    if getattr(loader, 'random_erasing', None) is not None:
        loader.random_erasing = SeededErasing(loader.random_erasing, seed, rank)
    return loader


def begin_epoch(loader, epoch: int, step: int) -> bool:
    """Point a resumable loader at micro-batch `step` of `epoch`; False for any other loader."""
    inner = getattr(loader, 'loader', loader)
    sampler = getattr(inner, 'sampler', None)
    if not isinstance(sampler, EpochSampler):
        return False
    sampler.set_epoch(epoch, start=step * inner.batch_size)
    erasing = getattr(loader, 'random_erasing', None)
    if isinstance(erasing, SeededErasing):
        erasing.begin(epoch, step)
    return True


class BackgroundCheck:
    """`preflight` of a split in a daemon thread beside training, so a large train split costs
    no start-up time and an unreadable image the sampler never hands out is still listed."""

    def __init__(self, dataset: SkippingImageDataset):
        import threading
        self._bad: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(dataset,), daemon=True, name='image-check')
        self._thread.start()

    def _run(self, dataset: SkippingImageDataset) -> None:
        self._bad = preflight(dataset, strict=False)

    def result(self) -> list[str]:
        """The unreadable paths (waits for the check to finish)."""
        self._thread.join()
        return list(self._bad)
