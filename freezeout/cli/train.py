"""``freezeout train``: the paper's experiment (DenseNet-BC on CIFAR, or the embedded digits) as a command."""

from __future__ import annotations

import argparse

from ..config import DATASETS, TrainConfig
from ..models import MODELS
from ..schedule import SCHEDULES
from .common import positive_int, unit_interval

__all__ = ["add_parser", "config_from_args", "print_summary"]

_DEFAULTS = TrainConfig()


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer 6n + 4 (10, 40, 76, 186, ...), got {text!r}") from None
    if value < 10 or (value - 4) % 6:
        raise argparse.ArgumentTypeError(f"must be 6n + 4 with n >= 1 (10, 40, 76, 186, ...), got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    p = sub.add_parser(
        "train",
        help="train DenseNet-BC with FreezeOut; writes metrics.jsonl, checkpoint.pt and summary.json",
        description="Train with FreezeOut (t0 = 1 is the plain-cosine baseline). Writes into --out: config.json, "
        "metrics.jsonl (one line per epoch), checkpoint.pt (every epoch) and summary.json (at the end).",
    )
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset, help="digits is embedded (default: %(default)s)")
    g.add_argument(
        "--data-dir", help="folder with cifar-10-python.tar.gz / cifar-100-python.tar.gz, or the unpacked folder"
    )
    g.add_argument("--val-split", type=_nonneg_int, default=d.val_split, help="training examples held out (0)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default=d.model)
    g.add_argument("--depth", type=_depth, default=d.depth, help="6n + 4 (default: %(default)s)")
    g.add_argument("--growth", type=positive_int, default=d.growth, help="growth rate k (default: %(default)s)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=d.epochs, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="base learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="Nesterov momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    g = p.add_argument_group("FreezeOut schedule")
    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="(default: %(default)s)")
    g.add_argument(
        "--scale-lr", action=argparse.BooleanOptionalAction, default=d.scale_lr, help="lr_i(0) = lr / t_i (default: on)"
    )
    g.add_argument("--t0", type=unit_interval, default=d.t0, help="in (0, 1]; 1 = baseline (default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=_nonneg_int, default=d.seed, help="(default: %(default)s)")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format (a CUDA speed-up)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    g.add_argument("--out", required=True, help="run folder (created; must not hold another run unless --resume)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        depth=args.depth,
        growth=args.growth,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        scale_lr=args.scale_lr,
        t0=args.t0,
        seed=args.seed,
        val_split=args.val_split,
        device=args.device,
        channels_last=args.channels_last,
        bf16=args.bf16,
    ).validate()


def print_summary(summary: dict, out: str) -> None:
    c = summary["config"]
    what = "baseline (t0 = 1)" if c["t0"] == 1 else f"FreezeOut {c['schedule']} t0={c['t0']:g}"
    print(f"{c['dataset']} DenseNet-BC-{c['depth']} k={c['growth']}, {what}, {summary['epochs']} epochs")
    print(
        f"test accuracy {summary['test_accuracy']:.2%} (error {summary['test_error']:.2%}), "
        f"train {summary['train_seconds']:.1f} s, wall {summary['wall_seconds']:.1f} s on {summary['device']}"
    )
    print(f"results in {out}/ (summary.json, metrics.jsonl)")


def run(args: argparse.Namespace) -> int:
    from ..trainer import train  # torch import only once the arguments are known good

    config = config_from_args(args)
    summary = train(config, args.out, resume=args.resume, progress=not args.no_progress)
    print_summary(summary, args.out)
    return 0
