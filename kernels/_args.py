"""Argument parsing shared by the kernel ops' validation (one error wording for every op)."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

__all__ = ["int_tuple"]


def int_tuple(value: Union[int, Sequence[int]], name: str, n: int, where: str) -> Tuple[int, ...]:
    """`value` as `n` ints (an int is repeated); TypeError/ValueError naming `name` and `where`."""
    if isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * n
    try:
        out = tuple(int(x) for x in value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(out) != n:
        raise ValueError(f"{where}: {name} must have {n} entries, got {value!r}")
    return out
