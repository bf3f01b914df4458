"""Argument checks shared by the whole package: each raises ``ValueError`` naming the argument and its range; and
``Once``, by which a warning or a log line is given once.

Integers are taken in any integer type (``numpy.int64``, a 0-d integer tensor: whatever has ``__index__``)
and returned as a plain ``int``; ``True``/``False`` are not integers here, though Python counts them as such.
"""

from __future__ import annotations

import math
import operator
from typing import Any

__all__ = ["Once", "check_int", "check_number", "resolve_device"]


class Once:
    """The keys seen so far: ``first(key)`` is true the first time a key comes, so a thing is said once per run."""

    def __init__(self) -> None:
        self.seen: set[Any] = set()

    def first(self, key: Any) -> bool:
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    if low is None:
        return f"{'<' if high_open else '<='} {_num(high)}"
    return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, *, what: str = "") -> int:
    """``value`` as an ``int`` if it is an integer in ``[low, high]`` (``None``: unbounded); ``what`` is appended
    to the message (what the number counts)."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or (low is not None and number < low) or (high is not None and number > high):
        suffix = f" ({what})" if what else ""
        raise ValueError(f"{name} must be an integer {_range(low, high)}{suffix}, got {value!r}")
    return number


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    what: str = "",
) -> float:
    """``value`` as a finite ``float`` in the range (open or closed at either end); ``what`` as in ``check_int``."""
    ok = not isinstance(value, (bool, str, bytes))
    try:
        number = float(value) if ok else math.nan
    except (TypeError, ValueError):
        number = math.nan
    # `not (low <= x)` is also true for NaN, which a plain comparison would let through
    ok = math.isfinite(number) and (low < number if low_open else low <= number)
    ok = ok and (number < high if high_open else number <= high)
    if not ok:
        lo = None if low == -math.inf else low
        hi = None if high == math.inf else high
        span = "finite" if lo is None and hi is None else _range(lo, hi, low_open, high_open)
        suffix = f" ({what})" if what else ""
        raise ValueError(f"{name} must be a number {span}{suffix}, got {value!r}")
    return number


def resolve_device(name: str) -> Any:
    """The ``torch.device`` a device name means here: ``auto`` is CUDA when there is a GPU, else the CPU."""
    import torch  # here, so that the schedule's pure functions import no torch

    if not isinstance(name, str):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here (use --device cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:  # torch's message lists every backend it knows; ours names what this library runs on
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
