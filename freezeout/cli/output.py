"""What the command line says besides its results: errors in the words of its flags, and progress that shows on a
terminal and off one."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["PROGRESS_EVERY", "Progress", "in_flags"]

# The library's names for arguments whose flag is spelt otherwise (``train(config, out_dir)`` is ``--out``).
_ALIASES = {"out_dir": "out"}


def _flags(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each argument of ``parser`` by its Python names (its ``dest``, and its flag spelt as a name: the
    sweep's ``--t0`` has ``dest="t0s"``): its ``--`` flags, the positive one first."""
    flags: dict[str, list[str]] = {}
    for action in parser._actions:
        options = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if options:
            for name in (action.dest, options[0][2:].replace("-", "_")):
                flags.setdefault(name, options)
    for name, flag in _ALIASES.items():
        if flag in flags:
            flags.setdefault(name, flags[flag])
    return flags


def in_flags(message: str, parser: argparse.ArgumentParser, given: Iterable[object] = ()) -> str:
    """``message`` (a library error) in the words of ``parser``'s flags: the argument it opens with, its subject
    (``data_dir is required`` -> ``--data-dir is required``, ``out_dir x is not writable`` -> ``--out x ...``),
    and every ``name=True`` / ``name=False`` (``--cache``, ``--no-augment``). Other words are left alone, even
    where one is spelt like a flag: only the subject and the ``name=value`` form are the library naming its
    arguments; and a subject that is one of the values ``given`` on the command line (a folder named ``model``
    given as ``--out``) is that value, not a flag."""
    flags = _flags(parser)
    values = {str(v) for v in given}

    def subject(m: re.Match) -> str:
        return flags[m.group(1)][0] if m.group(1) in flags and m.group(1) not in values else m.group(1)

    def setting(m: re.Match) -> str:
        options = flags.get(m.group(1), [])
        wanted = [o for o in options if o.startswith("--no-") == (m.group(2) == "False")]
        if m.group(2) == "True" and len(options) == 1:
            wanted = options
        return wanted[0] if wanted else m.group(0)

    message = re.sub(r"^(\w+)(?=(?: \S+)? (?:must|is|are)\b)", subject, message)
    return re.sub(r"\b(\w+)=(True|False)\b", setting, message)


PROGRESS_EVERY = 30.0  # seconds between progress lines off a terminal: a log shows the work alive, not flooded


class Progress:
    """A long measurement's progress on stderr: a bar on a terminal (tqdm), and off one (a pipe, a file) a line
    at the start, one every ``PROGRESS_EVERY`` seconds with the count done and the time left, and one at the end,
    so that a log shows the work alive and when it should end. ``quiet``: nothing at all."""

    def __init__(
        self, command: str, what: str, total: int, unit: str = "step", quiet: bool = False, stream: TextIO | None = None
    ) -> None:
        from ..experiment.progress import plural

        self.stream = sys.stderr if stream is None else stream
        self.prefix, self.what, self.total, self.unit = f"freezeout {command}: {what}", what, total, unit
        self.done, self.bar = 0, None
        self.started = self.shown = time.monotonic()
        isatty = getattr(self.stream, "isatty", None)
        self.lines = not quiet and not (isatty is not None and isatty())
        if not quiet and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)
        elif self.lines:
            self._line(f"{plural(total, unit)} to run")

    def _line(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        from ..experiment.progress import duration

        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.lines and now - self.shown >= PROGRESS_EVERY and 0 < self.done < self.total:
            self.shown, spent = now, now - self.started
            left = spent / self.done * (self.total - self.done)
            self._line(
                f"{self.done}/{self.total} {self.unit}s ({self.done / self.total:.0%}), {duration(spent)} so far, "
                f"about {duration(left)} left"
            )

    def close(self, finished: bool = True) -> None:
        """The bar gone, or off a terminal the line that says the work is done (``finished``: it did not stop
        short, interrupted or failed)."""
        from ..experiment.progress import duration, plural

        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines and self.done and finished:
            self._line(f"{plural(self.done, self.unit)} done in {duration(time.monotonic() - self.started)}")
            self.lines = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close(finished=kind is None)
