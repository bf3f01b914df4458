"""The training run's configuration: one typed dataclass, validated before anything runs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .models import MODELS
from .models.densenet import check_depth
from .schedule import validate_schedule, validate_t0

__all__ = ["DATASETS", "DEVICES", "FLOAT32_MAX", "NONFINITE", "TrainConfig"]

DATASETS = ("digits", "cifar10", "cifar100")
DEVICES = ("auto", "cpu", "cuda")
# torch's SGD multiplies float32 tensors by lr and weight_decay: larger numbers cannot be converted (a RuntimeError
# inside the first step), so they are refused up front.
FLOAT32_MAX = 3.4028234663852886e38
NONFINITE = ("stop", "skip")


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: Any, low: float, high: float = math.inf, *, high_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and low <= value and (value < high if high_open else value <= high)
    if not ok:
        top = f"{high})" if high_open else f"{high}]"
        raise ValueError(f"{name} must be a number in [{low}, {top}, got {value!r}")


@dataclass
class TrainConfig:
    """Everything that decides a run's result (not where it is written, nor whether a bar shows)."""

    dataset: str = "digits"  # the embedded data: runs anywhere with no download
    data_dir: str | None = None  # CIFAR only: the folder holding the python-version archive or its unpacked folder
    model: str = "densenet-bc"  # the paper's network
    depth: int = 76  # the paper's DenseNet-BC-76 (12 dense layers per block)
    growth: int = 12  # the paper's k = 12
    epochs: int = 100  # the paper's main setting (it also reports 300)
    batch_size: int = 50  # the authors' default
    lr: float = 0.1  # the paper's base LR
    momentum: float = 0.9  # the paper: Nesterov momentum 0.9
    nesterov: bool = True  # ditto
    weight_decay: float = 1e-4  # the paper's (standard for DenseNet on CIFAR)
    schedule: str = "cubic"  # the paper's recommended strategy: cubic, scaled, t0 = 0.8
    scale_lr: bool = True  # ditto
    t0: float = 0.8  # 1.0 = baseline (plain cosine, nothing frozen)
    seed: int = 0  # fixed so that two runs of one config agree
    val_split: int = 0  # training examples held out for validation (0 = none: the paper reports test error)
    device: str = "auto"  # CUDA when present: that is where the time savings matter
    # NHWC: DenseNet-BC steps measured 1.47x faster on CPU (BC-76) and 1.26x on the digits demo's shape
    # (benchmarks/cpu_channels_last.py), and the usual layout for CUDA's tensor cores.
    channels_last: bool = True
    bf16: bool = False  # CUDA autocast option; off keeps results comparable to fp32 runs
    compile: bool = False  # per-layer torch.compile (compile_blocks): a speed option that costs compile time up front
    # A NaN/inf loss: "stop" ends the run at the epoch's end, keeping the last good checkpoint (a diverged run
    # rarely recovers, and it costs no host sync per step); "skip" drops such batches (one sync per step).
    nonfinite: str = "stop"

    def validate(self) -> TrainConfig:
        """Return self if every field is valid; raise ``ValueError`` naming the field otherwise."""
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset != "digits" and not self.data_dir:
            raise ValueError(f"data_dir is required for dataset {self.dataset!r} (no download is possible)")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a path string or None, got {self.data_dir!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int):
            raise ValueError(f"depth must be an integer 6n + 4 (10, 40, 76, 186, ...), got {self.depth!r}")
        check_depth(self.depth)
        for name in ("growth", "epochs", "batch_size"):
            _int_at_least(name, getattr(self, name), 1)
        for name in ("seed", "val_split"):
            _int_at_least(name, getattr(self, name), 0)
        _number("lr", self.lr, 0.0, FLOAT32_MAX)
        if self.lr <= 0:
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        _number("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _number("weight_decay", self.weight_decay, 0.0, FLOAT32_MAX)
        validate_schedule(self.schedule)
        validate_t0(self.t0)
        if isinstance(self.t0, bool) or not isinstance(self.t0, (int, float)):
            raise ValueError(f"t0 must be a number in (0, 1], got {self.t0!r}")
        for name in ("nesterov", "scale_lr", "channels_last", "bf16", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("momentum must be > 0 with nesterov=True (torch's SGD requires it)")
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {self.nonfinite!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        return self

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

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the fields whose values differ, as ``name: self -> other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} -> {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
