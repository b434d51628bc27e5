"""Crash-safe checkpoint files and the state that makes a resumed run equal an uninterrupted one.

A save writes a temp file in the same folder, flushes and fsyncs it, `os.replace`s it over the
old file (never unlinking first, so `last` is always a complete file) and fsyncs the folder.
Checkpoints hold only tensors and plain data, so they load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import pickle
import random
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from .errors import CheckpointError

# a test hook: called with the name of each step of a save ('write', 'fsync', 'replace', 'dirsync')
_SAVE_HOOK: Optional[Callable[[str], None]] = None


def _hook(step: str) -> None:
    if _SAVE_HOOK is not None:
        _SAVE_HOOK(step)


def fsync_dir(path: str) -> None:
    """fsync a folder so a rename in it survives a power loss (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover  (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str) -> None:
    """Write `data` to `path` so that `path` is always either the old or the new complete file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            _hook('write')
            f.write(data)
            f.flush()
            _hook('fsync')
            os.fsync(f.fileno())
        _hook('replace')
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _hook('dirsync')
    fsync_dir(folder)


def atomic_save(obj: Any, path: str) -> None:
    """torch.save through atomic_write_bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(buf.getvalue(), path)


def atomic_copy(src: str, dst: str) -> None:
    """Copy a finished checkpoint file under another name, crash-safely."""
    with open(src, 'rb') as f:
        atomic_write_bytes(f.read(), dst)


# ------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------

def load_file(path: str) -> dict:
    """torch.load(weights_only=True); a refused or broken file is one CheckpointError line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # timm-saver files hold their args so
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # torch's message: "Weights only load failed. ... Unsupported global: GLOBAL os.system ..."
        detail = next((ln.strip() for ln in str(e).splitlines() if 'Unsupported global' in ln
                       or 'Unsupported operand' in ln), first)
        raise CheckpointError(f'refusing to load {path}: it holds more than tensors and plain data '
                              f'(torch.load weights_only=True: {detail})') from None
    except Exception as e:  # noqa: BLE001  (truncated zip, not a torch file, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'cannot read checkpoint {path}: {msg}') from None
    if not isinstance(obj, dict):
        raise CheckpointError(f'checkpoint {path} holds a {type(obj).__name__}, not a dict')
    return obj


def model_state(ckpt: dict, use_ema: bool = False) -> dict:
    """The model weights of a checkpoint (its EMA weights with use_ema), prefix 'module.' removed."""
    if use_ema:
        sd = ckpt.get('state_dict_ema')
        if sd is None:
            raise CheckpointError('the checkpoint has no EMA weights (state_dict_ema)')
    else:
        sd = ckpt.get('state_dict', ckpt.get('model', ckpt))
    return {(k[7:] if k.startswith('module.') else k): v for k, v in sd.items()}


def load_weights(model: nn.Module, state: dict, path: str) -> None:
    """load_state_dict(strict) with a one-line summary of any mismatch.

    timm's and the official key layouts are converted first (the zoo model's loading hook), so a
    timm or official checkpoint loads like a zoo one."""
    from vitzoo.models._base import to_zoo_layout
    state = to_zoo_layout(model, state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
              if k in state and hasattr(state[k], 'shape') and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys (e.g. {missing[0]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys (e.g. {unexpected[0]})')
        if shapes:
            parts.append(f'{len(shapes)} shape mismatches (e.g. {shapes[0]}, checkpoint vs model)')
        raise CheckpointError(f'checkpoint {path} does not fit the model {type(model).__name__}: '
                              + ', '.join(parts))
    model.load_state_dict(state)


def saved_args(ckpt: dict) -> dict:
    """The training options stored in a checkpoint (a dict; older timm-saver files hold a Namespace)."""
    a = ckpt.get('args')
    if a is None:
        return {}
    return dict(a) if isinstance(a, dict) else dict(vars(a))


# ------------------------------------------------------------------------------------------
# RNG
# ------------------------------------------------------------------------------------------

def rng_state() -> dict:
    """torch, CUDA, numpy and python RNG states as tensors and plain data."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(name=np_state[0], keys=torch.from_numpy(np_state[1].astype(np.int64)),
                   pos=int(np_state[2]), has_gauss=int(np_state[3]), gauss=float(np_state[4])),
        python=dict(version=py_state[0], state=list(py_state[1]), gauss=py_state[2]),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    p = state['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch, numpy and python for one epoch, so the sampler order and the loader workers'
    seeds (drawn from torch's generator when the epoch's iterator starts) depend on the run's seed
    and the epoch only, not on how the run got there."""
    s = (seed * 1_000_003 + epoch * 10_007 + rank) % (2 ** 31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# ------------------------------------------------------------------------------------------
# which checkpoint to resume
# ------------------------------------------------------------------------------------------

CHECKPOINT_GLOBS = ('last.pth.tar', 'recovery.pth.tar', 'checkpoint-*.pth.tar')


def progress_of(ckpt: dict) -> tuple[int, int]:
    """(epoch, step) a checkpoint continues from; sorts checkpoints by how far they got."""
    return int(ckpt.get('resume_epoch', ckpt.get('epoch', -1) + 1)), int(ckpt.get('resume_step', 0))


def newest_valid(run_dir: str) -> Optional[str]:
    """The checkpoint in `run_dir` that got furthest and loads cleanly (None when there is none)."""
    best, best_key = None, None
    for pattern in CHECKPOINT_GLOBS:
        for path in glob.glob(os.path.join(run_dir, pattern)):
            try:
                ckpt = load_file(path)
            except (CheckpointError, FileNotFoundError):
                continue
            if 'state_dict' not in ckpt or 'optimizer' not in ckpt:
                continue
            key = (progress_of(ckpt), os.path.getmtime(path))
            if best_key is None or key > best_key:
                best, best_key = path, key
    return best


def all_finite(*modules: Optional[nn.Module]) -> bool:
    """True when every parameter and buffer of the modules is finite."""
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            t = t.to_local() if hasattr(t, 'to_local') else t  # FSDP2 shards
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return False
    return True
