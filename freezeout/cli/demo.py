"""``freezeout demo``: the embedded default run."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train baseline vs FreezeOut on the embedded digits data")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("freezeout demo: the DenseNet-BC demo on embedded data arrives with the trainer; see README.")
    return 0
