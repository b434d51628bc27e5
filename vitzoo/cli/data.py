"""Datasets for training: one class-to-index map for every split, corrupt images skipped and
listed (or fatal with --strict-data), a cheap pre-flight of the val split, and an eval sampler
that shards without padding (DDP metrics count every image once).
"""
from __future__ import annotations

import logging
import math
import os
from contextlib import suppress
from typing import Iterator, Optional

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
        drop_last=False, worker_init_fn=inner.worker_init_fn)
    if inner is loader:
        return new
    loader.loader = new
    return loader
