"""FreezeOut's options, defined once: the controller, the Lightning callback and ``add_freezeout`` all take these.

``FreezeOutOptions(*args, **kwargs)`` accepts exactly what ``FreezeOut`` accepts after its first three
arguments (``t0``, ``schedule``, ``scale_lr`` by position or name, the rest by name), so an integration that
forwards its ``*args, **kwargs`` here cannot drift from the controller's signature.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .checks import check_int
from .schedule import validate_schedule, validate_t0

__all__ = ["FreezeOutOptions", "options_from"]


@dataclass(frozen=True)
class FreezeOutOptions:
    """FreezeOut's options, validated on construction (``ValueError`` naming the option and its range)."""

    # the paper's recommended setting (docs/METHOD.md): cubic, scaled, t0 = 0.8 keeps the baseline's accuracy
    t0: float = 0.8
    schedule: str = "cubic"
    scale_lr: bool = True
    # no warmup: the paper's schedule starts at the full LR; W > 0 multiplies every LR by min(1, step / W)
    warmup_steps: int = field(default=0, kw_only=True)
    # a trainable parameter flowing into frozen layers costs memory but not correctness: warn, not fail
    strict: bool = field(default=False, kw_only=True)
    # folding BatchNorms into convolutions is proven and confirmed per kind of call, and checked at every call; on
    # the paper's DenseNet-BC-76 and a BatchNorm ResNet the checks cost about what the folds save (docs/BENCHMARKS.md,
    # "Folding"), so it is off unless asked for
    fuse: bool = field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: store the normalised values
        set_(self, "t0", validate_t0(self.t0))
        set_(self, "schedule", validate_schedule(self.schedule))
        set_(self, "warmup_steps", check_int("warmup_steps", self.warmup_steps, 0))
        set_(self, "scale_lr", bool(self.scale_lr))  # any truthy value, as the controller always took
        set_(self, "strict", bool(self.strict))
        if not isinstance(self.fuse, bool):
            raise ValueError(f"fuse must be True or False, got {self.fuse!r}")

    def replace(self, **changes: Any) -> FreezeOutOptions:
        """A copy with ``changes`` (validated like the constructor's arguments)."""
        return options_from(dataclasses.asdict(self) | changes, where="FreezeOutOptions.replace")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def options_from(
    kwargs: dict[str, Any], args: tuple[Any, ...] = (), *, options: FreezeOutOptions | None = None, where: str
) -> FreezeOutOptions:
    """``FreezeOutOptions(*args, **kwargs)``, or ``options`` when given alone; an unknown or doubled option is a
    ``ValueError`` naming ``where`` and the options there are (``TypeError`` is what a dataclass would raise)."""
    if options is not None:
        if not isinstance(options, FreezeOutOptions):
            raise ValueError(f"{where}: options must be a freezeout.FreezeOutOptions, got {type(options).__name__}")
        if args or kwargs:
            raise ValueError(f"{where}: pass options=... or the options one by one, not both")
        return options
    names = [f.name for f in dataclasses.fields(FreezeOutOptions)]
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise ValueError(
            f"{where} got unknown option(s) {', '.join(unknown)}; FreezeOut's options are {', '.join(names)}"
        )
    positional = [f.name for f in dataclasses.fields(FreezeOutOptions) if not f.kw_only]
    if len(args) > len(positional):
        raise ValueError(f"{where} takes at most {len(positional)} options by position ({', '.join(positional)})")
    doubled = [name for name in positional[: len(args)] if name in kwargs]
    if doubled:
        raise ValueError(f"{where} got option(s) {', '.join(doubled)} both by position and by name")
    return FreezeOutOptions(*args, **kwargs)
