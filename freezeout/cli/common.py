"""Pieces every subcommand shares: one-line errors, argument types and groups, number formats."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, NoReturn

__all__ = [
    "CLIError",
    "OneLineParser",
    "add_config_arguments",
    "add_model_arguments",
    "config_from_args",
    "int_in",
    "notifier",
    "path",
    "pct",
    "unit_interval",
]


class CLIError(Exception):
    """A user-facing failure: printed as one line on stderr, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


# Upper bounds of the integer flags: far above any real use, low enough that a typo cannot ask for a run that
# never ends or an allocation that cannot succeed.
MAX_SEED = 2**63 - 1  # torch's generators take 64-bit seeds
MAX_EPOCHS = 100_000
MAX_STEPS = 1_000_000
MAX_BATCH = 1_000_000
MAX_WIDTH = 4096  # growth, channels, image size
MAX_CLASSES = 100_000
MAX_REPEATS = 1000
MAX_EXAMPLES = 10**9  # val split
MAX_DEPTH = 2000  # each model checks its own depths; this only bounds a typo


def int_in(low: int, high: int) -> Any:
    """An argparse type: an integer in [low, high], with both bounds in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def unit_interval(text: str) -> float:
    """A t0 value: a number in (0, 1]."""
    from ..schedule import validate_t0

    try:
        return validate_t0(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}") from None


def notifier(command: str) -> Any:
    """Where the library's lines for the user go (a clipped batch, a resume, a repaired file): stderr, one line
    each, named after the command like its errors."""

    def notify(line: str) -> None:
        print(f"freezeout {command}: {line}", file=sys.stderr, flush=True)

    return notify


def path(text: str) -> str:
    """A file or folder name: not empty (an empty --out would mean the current folder, silently)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return text


def pct(value: Any, digits: int = 1, suffix: str = "%") -> str:
    """A fraction as a percentage, 6 wide; ``-`` for a value that is missing (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>6}{' ' * len(suffix)}"
    return f"{100 * value:6.{digits}f}{suffix}"


def add_model_arguments(group: Any, *, default_model: str = "densenet-bc") -> None:
    """``--model``, ``--depth`` and ``--growth``, from the model registry (depth and width default per model)."""
    from ..experiment.models import MODELS

    depths = "; ".join(f"{m.name}: {m.depths}" for m in MODELS.values())
    widths = "; ".join(f"{m.name}: {m.width_help} ({m.default_width})" for m in MODELS.values())
    defaults = ", ".join(f"{m.name} {m.default_depth}" for m in MODELS.values())
    group.add_argument("--model", choices=list(MODELS), default=default_model, help="(default: %(default)s)")
    group.add_argument("--depth", type=int_in(1, MAX_DEPTH), help=f"{depths} (default: {defaults})")
    group.add_argument("--growth", type=int_in(1, MAX_WIDTH), help=f"the width; {widths}")


def add_config_arguments(parser: argparse.ArgumentParser, *, per_run: bool = True) -> dict[str, Any]:
    """The flags of a ``TrainConfig``, in argument groups (returned by name, to add more to them).

    ``per_run=False`` leaves out what a sweep sets for each run (schedule, scale-lr, t0, seed), so that
    ``freezeout train`` and ``freezeout sweep`` share one definition of the rest.
    """
    from ..experiment.config import TrainConfig

    d = TrainConfig()
    groups = {name: parser.add_argument_group(name) for name in ("data", "model", "optimisation")}
    _data_arguments(groups["data"], d)
    add_model_arguments(groups["model"], default_model=d.model)
    _optimisation_arguments(groups["optimisation"], d)
    if per_run:
        groups["FreezeOut schedule"] = parser.add_argument_group("FreezeOut schedule")
        _schedule_arguments(groups["FreezeOut schedule"], d)
    groups["run"] = parser.add_argument_group("run")
    _run_arguments(groups["run"], d, per_run)
    return groups


def _data_arguments(g: Any, d: Any) -> None:
    from ..experiment.data import DATASETS

    g.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default=d.dataset,
        help="digits is embedded; mnist1d is generated (the [study] extra; --model resnet1d); pystdlib is the Python "
        "standard library's source as bytes (--model gpt, --optimizer adamw) (default: %(default)s)",
    )
    g.add_argument(
        "--data-dir",
        type=path,
        help="folder with cifar-10-python.tar.gz / cifar-100-python.tar.gz, or the unpacked folder",
    )
    g.add_argument(
        "--val-split", type=int_in(0, MAX_EXAMPLES), default=d.val_split, help="training examples held out (0)"
    )


def _optimisation_arguments(g: Any, d: Any) -> None:
    from ..experiment.config import NONFINITE, OPTIMIZERS

    g.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=d.optimizer,
        help="sgd: the paper's, Nesterov momentum; adamw: --momentum is its beta1, beta2 0.99, decay on matrices only "
        "(default: %(default)s)",
    )
    g.add_argument("--epochs", type=int_in(1, MAX_EPOCHS), default=d.epochs, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=d.batch_size, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="base learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="Nesterov momentum (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default: %(default)s)")
    g.add_argument(
        "--warmup-steps",
        type=int_in(0, MAX_STEPS),
        default=d.warmup_steps,
        help="every LR x min(1, step / W); freeze times unchanged (default: %(default)s, the paper's none)",
    )
    g.add_argument(
        "--nonfinite",
        choices=NONFINITE,
        default=d.nonfinite,
        help="on a NaN/inf loss: stop (keep the last good checkpoint) or skip the batch (default: %(default)s)",
    )


def _schedule_arguments(g: Any, d: Any) -> None:
    from ..schedule import SCHEDULES

    g.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="(default: %(default)s)")
    g.add_argument(
        "--scale-lr", action=argparse.BooleanOptionalAction, default=d.scale_lr, help="lr_i(0) = lr / t_i (on)"
    )
    g.add_argument("--t0", type=unit_interval, default=d.t0, help="in (0, 1]; 1 = baseline (default: %(default)s)")


def _run_arguments(g: Any, d: Any, per_run: bool) -> None:
    if per_run:
        g.add_argument("--seed", type=int_in(0, MAX_SEED), default=d.seed, help="(default: %(default)s)")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=d.channels_last,
        help="channels_last (NHWC) memory format, faster on CPU and CUDA (default: on)",
    )
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA only)")
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each freezable layer (recompiles bounded; see docs/COMPILE.md)",
    )
    g.add_argument(
        "--fuse",
        action=argparse.BooleanOptionalAction,
        default=d.fuse,
        help="fold frozen layers' BatchNorms into their convs for training steps, exact up to float rounding "
        "(default: on)",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """The validated ``TrainConfig`` of the flags ``add_config_arguments`` added (others keep defaults)."""
    from dataclasses import fields

    from ..experiment.config import TrainConfig

    return TrainConfig(
        **{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    ).validate()
