"""timm `train.py` flags vitzoo-train does not implement, and timm's key names that differ from ours.

They are registered in the parser at timm's default so that an `args.yaml` written by timm's
train.py (every one of its keys) and timm command lines parse: a key left at timm's default is
ignored silently, any other value is one ConfigError line naming the flag. The list follows
timm's train.py (its sdist ships no scripts; read from the pytorch-image-models repository).
"""
from __future__ import annotations

import argparse
from typing import Any

from .errors import ConfigError

#: timm's dest -> ours, where the same option has another name here
KEY_ALIASES = {
    'opt_kwargs': 'opt_args',
    'recovery_interval': 'checkpoint_interval',
    'drop_connect': 'drop_path',  # timm: deprecated alias of drop_path
}

#: timm dest -> (default, argparse kwargs); unsupported, accepted only at the default
UNSUPPORTED: dict[str, tuple[Any, dict]] = {
    'dataset_trust_remote_code': (False, dict(action='store_true')),
    'input_key': (None, dict()),
    'target_key': (None, dict()),
    'train_num_samples': (None, dict(type=int)),
    'val_num_samples': (None, dict(type=int)),
    'epoch_repeats': (0., dict(type=float)),
    'model_dtype': (None, dict()),
    'torchscript': (False, dict(action='store_true')),
    'torchcompile_mode': (None, dict()),
    'fuser': ('', dict()),
    'aug_splits': (0, dict(type=int)),
    'jsd_loss': (False, dict(action='store_true')),
    'resplit': (False, dict(action='store_true')),
    'split_bn': (False, dict(action='store_true')),
    'train_crop_mode': (None, dict()),
    'bce_sum': (False, dict(action='store_true')),
    'bce_pos_weight': (None, dict(type=float)),
    'worker_seeding': ('all', dict()),
    'save_images': (False, dict(action='store_true')),
    'amp_impl': ('native', dict()),
    'synchronize_step': (False, dict(action='store_true')),
    'device_modules': (None, dict(nargs='+')),
    'tta': (0, dict(type=int)),
    'use_multi_epochs_loader': (False, dict(action='store_true')),
    'log_wandb': (False, dict(action='store_true')),
    'wandb_project': (None, dict()),
    'wandb_tags': ([], dict(nargs='*')),
    'wandb_resume_id': ('', dict()),
}


def add_unsupported(parser: argparse.ArgumentParser) -> None:
    """Register timm's unsupported flags (so timm command lines and args.yaml files parse)."""
    g = parser.add_argument_group("timm train.py flags not supported (an error unless at timm's default)")
    for dest, (default, kw) in UNSUPPORTED.items():
        g.add_argument('--' + dest.replace('_', '-'), dest=dest, default=default,
                       help="timm train.py option, not supported by vitzoo-train", **kw)


def at_timm_default(key: str, value: Any) -> bool:
    """True for an unsupported timm key left at timm's default (a YAML may then carry it silently)."""
    if key not in UNSUPPORTED:
        return False
    default = UNSUPPORTED[key][0]
    if isinstance(default, list):
        return isinstance(value, (list, tuple)) and list(value) == default
    return value == default and type(value) is type(default) or (value is None and default is None)


def check_unsupported(args: argparse.Namespace) -> None:
    """One ConfigError line for the first unsupported timm option set away from timm's default."""
    for dest, (default, _) in UNSUPPORTED.items():
        value = getattr(args, dest, default)
        if value != default and not (isinstance(value, (list, tuple)) and list(value) == list(default or [])):
            raise ConfigError(f"timm train.py option '--{dest.replace('_', '-')}' is not supported by "
                              f"vitzoo-train (got {value!r}; leave it at timm's default {default!r})")


def rename_keys(cfg: dict) -> dict:
    """A YAML mapping with timm's key names turned into ours (ours win where both are given)."""
    out = {}
    for key, value in cfg.items():
        k = str(key).replace('-', '_')
        k = KEY_ALIASES.get(k, k)
        if k in out and str(key).replace('-', '_') in KEY_ALIASES:
            continue
        out[k] = value
    return out
