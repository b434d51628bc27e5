"""One argparse help formatter for the console scripts: each option's default shown once."""
from __future__ import annotations

import argparse


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's '(default: X)', but only where the help text does not already say what the
    default is, and never for an unset (None/False/empty) default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        if 'default' in text.lower() or action.default in (None, False, '', argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)
