"""What a run leaves besides checkpoints: TensorBoard scalars (when `tensorboard` is installed),
a PNG of the loss and accuracy curves, a log file, and safetensors exports of the weights."""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

_logger = logging.getLogger('train')


class Scalars:
    """TensorBoard SummaryWriter when importable, else nothing (the CSV logs hold the same numbers)."""

    def __init__(self, run_dir: Optional[str]):
        self.writer = None
        if run_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            _logger.info("tensorboard is not installed: no TensorBoard event files (pip install 'vitzoo[tensorboard]')")
            return
        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, 'tb'))

    def add(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class EarlyLog(logging.Handler):
    """Holds the 'train' logger's lines from before the run folder exists (model, lr, recipe) so
    that train.log starts with them; detaches itself once flushed (or after `capacity` lines)."""

    def __init__(self, capacity: int = 500):
        super().__init__()
        self.capacity, self.records = capacity, []
        log = logging.getLogger('train')
        for h in [h for h in log.handlers if isinstance(h, EarlyLog)]:  # a failed earlier run's
            log.removeHandler(h)
        log.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) >= self.capacity:
            self.detach()

    def detach(self) -> None:
        logging.getLogger('train').removeHandler(self)

    def flush_to(self, handler: logging.Handler) -> None:
        self.detach()
        for r in self.records:
            handler.handle(r)
        self.records = []


def write_bad_list(path: str, extra: list[str]) -> list[str]:
    """bad_images.txt rewritten as one line per unreadable file (sorted, each once), `extra` added;
    returns the list. Loader workers only append, so the same file may have been met twice."""
    bad = set(p for p in extra if p)
    if os.path.exists(path):
        with open(path) as f:
            bad.update(ln.strip() for ln in f if ln.strip())
    out = sorted(bad)
    from .checkpoints import atomic_write_bytes
    atomic_write_bytes(''.join(p + '\n' for p in out).encode(), path)
    return out


def add_log_file(run_dir: str) -> logging.Handler:
    """Mirror the 'train' logger into <run>/train.log (appending on resume)."""
    h = logging.FileHandler(os.path.join(run_dir, 'train.log'))
    h.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
    for name in ('train', 'timm'):
        logging.getLogger(name).addHandler(h)
    logging.getLogger('train').setLevel(logging.INFO)
    return h


def remove_log_file(h: logging.Handler) -> None:
    for name in ('train', 'timm'):
        logging.getLogger(name).removeHandler(h)
    h.close()


def plot_curves(summary_rows: list[dict], path: str) -> Optional[str]:
    """loss and accuracy per epoch from summary.csv rows into a PNG; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        _logger.info("matplotlib is not installed: no curves.png (pip install 'vitzoo[plot]')")
        return None
    if not summary_rows:
        return None
    epochs = [int(r['epoch']) for r in summary_rows]  # counted from 0, as in summary.csv and the log
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ('train_loss', 'eval_loss', 'eval_ema_loss'):
        if key in summary_rows[0] and summary_rows[0][key] not in ('', None):
            a.plot(epochs, [float(r[key]) for r in summary_rows], marker='o', label=key)
    a.set_xlabel('epoch'), a.set_ylabel('loss'), a.legend()
    for key in ('eval_top1', 'eval_top5', 'eval_ema_top1'):
        if key in summary_rows[0] and summary_rows[0][key] not in ('', None):
            b.plot(epochs, [float(r[key]) for r in summary_rows], marker='o', label=key)
    b.set_xlabel('epoch'), b.set_ylabel('accuracy (%)'), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def export_safetensors(state_dict: dict, path: str) -> str:
    """The weights as a safetensors file (contiguous, shared storage split), written crash-safely."""
    from safetensors.torch import save
    from .checkpoints import atomic_write_bytes
    tensors = {k: v.detach().to('cpu').contiguous().clone() for k, v in state_dict.items()
               if isinstance(v, torch.Tensor)}
    atomic_write_bytes(save(tensors), path)
    return path
