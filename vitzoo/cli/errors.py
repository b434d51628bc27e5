"""The errors the command-line programs turn into one line and an exit code.

Exit codes, the same in vitzoo-train, vitzoo-validate and vitzoo-profile (documented in the README):
  0   finished
  1   a problem found in what the inputs hold (corrupt data, class folders that disagree, a
      checkpoint that does not fit, divergence), or a model that failed mid-run in the profiler
  2   bad input on the command line, like argparse: a bad argument or config value, an unknown
      model, a size the model cannot take, a path that does not exist, an unwritable output
  130 / 143 stopped by SIGINT / SIGTERM after writing a recovery checkpoint
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class ConfigError(ValueError):
    """A bad command-line argument or YAML recipe value (exit code 2)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not fit the model."""


class DataError(ValueError):
    """A dataset problem found before or during training."""


class DivergenceError(FloatingPointError):
    """The loss or the weights became non-finite."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a recovery checkpoint was written."""

    def __init__(self, signum: int, path: str | None):
        self.signum, self.path = signum, path
        super().__init__(f'stopped by signal {signum}; recovery checkpoint: {path}')


def one_line(err: BaseException) -> str:
    """The message's last non-empty line (a DataLoader worker's error carries a traceback)."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    last = lines[-1]
    head, sep, rest = last.partition(': ')  # 'vitzoo.cli.data.CorruptImageError: ...' from a worker
    return rest if sep and head.replace('.', '').replace('_', '').isalnum() and head.endswith(('Error', 'Exception')) else last


def exit_code(err: BaseException) -> int:
    """EXIT_USAGE for bad command-line input (ConfigError, a missing path), else EXIT_ERROR."""
    return EXIT_USAGE if isinstance(err, (ConfigError, FileNotFoundError)) else EXIT_ERROR
