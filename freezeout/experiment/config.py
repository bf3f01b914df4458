"""The training run's configuration: one typed dataclass, validated before anything runs."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..checks import check_int, check_number
from ..options import FreezeOutOptions
from ..schedule import validate_schedule, validate_t0
from .data import get_dataset
from .models import MODELS, get_model
from .progress import plural

__all__ = [
    "DEVICES",
    "FLOAT32_MAX",
    "NONFINITE",
    "OPTIMIZERS",
    "TrainConfig",
    "config_differences",
    "fit_batch",
    "run_identity",
    "train_examples",
]

DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd", "adamw")
# torch's SGD multiplies float32 tensors by lr and weight_decay: larger numbers cannot be converted (a RuntimeError
# inside the first step), so they are refused up front.
FLOAT32_MAX = 3.4028234663852886e38
NONFINITE = ("stop", "skip")
MAX_SEED = 2**63 - 1  # torch's generators take 64-bit seeds


@dataclass
class TrainConfig:
    """Everything that decides a run's result (not where it is written, nor whether a bar shows)."""

    dataset: str = "digits"  # the embedded data: runs anywhere with no download
    data_dir: str | None = None  # CIFAR only: the folder holding the python-version archive or its unpacked folder
    model: str = "densenet-bc"  # the paper's network
    depth: int | None = None  # None: the model's own default (the paper's DenseNet-BC-76; ResNet-20)
    growth: int | None = None  # the width: DenseNet-BC's growth rate (the paper's k = 12), ResNet's base width (16)
    epochs: int = 100  # the paper's main setting (it also reports 300)
    batch_size: int = 50  # the authors' default
    lr: float = 0.1  # the paper's base LR
    momentum: float = 0.9  # the paper: Nesterov momentum 0.9
    nesterov: bool = True  # ditto
    weight_decay: float = 1e-4  # the paper's (standard for DenseNet on CIFAR)
    schedule: str = "cubic"  # the paper's recommended strategy: cubic, scaled, t0 = 0.8
    scale_lr: bool = True  # ditto
    t0: float = 0.8  # 1.0 = baseline (plain cosine, nothing frozen)
    warmup_steps: int = 0  # the paper has no warmup; W > 0 multiplies every LR by min(1, step / W)
    seed: int = 0  # fixed so that two runs of one config agree
    val_split: int = 0  # training examples held out for validation (0 = none: the paper reports test error)
    device: str = "auto"  # CUDA when present: that is where the time savings matter
    # NHWC: faster DenseNet-BC steps on CPU (docs/BENCHMARKS.md, "Notes behind the defaults"), and the usual
    # layout for CUDA's tensor cores.
    channels_last: bool = True
    bf16: bool = False  # CUDA autocast option; off keeps results comparable to fp32 runs
    compile: bool = False  # per-layer torch.compile (compile_blocks): a speed option that costs compile time up front
    # Frozen layers' BatchNorms folded into their convs (FreezeOut's option, with its default). It changes results by
    # float rounding (~1e-6 relative per frozen layer), so like every field here a resumed run must use the original's.
    fuse: bool = FreezeOutOptions().fuse
    # A NaN/inf loss: "stop" ends the run at the epoch's end, keeping the last good checkpoint (a diverged run
    # rarely recovers, and it costs no host sync per step); "skip" drops such batches (one sync per step).
    nonfinite: str = "stop"
    augment: bool = True  # the data set's own augmentation (CIFAR: crops and flips; digits: 1 px crops)
    # The frozen-prefix cache (freezeout.PrefixCache): frozen layers at zero cost once an input repeats, which
    # needs augment=False (an augmented input never repeats)
    cache: bool = False
    # "sgd": the paper's (Nesterov momentum); "adamw": what a language model is trained with (momentum is its
    # beta1, beta2 = 0.99, weight decay on matrices only; nesterov does not apply)
    optimizer: str = "sgd"

    def validate(self) -> TrainConfig:
        """This config with the model's default depth and width filled in and ``data_dir`` made absolute (so
        that the files of a run name the folder it read, from wherever it is resumed), if every field is valid;
        ``ValueError`` naming the field otherwise."""
        data = get_dataset(self.dataset)
        if data.needs_dir and not self.data_dir:
            raise ValueError(
                f"data_dir is required for {self.dataset}: the folder holding its python-version archive (nothing is "
                "downloaded)"
            )
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a path string or None, got {self.data_dir!r}")
        model = get_model(self.model)
        c = replace(
            self,
            depth=model.default_depth if self.depth is None else self.depth,
            growth=model.default_width if self.growth is None else self.growth,
            data_dir=None if self.data_dir is None else os.path.abspath(os.path.expanduser(self.data_dir)),
        )
        model.check_depth(c.depth)
        check_int("growth", c.growth, 1, 4096, what=model.width_help)
        for name, low, high in (("epochs", 1, 100_000), ("batch_size", 1, 10**6), ("seed", 0, MAX_SEED)):
            check_int(name, getattr(c, name), low, high)
        check_int("val_split", c.val_split, 0)
        check_int("warmup_steps", c.warmup_steps, 0)
        _check_float32("lr", c.lr, positive=True)
        check_number("momentum", c.momentum, 0.0, 1.0, high_open=True)
        _check_float32("weight_decay", c.weight_decay, positive=False)
        validate_schedule(c.schedule)
        validate_t0(c.t0)
        for name in ("nesterov", "scale_lr", "channels_last", "bf16", "compile", "fuse", "augment", "cache"):
            if not isinstance(getattr(c, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(c, name)!r}")
        if c.nesterov and c.momentum == 0:
            raise ValueError("momentum must be > 0 with nesterov=True (torch's SGD requires it)")
        if c.cache and c.augment and (data.pad or data.flip):
            raise ValueError(
                f"cache=True needs inputs that repeat: {c.dataset} is augmented (random crops"
                f"{' and flips' * data.flip}) every epoch, so turn augmentation off (augment=False) to use the cache"
            )
        _check_pairing(c, data, model)
        if c.nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {c.nonfinite!r}")
        if c.device not in DEVICES and not str(c.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {c.device!r}")
        return c

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The inverse of ``to_dict``; unknown keys raise ``ValueError`` (a typo must not pass silently)."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**d)

    def differences(
        self, other: TrainConfig, *, device: str | None = None, other_device: str | None = None
    ) -> list[str]:
        """The fields in which the runs of the two configs differ, as ``name: self -> other`` (see ``run_identity``;
        ``device``/``other_device``: the device each run really used, where known)."""
        return config_differences(self.to_dict(), other.to_dict(), device, other_device)


def _check_float32(name: str, value: Any, *, positive: bool) -> float:
    """``value`` as a float if it is a finite number > 0 (``positive``) or >= 0, no larger than float32 can hold
    (torch's SGD multiplies float32 tensors by it); ``ValueError`` naming ``name`` and the range in words."""
    kind = "a positive number" if positive else "a number >= 0"
    try:
        number = float(value) if not isinstance(value, (bool, str, bytes)) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and (number > 0 if positive else number >= 0)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if number > FLOAT32_MAX:
        raise ValueError(f"{name} must be {kind} that float32 can hold (at most 3.4e38), got {value!r}")
    return number


def _check_pairing(c: TrainConfig, data: Any, model: Any) -> None:
    """The optimizer is known, the model takes the data set's input, and a language model's stream has no cache."""
    if c.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {c.optimizer!r}")
    takes_tokens = model.example is not None
    if (data.models is not None and c.model not in data.models) or takes_tokens != (data.task == "lm"):
        fits = data.models or [m for m in MODELS.values() if m.example is None]
        names = ", ".join(m if isinstance(m, str) else m.name for m in fits)
        raise ValueError(f"model {c.model!r} does not take dataset {c.dataset!r}'s input: use one of {names}")
    if c.cache and data.task == "lm":
        raise ValueError(f"cache needs inputs that repeat: {c.dataset}'s training windows are drawn anew each epoch")


def fit_batch(config: TrainConfig, train_examples: int, world_size: int = 1) -> tuple[TrainConfig, str | None]:
    """``config`` with a batch no larger than its training set of ``train_examples``, and the line that says so
    when it had to be clipped (``None`` otherwise). Clipped, the config records the batch that ran, so that a
    resume or a sweep compares what really ran; under torchrun, a multiple of ``world_size``."""
    check_int("train_examples", train_examples, 1)
    check_int("world_size", world_size, 1)
    if config.batch_size <= train_examples:
        return config, None
    clipped = max(world_size, train_examples // world_size * world_size)
    line = (
        f"batch size {config.batch_size} is larger than the training set ({plural(train_examples, 'example')} of "
        f"{config.dataset}): clipped to {clipped}, one step per epoch"
    )
    return replace(config, batch_size=clipped), line


def train_examples(config: TrainConfig) -> int:
    """How many examples ``config`` trains on per epoch (its data set loaded, less the validation split)."""
    from .data import load_dataset

    return load_dataset(config.dataset, config.data_dir, config.val_split).num_train


def _device_kind(name: Any, used: str | None) -> Any:
    """``cpu`` or ``cuda``: what decides the numbers (``cuda:1`` computes as ``cuda:0``). ``auto`` is the device
    the run used where known, else the one it picks on this machine."""
    if used is not None:
        name = used
    elif name == "auto":
        from ..checks import resolve_device

        name = str(resolve_device("auto"))
    return name.split(":")[0] if isinstance(name, str) else name


def run_identity(config: dict[str, Any], device: str | None = None) -> dict[str, Any]:
    """The values of a config dict that decide a run's numbers, normalised so that one run compares equal to itself
    however it was spelt: ``data_dir`` resolved (``data``, ``data/`` and its absolute path are one folder; ``None``
    for a dataset that reads no folder), ``device`` as the kind of device it trains on (``auto`` resolved; pass
    ``device``, the one the run really used, when it is known). Relative paths resolve against the current folder:
    configs written before ``validate`` made ``data_dir`` absolute hold them.

    Every other field counts as it is: each can change the numbers, ``compile`` too (inductor's fused kernels do
    not round like eager ones, so a run resumed with the other setting would match neither). What cannot change
    them (where the files go, a progress bar) is not part of the config.
    """
    out = dict(config)
    data_dir = out.get("data_dir")
    try:
        reads_dir = get_dataset(out.get("dataset", TrainConfig.dataset)).needs_dir
    except ValueError:
        reads_dir = True
    if not reads_dir:
        out["data_dir"] = None
    elif isinstance(data_dir, str) and data_dir:
        out["data_dir"] = str(Path(data_dir).expanduser().resolve())
    out["device"] = _device_kind(out.get("device", TrainConfig.device), device)
    return out


def _show(raw: Any, normal: Any) -> str:
    return repr(raw) if raw == normal else f"{raw!r} ({normal})"


def config_differences(
    saved: dict[str, Any], new: dict[str, Any], saved_device: str | None = None, new_device: str | None = None
) -> list[str]:
    """``name: saved -> new`` for each field in which the two config dicts name different runs: their values
    differ as written and once normalised (``run_identity``; ``saved_device``/``new_device``: the device each run
    really used, where known). A field missing from one side (added to TrainConfig later) counts at its default.

    Equal as written is equal: ``auto`` resumes ``auto`` on whatever device it picks now, as it always has.
    """
    defaults = TrainConfig().to_dict()
    a_raw, b_raw = {**defaults, **saved}, {**defaults, **new}
    a, b = run_identity(a_raw, saved_device), run_identity(b_raw, new_device)
    return [
        f"{k}: {_show(a_raw.get(k), a.get(k))} -> {_show(b_raw.get(k), b.get(k))}"
        for k in dict.fromkeys([*a_raw, *b_raw])
        if a_raw.get(k) != b_raw.get(k) and a.get(k) != b.get(k)
    ]
