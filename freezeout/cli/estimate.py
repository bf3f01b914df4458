"""``freezeout estimate``: predicted saving before training, the paper's FLOP estimate and a calibrated one."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = ["add_model_args", "add_parser", "build", "model_record", "strategies"]


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model, input shape and strategy options shared with ``freezeout bench``."""
    from ..options import FreezeOutOptions
    from ..schedule import SCHEDULES
    from .common import MAX_BATCH, MAX_CLASSES, MAX_WIDTH, add_model_arguments, int_in, unit_interval

    m = p.add_argument_group("model and input (defaults: DenseNet-BC-76, k = 12, on CIFAR-shaped batches of 50)")
    add_model_arguments(m)
    m.add_argument("--batch-size", type=int_in(1, MAX_BATCH), default=50, help="examples per step (default 50)")
    m.add_argument("--input-size", type=int_in(1, MAX_WIDTH), default=32, help="image height = width (default 32)")
    m.add_argument("--channels", type=int_in(1, MAX_WIDTH), default=3, help="input channels (default 3)")
    m.add_argument("--num-classes", type=int_in(1, MAX_CLASSES), default=10, help="classes (default 10)")
    m.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    m.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last (NHWC) layout, as the trainer uses by default (default: on)",
    )
    m.add_argument(
        "--fuse",
        action=argparse.BooleanOptionalAction,
        default=FreezeOutOptions().fuse,
        help="frozen layers' BatchNorms folded into their convs, FreezeOut's fuse option (default: off)",
    )
    s = p.add_argument_group("strategies (rows: every schedule x scaling x t0)")
    s.add_argument(
        "--schedule", nargs="+", default=["cubic"], choices=(*SCHEDULES, "all"), help="'all': the 4 strategies"
    )
    s.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True, help="scaled LRs (default on)")
    s.add_argument("--t0", nargs="+", type=unit_interval, default=[0.8], help="one or more t0 in (0, 1] (default 0.8)")


