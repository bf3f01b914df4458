"""FreezeOut inside a Lightning ``Trainer``: ``FreezeOutCallback`` (needs the ``[lightning]`` extra).

Usage::

    class Net(L.LightningModule):
        def freezable_layers(self):  # input side first; or pass layers=... to the callback
            return [self.stem, *self.blocks]

        def configure_optimizers(self):  # FreezeOut is the LR schedule: configure no scheduler
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)  # as built: split per layer

    L.Trainer(max_epochs=100, callbacks=[FreezeOutCallback(t0=0.8)]).fit(Net(), loader)

Total steps come from ``trainer.estimated_stepping_batches`` (gradient accumulation included), and the
schedule advances once per optimizer step (whenever ``trainer.global_step`` moves).

Resuming with ``fit(ckpt_path=...)`` takes the optimizer as ``configure_optimizers`` builds it, in any group
layout. Lightning runs ``configure_optimizers``, then ``on_fit_start``, then restores the optimizer's state from
the checkpoint, then ``on_train_start``. So the controller is built in ``on_fit_start``, splitting the groups
before the checkpoint's (saved split) optimizer state is loaded onto them, and FreezeOut's own state is loaded
in ``on_train_start``, after the optimizer's (docs/METHOD.md, "The public contract").

A ``FreezeOut`` returned from ``configure_optimizers`` as the ``lr_scheduler`` (``"interval": "step"``) also
works without the callback: Lightning steps it once per optimizer step and checkpoints it. With the callback,
the callback adopts it (logs, closes it when ``fit()`` ends). Any other scheduler is refused: FreezeOut is the
schedule, and the refusal says how to keep a warmup (``warmup_steps``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.optim.lr_scheduler import LinearLR

from ..controller import FreezeOut
from ..options import FreezeOutOptions, options_from

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("freezeout.integrations.lightning needs Lightning: pip install 'freezeout[lightning]'") from exc

__all__ = ["FreezeOutCallback"]

LayersArg = Sequence[nn.Module] | Callable[[Any], Sequence[nn.Module]] | None


class FreezeOutCallback(pl.Callback):
    """Applies FreezeOut to the single optimizer of a ``LightningModule`` (see the module doc).

    ``layers``: the freezable layers in forward order, or a callable ``pl_module -> layers``, or None to call
    ``pl_module.freezable_layers()``. The optimizer ``configure_optimizers`` returns is taken as built (groups
    spanning layers are split per layer, see ``FreezeOut``). Then FreezeOut's options, exactly as
    ``freezeout.FreezeOut`` takes them (``t0``, ``schedule``, ``scale_lr`` by position or name; ``warmup_steps``,
    ``strict``, ``fuse`` by name: ``freezeout.FreezeOutOptions``), or ``options=FreezeOutOptions(...)``.
    Validation runs in eval mode, so it always sees the real modules. When training ends the callback closes its
    ``FreezeOut``: the module is as it was handed in, with its trained weights. Logs ``freezeout/num_frozen``,
    ``freezeout/lr_max``, ``freezeout/lr_min`` (over the groups still training), ``freezeout/lr_head`` and
    ``freezeout/lr_first_layer`` (the first layer still training: scaled, early layers run at up to ``1 / t_i``
    times the head's LR; absent once all are frozen).
    """

    def __init__(self, layers: LayersArg = None, *args: Any, options: FreezeOutOptions | None = None, **kwargs: Any):
        super().__init__()
        if not (layers is None or callable(layers) or isinstance(layers, Sequence)):
            raise ValueError(
                "layers must be None (use pl_module.freezable_layers()), a list of nn.Module or a callable "
                f"pl_module -> list, got {type(layers).__name__}"
            )
        self.layers_arg = layers
        self.options = options_from(kwargs, args, options=options, where="FreezeOutCallback")
        self._options_given = bool(args or kwargs or options is not None)
        self.controller: FreezeOut | None = None
        self.adopted = False  # the controller is configure_optimizers' lr_scheduler: Lightning steps and saves it
        self._pending: dict[str, Any] | None = None  # state loaded before the optimizer exists
        self._hush: Any = None  # a warnings context from fit's start to train's

    def _resolve_layers(self, pl_module: Any) -> Sequence[nn.Module]:
        if self.layers_arg is None:
            if not callable(getattr(pl_module, "freezable_layers", None)):
                raise ValueError(
                    "FreezeOutCallback(layers=None) needs a freezable_layers() method on the LightningModule "
                    "(returning its layers input side first), or pass layers=..."
                )
            return pl_module.freezable_layers()
        return self.layers_arg(pl_module) if callable(self.layers_arg) else self.layers_arg

    @staticmethod
    def _check_objects(trainer: Any, pl_module: Any) -> None:
        if not isinstance(trainer, pl.Trainer):
            raise ValueError(f"FreezeOutCallback needs a lightning.pytorch.Trainer, got {type(trainer).__name__}")
        if not isinstance(pl_module, pl.LightningModule):
            raise ValueError(
                f"FreezeOutCallback needs a lightning.pytorch.LightningModule, got {type(pl_module).__name__}"
            )

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._check_objects(trainer, pl_module)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # after configure_optimizers, before Lightning restores the optimizer's state: split first (module doc)
        self._check_objects(trainer, pl_module)
        if len(trainer.optimizers) != 1:
            raise ValueError(f"FreezeOutCallback needs exactly one optimizer, got {len(trainer.optimizers)}")
        self.adopted = self._adopt(trainer.lr_scheduler_configs, trainer.optimizers[0])
        if self.adopted:
            self._hush_frozen_eval_modules()
            return
        total = trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("FreezeOutCallback needs a finite run: set max_epochs or max_steps on the Trainer")
        try:
            self.controller = FreezeOut.from_options(
                trainer.optimizers[0], self._resolve_layers(pl_module), int(total), self.options
            )
        except ValueError as exc:
            raise ValueError(
                f"FreezeOutCallback: {exc} (the layers are the callback's, the optimizer configure_optimizers' "
                "single one)"
            ) from exc

    def _adopt(self, configs: Sequence[Any], optimizer: Any) -> bool:
        """Take a FreezeOut that ``configure_optimizers`` returned as its scheduler; refuse any other scheduler."""
        if not configs:
            return False
        config = configs[0]
        if len(configs) > 1 or not isinstance(config.scheduler, FreezeOut):
            names = ", ".join(type(c.scheduler).__name__ for c in configs)
            raise ValueError(
                f"FreezeOutCallback is the LR schedule (per-layer cosine): return no lr_scheduler from "
                f"configure_optimizers (got {names}). {warmup_advice(configs)}"
            )
        if config.interval != "step" or config.frequency != 1:
            raise ValueError(
                f"a FreezeOut lr_scheduler steps once per optimizer step: return it with 'interval': 'step' "
                f"(got interval={config.interval!r}, frequency={config.frequency})"
            )
        if config.scheduler.optimizer is not optimizer:
            raise ValueError("the FreezeOut returned as lr_scheduler must be over the optimizer returned with it")
        if self._options_given and config.scheduler.options != self.options:
            raise ValueError(
                "FreezeOutCallback's options and those of the FreezeOut returned as lr_scheduler differ: give them "
                f"once (callback {self.options}, lr_scheduler {config.scheduler.options})"
            )
        self.controller = config.scheduler
        return True

    def _hush_frozen_eval_modules(self) -> None:
        # Lightning restores an adopted FreezeOut's state (its frozen layers read eval mode, as they should) just
        # before it warns of every module in eval mode at the start of training: not a user's mistake, so not said
        self._hush = warnings.catch_warnings()
        self._hush.__enter__()
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Lightning has restored the optimizer's state (and an adopted FreezeOut's): FreezeOut's comes after
        if self._hush is not None:
            self._hush.__exit__(None, None, None)
            self._hush = None
        self._check_objects(trainer, pl_module)
        if self._pending is not None and not self.adopted:
            self.controller.load_state_dict(self._pending)
        self._pending = None
        self._catch_up(trainer)

    def _catch_up(self, trainer: Any) -> None:
        # One FreezeOut step per optimizer step: global_step counts those, also under gradient accumulation.
        if not self.adopted and self.controller.step_count != trainer.global_step:
            self.controller.step_to(trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.controller is None:
            return
        self._catch_up(trainer)
        c = self.controller
        training = [lr for lr, i in zip(c.get_last_lr(), c.group_layers) if i >= c.num_frozen]  # not frozen
        metrics = {
            "freezeout/num_frozen": float(c.num_frozen),
            "freezeout/lr_max": max(training),
            "freezeout/lr_min": min(training),
            "freezeout/lr_head": c.head_lr(),
        }
        first = c.first_layer_lr()
        if first is not None:
            metrics["freezeout/lr_first_layer"] = first
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        # the model leaves fit() as it was handed in, with its trained weights; a later fit() starts FreezeOut afresh
        if self.controller is not None:
            self.controller.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        if self.adopted:
            return {}  # Lightning saves the lr_scheduler itself
        if self.controller is not None:
            return self.controller.state_dict()
        return dict(self._pending or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning calls this before the optimizer exists; the state is applied in on_train_start.
        self._pending = dict(state_dict) if state_dict else None


def warmup_advice(configs: Sequence[Any]) -> str:
    """How to keep the warmup of the schedulers a user returned: ``warmup_steps``, with their length where it can be
    read (a ``LinearLR`` rising from ``start_factor``, or a Hugging Face ``get_*_schedule_with_warmup``)."""
    found = []
    for config in configs:
        scheduler = config.scheduler
        if isinstance(scheduler, LinearLR) and scheduler.start_factor < scheduler.end_factor:
            found.append(scheduler.total_iters)
        for fn in getattr(scheduler, "lr_lambdas", []):
            steps = getattr(fn, "keywords", {}).get("num_warmup_steps")  # functools.partial, as transformers builds
            if isinstance(steps, int):
                found.append(steps)
    yours = f" (yours warms up over {found[0]} steps: warmup_steps={found[0]})" if found else ""
    return (
        "To keep a warmup, FreezeOutCallback(warmup_steps=W) multiplies every LR by min(1, step / W), W in optimizer "
        f"steps{yours}; or return a freezeout.FreezeOut as the lr_scheduler, with 'interval': 'step'"
    )
