"""``freezeout train``: the paper's experiment (DenseNet-BC on CIFAR, or the embedded digits) as a command."""

from __future__ import annotations

import argparse
import warnings

from .common import add_config_arguments, config_from_args, notifier, path

__all__ = ["add_parser", "print_summary"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (DenseNet-BC, ResNet) with FreezeOut; writes metrics.jsonl, checkpoint.pt and summary.json",
        description="Train with FreezeOut (t0 = 1 is the plain-cosine baseline). Writes into --out: config.json, "
        "metrics.jsonl (one line per epoch), checkpoint.pt (every epoch) and summary.json (at the end).",
    )
    g = add_config_arguments(p)["run"]
    g.add_argument(
        "--out", type=path, required=True, help="run folder (created; must not hold another run unless --resume)"
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the data set's augmentation (random crops, flips) (default: on)",
    )
    g.add_argument(
        "--cache",
        action="store_true",
        help="frozen layers at zero cost once an input repeats (freezeout.PrefixCache, docs/CACHE.md); "
        "needs --no-augment",
    )
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar and no line per epoch (by default: a bar on a terminal, a line per epoch on stderr)",
    )
    p.set_defaults(func=run, interrupted=interrupted)


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves to do: resume from the checkpoint of the last finished epoch, or start again."""
    from pathlib import Path

    from ..experiment.runfiles import CHECKPOINT

    if (Path(args.out) / CHECKPOINT).is_file():
        again = "the same command" if args.resume else "the same command with --resume"
        return f"{again} continues after the last finished epoch (its checkpoint is in {args.out})"
    return "no epoch had finished, so there is nothing to resume: run the same command to start again"


def print_summary(summary: dict, out: str) -> None:
    from ..experiment.progress import plural

    c = summary["config"]
    what = "baseline (t0 = 1)" if c["t0"] == 1 else f"FreezeOut {c['schedule']} t0={c['t0']:g}"
    print(
        f"{c['dataset']} {c['model']}-{c['depth']} (width {c['growth']}), {what}, {plural(summary['epochs'], 'epoch')}"
    )
    metric = (
        f"test {summary['test_bpb']:.3f} bits per byte"
        if "test_bpb" in summary  # a language model's metric
        else f"test accuracy {summary['test_accuracy']:.2%} (error {summary['test_error']:.2%})"
    )
    print(
        f"{metric}, train {summary['train_seconds']:.1f} s, wall {summary['wall_seconds']:.1f} s on {summary['device']}"
    )
    print(f"results in {out}/ (summary.json, metrics.jsonl)")


def run(args: argparse.Namespace) -> int:
    from ..experiment.launch import launch_from_env
    from ..experiment.trainer import train  # torch import only once the arguments are known good

    config = config_from_args(args)
    if config.compile:  # dynamo reads a non-leaf .grad while tracing each layer: harmless (docs/COMPILE.md)
        warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf", UserWarning)
    main = launch_from_env().is_main  # under torchrun: one summary and one of each note, not one per process
    notify = notifier("train") if main else lambda line: None
    summary = train(config, args.out, resume=args.resume, progress=not args.no_progress, notify=notify)
    if main:
        print_summary(summary, args.out)
    return 0