def strategies(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """(schedule, scale_lr) pairs; ``--schedule all`` means the paper's four strategies."""
    from ..schedule import STRATEGIES

    if "all" in args.schedule:
        return list(STRATEGIES.values())
    return [(s, args.scale_lr) for s in dict.fromkeys(args.schedule)]


def build(
    args: argparse.Namespace, *, training: bool = False, copies: int = 0, inputs: int = 0
) -> tuple[Any, list, Any]:
    """The model (seeded), its layers and an example input of the requested shape, on ``args.device``;
    ``ValueError`` if the device is unknown or the model cannot take that input.

    ``training``: the input is real, for training steps as the step-time curve and bench run them, and it is
    first checked that they fit in memory, with ``copies`` more copies of the model and ``inputs`` more input
    batches held besides (``ValueError`` naming the batch that fits), measured at small batches before the batch
    is allocated. Otherwise the input is a meta tensor: enough for ``layer_flops_meta``, and no memory at all.
    """
    import torch

    from ..analysis.memory import size_batch
    from ..checks import resolve_device
    from ..experiment.models import MODELS, build_example, example_input, get_model

    if get_model(args.model).example is not None:  # its input is token ids, not the images these commands make
        images = ", ".join(name for name, spec in MODELS.items() if spec.example is None)
        raise ValueError(
            f"--model {args.model} takes token ids: this command times image models ({images}); for a language "
            "model, freezeout.analysis.estimate_saving(model, layers, token_ids) from Python"
        )
    args.device = str(resolve_device(args.device))
    shape = (args.channels, args.input_size, args.input_size)
    model, _ = build_example(args.model, args.depth, args.growth, args.num_classes, shape, 1, args.channels_last)
    args.depth, args.growth = model.depth, getattr(model, "growth", getattr(model, "width", None))
    model.to(args.device)
    if not training:
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        return model, model.layers, torch.empty((args.batch_size, *shape), device="meta", memory_format=layout)
    model_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    size_batch(
        _probe(model, shape, args),
        args.batch_size,
        args.device,
        what="a training step",
        extra=lambda b: copies * model_bytes + inputs * 4 * b * math.prod(shape),
    )
    return model, model.layers, example_input(shape, args.batch_size, args.channels_last).to(args.device)


def _probe(model: Any, shape: tuple[int, int, int], args: argparse.Namespace) -> Any:
    """A training step at batch ``b`` on a copy of ``model``, as the step-time curve runs it."""
    import torch.nn.functional as F

    from ..analysis.timing import copy_model, make_optimizer, random_targets, train_step
    from ..experiment.models import example_input

    clone, layers = copy_model(model, model.layers)

    def work(b: int) -> None:
        x = example_input(shape, b, args.channels_last).to(args.device)
        optimizer = make_optimizer(clone, layers)
        train_step(clone, optimizer, x, random_targets(clone, x), F.cross_entropy)
        optimizer.zero_grad(set_to_none=True)  # each probe allocates its own gradients

    return work


def model_record(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "depth", "growth", "num_classes", "channels_last", "fuse")
    return {"name" if k == "model" else k: getattr(args, k) for k in keys}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .common import MAX_REPEATS, MAX_STEPS, int_in

    p = sub.add_parser(
        "estimate",
        help="predicted wall-clock saving: the paper's FLOP estimate and a calibrated one",
        description="Predict FreezeOut's saving of training time before training, for each schedule and t0 asked "
        "for: the paper's estimate from each layer's forward FLOPs (Eq. 2-3, counted on the meta device: seconds, "
        "no memory), and with --calibrate one measured here, the step time with the first k layers frozen "
        "integrated over the schedule (minutes: it trains a copy of the model; its progress shows on stderr).",
    )
    add_model_args(p)
    e = p.add_argument_group("estimate")
    e.add_argument("--calibrate", action="store_true", help="also measure step times with k layers frozen here")
    e.add_argument(
        "--linear-correction", action="store_true", help="apply the authors' empirical x1.3 to linear-schedule rows"
    )
    e.add_argument(
        "--repeats",
        type=int_in(1, MAX_REPEATS),
        default=2,
        help="timed steps per k when calibrating (median; default 2)",
    )
    e.add_argument(
        "--curve-points",
        type=int_in(2, MAX_STEPS),
        default=41,
        help="k values measured, rest interpolated (default 41)",
    )
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.estimate import predict
    from ..analysis.flops import layer_flops_meta

    # --calibrate: the step-time curve trains a copy of the model
    model, layers, x = build(args, training=args.calibrate, copies=int(args.calibrate))
    flops, rest = layer_flops_meta(model, layers, x)
    curve = _curve(args, model, layers, x) if args.calibrate else None
    rows = [
        predict(
            flops,
            rest,
            t0,
            schedule,
            scale,
            linear_correction=args.linear_correction,
            step_times=curve["step_times"] if curve else None,
        )
        for schedule, scale in strategies(args)
        for t0 in args.t0
    ]
    result = {
        "model": model_record(args),
        "input_shape": list(x.shape),
        "num_layers": len(layers),
        "layer_flops": flops,
        "rest_flops": rest,
        "step_times": curve["step_times"] if curve else None,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(args, result)
    return 0


def _curve(args: argparse.Namespace, model: Any, layers: list, x: Any) -> dict[str, Any]:
    """The step-time curve of ``--calibrate``, its progress on stderr (``output.Progress``)."""
    from ..analysis.timing import default_ks, step_time_curve
    from .output import Progress

    ks = default_ks(len(layers), args.curve_points)
    with Progress("estimate", "step-time curve", len(ks) * (args.repeats + 1), unit="training step") as bar:
        return step_time_curve(model, layers, x, ks=ks, repeats=args.repeats, progress=bar.update, fuse=args.fuse)


def _print_table(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from .common import pct

    flops, rest, rows, curve = result["layer_flops"], result["rest_flops"], result["rows"], result["step_times"]
    shape, n = tuple(result["input_shape"]), result["num_layers"]
    total = 2 * (sum(flops) + rest)
    print(f"{args.model}-{args.depth} (width {args.growth}), input {shape}: {n} freezable layers,")
    print(
        f"{sum(flops) / 1e9:.2f} GFLOP forward in layers + {rest / 1e9:.3f} in the rest; paper step {total / 1e9:.2f}"
    )
    header = f"{'schedule':<8} {'LR':<8} {'t0':>5} {'paper':>8}"
    header += f" {'paper x1.3':>10}" if args.linear_correction else ""
    header += f" {'calibrated':>10}" if curve else ""
    print(header + f" {'0-cost':>8}")
    for row in rows:
        line = f"{row['schedule']:<8} {'scaled' if row['scale_lr'] else 'unscaled':<8} {row['t0']:>5.2f}"
        line += f" {pct(row['paper_saving']):>8}"
        if args.linear_correction:
            line += f" {pct(row['paper_saving_corrected']):>10}"
        if curve:
            line += f" {pct(row['calibrated_saving']):>10}"
        print(line + f" {pct(row['zero_cost_saving']):>8}")
    if args.linear_correction:
        print("x1.3: the authors' empirical correction for the linear schedule (not applied to cubic)")
    print("0-cost: frozen layers at no cost (paper's FLOPs), the bound of the frozen-prefix cache (docs/CACHE.md)")
