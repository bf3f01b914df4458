"""``freezeout estimate``: predicted saving before training, the paper's FLOP estimate and a calibrated one."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_model_args", "add_parser", "build", "strategies"]


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model, input shape and strategy options shared with ``freezeout bench``."""
    from .common import MAX_BATCH, MAX_CLASSES, MAX_WIDTH, depth, int_in, unit_interval

    m = p.add_argument_group("model and input (defaults: DenseNet-BC-76, k = 12, on CIFAR-shaped batches of 50)")
    m.add_argument("--model", default="densenet-bc", help="model name (densenet-bc)")
    m.add_argument("--depth", type=depth, default=76, help="6n + 4: 76, 186, ... (default 76)")
    m.add_argument("--growth", type=int_in(1, MAX_WIDTH), default=12, help="growth rate k (default 12)")
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
    s = p.add_argument_group("strategies (rows: every schedule x scaling x t0)")
    s.add_argument(
        "--schedule", nargs="+", default=["cubic"], choices=("linear", "cubic", "all"), help="'all': the 4 strategies"
    )
    s.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=True, help="scaled LRs (default on)")
    s.add_argument("--t0", nargs="+", type=unit_interval, default=[0.8], help="one or more t0 in (0, 1] (default 0.8)")


def strategies(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """(schedule, scale_lr) pairs; ``--schedule all`` means linear/cubic x unscaled/scaled."""
    if "all" in args.schedule:
        return [(s, sc) for s in ("linear", "cubic") for sc in (False, True)]
    return [(s, args.scale_lr) for s in dict.fromkeys(args.schedule)]


def build(args: argparse.Namespace) -> tuple[Any, list, Any]:
    """The model (seeded), its layers and an example input of the requested shape; ``ValueError`` if the
    device is unknown or the model cannot take that input (too small an image for its poolings)."""
    import torch

    from ..models import build_model
    from ..timing import to_channels_last
    from ..trainer import resolve_device

    args.device = str(resolve_device(args.device))
    torch.manual_seed(0)
    model = build_model(args.model, args.depth, args.growth, args.num_classes, args.channels)
    x = torch.randn(args.batch_size, args.channels, args.input_size, args.input_size)
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{args.model}-{args.depth} cannot take a {args.input_size} x {args.input_size} input: {first}"
        ) from None
    if args.channels_last:  # time the layout training runs in
        x = to_channels_last(model, x)
    model.train()
    return model, model.layers, x


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .common import MAX_REPEATS, MAX_STEPS, int_in

    p = sub.add_parser("estimate", help="predicted wall-clock saving: the paper's FLOP estimate and a calibrated one")
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:6.1f}%"


def run(args: argparse.Namespace) -> int:
    from ..estimate import predict
    from ..flops import layer_flops

    model, layers, x = build(args)
    x = x.to(args.device)
    model.to(args.device)
    flops, rest = layer_flops(model, layers, x)
    curve = None
    if args.calibrate:
        from tqdm import tqdm

        from ..timing import default_ks, step_time_curve

        ks = default_ks(len(layers), args.curve_points)
        with tqdm(total=len(ks) * (args.repeats + 1), desc="step-time curve", disable=args.json) as bar:
            curve = step_time_curve(model, layers, x, ks=ks, repeats=args.repeats, progress=bar.update)
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
        "model": {
            "name": args.model,
            "depth": args.depth,
            "growth": args.growth,
            "num_classes": args.num_classes,
            "channels_last": args.channels_last,
        },
        "input_shape": list(x.shape),
        "num_layers": len(layers),
        "layer_flops": flops,
        "rest_flops": rest,
        "step_times": curve["step_times"] if curve else None,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    total = 2 * (sum(flops) + rest)
    print(f"{args.model}-{args.depth} (k={args.growth}), input {tuple(x.shape)}: {len(layers)} freezable layers,")
    print(
        f"{sum(flops) / 1e9:.2f} GFLOP forward in layers + {rest / 1e9:.3f} in the rest; paper step {total / 1e9:.2f}"
    )
    header = f"{'schedule':<8} {'LR':<8} {'t0':>5} {'paper':>8}"
    header += f" {'paper x1.3':>10}" if args.linear_correction else ""
    header += f" {'calibrated':>10}" if curve else ""
    print(header)
    for row in rows:
        line = f"{row['schedule']:<8} {'scaled' if row['scale_lr'] else 'unscaled':<8} {row['t0']:>5.2f}"
        line += f" {_pct(row['paper_saving']):>8}"
        if args.linear_correction:
            line += f" {_pct(row['paper_saving_corrected']):>10}"
        if curve:
            line += f" {_pct(row['calibrated_saving']):>10}"
        print(line)
    if args.linear_correction:
        print("x1.3: the authors' empirical correction for the linear schedule (not applied to cubic)")
    return 0
