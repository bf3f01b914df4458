"""The command line run in-process (no interpreter start-up: a tenth of the time of a subprocess)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from freezeout.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args: object) -> Result:
    """``freezeout ARGS`` in this process: its exit status (argparse's SystemExit included) and output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: bad arguments, --help, --version
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return Result(code, out.getvalue(), err.getvalue())


def one_line_error(result: Result, match: str) -> None:
    """Exit status 2 and one line on stderr that contains ``match``, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert match in lines[0], lines[0]
