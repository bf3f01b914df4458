"""The ``freezeout`` command: each subcommand lives in a module of this package and registers itself."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from .common import CLIError, OneLineParser
from .output import in_flags

__all__ = ["build_parser", "command_parser", "main", "no_command"]

# (module, command) pairs; a module provides add_parser(subparsers) that sets `func` on its parser.
_COMMANDS = ("demo", "train", "estimate", "bench", "sweep", "plot")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="freezeout", description="Accelerate training by progressively freezing layers.")
    parser.add_argument("--version", action="version", version=f"freezeout {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    # not required: with no command, main prints the usage, the commands and where to start, not a bare error
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    import importlib

    for name in _COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        print(no_command(parser), file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        then = getattr(args, "interrupted", None)  # what a command can say about continuing
        print(f"freezeout {args.command}: interrupted{'; ' + then(args) if then else ''}", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError) as exc:
        given = [v for v in vars(args).values() if isinstance(v, (str, os.PathLike))]  # what the user typed
        message = in_flags(_first_line(exc), command_parser(parser, args.command), given)
        print(f"freezeout {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise  # a bug: its traceback is what a report needs
        print(
            f"freezeout {args.command}: error: out of memory ({_first_line(exc)}); try a smaller --batch-size",
            file=sys.stderr,
        )
        return 2


def _commands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one ``command`` of ``parser`` (``build_parser()``)."""
    return _commands(parser).choices[command]


def no_command(parser: argparse.ArgumentParser) -> str:
    """What ``freezeout`` alone prints: the usage, each command in a line, and the command to try first."""
    sub = _commands(parser)
    commands = [f"  {a.dest:<9} {a.help}" for a in sub._choices_actions]
    return "\n".join(
        [
            parser.format_usage().rstrip(),
            "",
            "commands:",
            *commands,
            "",
            "freezeout: error: no command given; try `freezeout demo` (baseline vs FreezeOut on the embedded digits, "
            "about a minute, no download), or `freezeout COMMAND --help`",
        ]
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# What an allocator that ran out says: torch.OutOfMemoryError (CUDA, a RuntimeError), the CPU allocator's
# RuntimeError, and Python's MemoryError.
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (
        type(exc).__name__ == "OutOfMemoryError" or any(t in str(exc).lower() for t in _OOM_TEXT)
    )
