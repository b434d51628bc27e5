"""Run folders: one unique folder per run, refused reuse, and the CSV logs that resume appends to.

A new run gets `<time>-<model>-<size>-<random>`; `--experiment NAME` names it instead, and then a
folder that already holds a run (a checkpoint, a summary or a live lock) is refused unless the
run resumes. A running run holds an flock on `run.lock`, so a second process cannot join it.
"""
from __future__ import annotations

import csv
import os
import secrets
import socket
import time
from typing import Optional

from .errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no lock, reuse checks still apply)
    fcntl = None

RUN_MARKERS = ('last.pth.tar', 'recovery.pth.tar', 'summary.csv', 'steps.csv', 'finished')


def new_run_name(model: str, img_size: int) -> str:
    """Time stamp, model, size and a short random suffix: two runs started together never share."""
    return '-'.join([time.strftime('%Y%m%d-%H%M%S'), model.replace('/', '_'), str(img_size),
                     secrets.token_hex(3)])


class RunLock:
    """An exclusive flock on `<run>/run.lock` held while the run trains."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, 'run.lock')
        self.fd: Optional[int] = None

    def acquire(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                self.fd = None
                raise ConfigError(f'run folder {os.path.dirname(self.path)} belongs to a run that is '
                                  f'still running; pick another --experiment') from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f'{socket.gethostname()} {os.getpid()}\n'.encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def prepare_run_dir(output: str, name: str, resuming: bool, named: bool) -> str:
    """Create (or, when resuming, reopen) the run folder; refuse to reuse one that holds a run."""
    run_dir = os.path.join(output, name)
    if not named:
        os.makedirs(output, exist_ok=True)
        os.makedirs(run_dir, exist_ok=False)  # the random suffix makes a clash a real error
        return run_dir
    if os.path.isdir(run_dir) and not resuming:
        held = [m for m in RUN_MARKERS if os.path.exists(os.path.join(run_dir, m))]
        if held:
            state = 'a finished run' if 'finished' in held else 'a run'
            raise ConfigError(f'run folder {run_dir} already holds {state} ({held[0]}); pass --resume auto '
                              f'to continue it, or pick another --experiment')
    os.makedirs(run_dir, exist_ok=True)
    return run_dir


class CsvLog:
    """A CSV file that resume trims back to the checkpoint's progress and then appends to.

    The header is written once; rows past the resume point (written after the checkpoint, before
    the crash) are dropped, so a resumed run's log equals an uninterrupted run's.
    """

    def __init__(self, path: str):
        self.path = path
        self.fields: Optional[list[str]] = None
        if os.path.isfile(path):
            with open(path, newline='') as f:
                header = next(csv.reader(f), None)
            self.fields = header or None

    def truncate(self, keep) -> None:
        """Keep only the rows for which keep(row_dict) is true."""
        if not os.path.isfile(self.path):
            return
        with open(self.path, newline='') as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if keep(r)]
        if len(kept) == len(rows):
            return
        tmp = self.path + '.tmp'
        with open(tmp, 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, 'a', newline='') as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction='ignore')
            if new:
                w.writeheader()
            w.writerow(row)

    def rows(self) -> list[dict]:
        if not os.path.isfile(self.path):
            return []
        with open(self.path, newline='') as f:
            return list(csv.DictReader(f))
