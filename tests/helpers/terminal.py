"""A stream that says it is a terminal: where a progress bar draws, unlike pytest's captured stderr."""

from __future__ import annotations

import io


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True
