"""FreezeOut inside a Hugging Face ``transformers.Trainer``: ``add_freezeout`` (needs the ``[transformers]`` extra).

Usage, two lines added to a Trainer script::

    from freezeout.integrations.transformers import add_freezeout

    trainer = Trainer(model=model, args=args, train_dataset=train)
    add_freezeout(trainer, t0=0.8, layers=lambda m: [m.bert.embeddings, *m.bert.encoder.layer])
    trainer.train()

How it works. ``add_freezeout`` takes over Trainer's two documented override points on this one trainer:

- ``create_optimizer``: the optimizer Trainer would build (``args.optim`` through
  ``Trainer.get_optimizer_cls_and_kwargs``, or ``optimizer_cls_and_kwargs``; ``args.learning_rate``, betas,
  ...), over ``freezeout.param_groups`` split by Trainer's own decay rule (``get_decay_parameter_names``,
  ``args.weight_decay``): every group holds parameters of one layer, or only of the rest (those first).
- ``create_scheduler``: a ``FreezeOut`` over Trainer's step count (epochs or ``max_steps``, gradient
  accumulation included: the ``num_training_steps`` Trainer passes), with ``args.get_warmup_steps`` as its
  ``warmup_steps`` (``warmup_steps``; a fraction below 1 of the run). It is the LR schedule:
  ``lr_scheduler_type`` is not used (one other than the default is a ``ScheduleWarning`` naming it). Trainer
  steps it after each optimizer step (not after a step the AMP scaler skipped), saves its ``state_dict`` as
  ``scheduler.pt`` and, on ``resume_from_checkpoint``, loads it after the model's weights and the optimizer's
  state, so ``FreezeOut.load_state_dict`` re-freezes the layers due and the run continues bit-identically.

and wraps ``trainer.log`` (also documented for overriding): ``learning_rate`` is the head's LR (or with only layers
training, adapters say, the last layer's still training) of the step just taken, ``freezeout/lr_first_layer`` the LR
of the first layer still training then (scaled, early layers run at up to ``1 / t_i`` times the head's; absent once
all are frozen), and ``freezeout/num_frozen`` the layers frozen during it. When ``train()`` ends a callback calls
``FreezeOut.close()``: the model is left as it was handed in, with its trained weights, and a second ``train()``
runs FreezeOut afresh. Under activation (gradient) checkpointing Hugging Face hooks the token embedding's output to
require grad; FreezeOut's graph cut (``freezeout.freezing.cut``) stops it at the frozen layers' inputs, so memory
falls as layers freeze.

Why a function on the trainer, not a ``TrainerCallback`` or a ``Trainer`` subclass: a callback cannot replace
Trainer's optimizer or scheduler (it never sees the trainer, and by ``on_train_begin`` both exist, prepared,
and on resume already loaded), and a subclass would ask every user of ``Seq2SeqTrainer``, TRL's trainers or
their own subclass to write a new class. Setting the two methods on the instance works with any of them,
touches no private attribute of Trainer, and keeps the user's script as it was plus two lines.

``layers``: a list of the model's modules (or groups, see ``freezeout.layers``) in forward order, or a
callable ``model -> layers`` (needed with ``model_init``, where the model is built inside ``train()``), or
None for ``freezeout.find_layers(model, example)`` on ``example`` (on the model's device) or else the first
training batch (taken with the RNG state restored after). A weight tied to the head (GPT-2's token
embedding) must stay out of the layers: it trains with the head. An optimizer passed as
``optimizers=(optimizer, None)`` is taken as built, like any optimizer ``FreezeOut`` takes (groups spanning layers
are split per layer, each keeping its options). Under DDP set ``ddp_find_unused_parameters=True`` (Trainer
turns it off under checkpointing): frozen parameters stop having gradients. Not supported: DeepSpeed, FSDP,
optimizers that build their own groups (GaLore, LOMO, layer-wise, Muon-style factories), a scheduler in
``optimizers=``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..controller import FreezeOut, ScheduleWarning
from ..discovery import find_layers
from ..groups import param_groups
from ..layers import LayerLike, as_layers
from ..options import FreezeOutOptions, options_from
from .trainer_cache import TrainerCache, check_cache

try:
    import transformers
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "freezeout.integrations.transformers needs Hugging Face transformers: pip install 'freezeout[transformers]'"
    ) from exc

__all__ = ["TrainerFreezeOut", "add_freezeout"]

log = logging.getLogger(__name__)

LayersArg = Sequence[LayerLike] | Callable[[nn.Module], Sequence[LayerLike]] | None
_OWN_GROUPS = ("params", "model", "optimizer_dict")  # kwargs of optimizers that group the parameters themselves


class TrainerFreezeOut:
    """What ``add_freezeout`` installs on a ``Trainer`` (see the module doc). ``controller`` is the ``FreezeOut``
    of the current ``train()`` (None before), ``layers`` the layers it drives."""

    def __init__(self, trainer: Any, layers: LayersArg, example: Any, options: FreezeOutOptions) -> None:
        self.trainer = trainer
        self.layers_arg, self.example, self.options = layers, example, options
        self.layers: list[LayerLike] | None = None
        self.controller: FreezeOut | None = None
        self._model: nn.Module | None = None  # the model self.layers belong to
        self._log = trainer.log
        self.cache: TrainerCache | None = None  # cache=True: the frozen-prefix cache (integrations.trainer_cache)

    # -- Trainer's override points ---------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> Any:
        t = self.trainer
        if t.optimizer is None:
            opt_model = t.model if model is None else model
            cls, kwargs = self._optimizer_cls_and_kwargs(opt_model)
            t.optimizer = cls(self._groups(opt_model), **kwargs)
        return t.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        t = self.trainer
        if t.lr_scheduler is None or (t.lr_scheduler is self.controller and self.controller.closed):
            layers = self._layers_for(t.model)
            warmup = self.options.warmup_steps or t.args.get_warmup_steps(num_training_steps)
            self.controller = FreezeOut.from_options(
                t.optimizer if optimizer is None else optimizer, layers, num_training_steps,
                self.options.replace(warmup_steps=warmup),
            )  # fmt: skip
            t.lr_scheduler = self.controller
            if self.cache is not None:
                self.cache.start(self.controller)
            kind = getattr(t.args.lr_scheduler_type, "value", t.args.lr_scheduler_type)
            if kind != "linear":  # Trainer's default: anything else was asked for, and is not what runs
                warnings.warn(
                    f"lr_scheduler_type={kind!r} is not used: FreezeOut is the LR schedule (the paper's per-layer "
                    "cosine; the trainer's warmup_steps still applies)",
                    ScheduleWarning,
                    stacklevel=2,
                )
            log.info(
                "FreezeOut: %d layers over %d steps, %d warmup steps (the LR schedule: lr_scheduler_type=%s unused)",
                len(layers), num_training_steps, warmup, t.args.lr_scheduler_type,
            )  # fmt: skip
        return t.lr_scheduler

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        c = self.controller
        if c is not None and c is self.trainer.lr_scheduler and "learning_rate" in logs:
            # The step just taken, as transformers 5 reads the LR before the scheduler steps; Trainer's own reading
            # is group 0's, which is 0 once its layer froze when there is no group of the rest (adapters only)
            step = max(c.step_count - 1, 0)
            logs["learning_rate"] = c.head_lr(step)
            logs["freezeout/num_frozen"] = float(c.frozen_at(step))
            first = c.first_layer_lr(step)  # scaled, early layers run at up to 1 / t_i times the head's LR
            if first is not None:
                logs["freezeout/lr_first_layer"] = first
        self._log(logs, *args, **kwargs)

    def close(self) -> None:
        """Take FreezeOut's effects off the model (called when ``train()`` ends): the model as it was handed in, with
        its trained weights. A later ``train()`` runs FreezeOut afresh from its first step."""
        if self.controller is not None:
            self.controller.close()
        if self.cache is not None:
            self.cache.close()

    # -- the pieces --------------------------------------------------------------------------------------------
    def _layers_for(self, model: nn.Module) -> list[LayerLike]:
        if self.layers is None or self._model is not model:
            if self.layers_arg is None:
                found = find_layers(model, self._example_batch() if self.example is None else self.example)
            elif callable(self.layers_arg):
                found = self.layers_arg(model)
            else:
                found = self.layers_arg
            as_layers(found)  # a ValueError naming the problem now, not inside the optimizer
            self.layers, self._model = list(found), model
            log.info("FreezeOut layers: %d", len(self.layers))
        return self.layers

    def _example_batch(self) -> Any:
        # The first training batch, leaving the RNG as found: the run's shuffling must not depend on this look.
        with torch.random.fork_rng(devices=[]):
            return next(iter(self.trainer.get_train_dataloader()))

    def _optimizer_cls_and_kwargs(self, model: nn.Module) -> tuple[Any, dict[str, Any]]:
        t = self.trainer
        given = getattr(t, "optimizer_cls_and_kwargs", None)
        cls, kwargs = given if given is not None else t.get_optimizer_cls_and_kwargs(t.args, model)
        own = [k for k in _OWN_GROUPS if k in kwargs]
        if own or not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            what = getattr(cls, "__name__", type(cls).__name__) + (f", given {', '.join(own)}" if own else "")
            raise ValueError(
                f"optim={t.args.optim!r} ({what}) builds its own parameter groups: FreezeOut needs a "
                "torch.optim.Optimizer over its per-layer groups (adamw_torch, sgd, adafactor, ...)"
            )
        return cls, dict(kwargs)

    def _groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """``param_groups`` split by Trainer's decay rule, trainable parameters only (as Trainer), the rest first."""
        layers = self._layers_for(model)
        names = set(self.trainer.get_decay_parameter_names(model))
        decay = {id(p) for n, p in model.named_parameters() if n in names}  # by identity: a tied weight has 2 names
        groups = param_groups(
            model, layers, weight_decay=self.trainer.args.weight_decay, no_decay=lambda n, p, m: id(p) not in decay
        )
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
        owned = {id(p) for layer in as_layers(layers) for p in layer.parameters()}
        groups = [g for g in groups if g["params"]]
        rest = [g for g in groups if not any(id(p) in owned for p in g["params"])]
        return rest + [g for g in groups if any(id(p) in owned for p in g["params"])]


def add_freezeout(
    trainer: Any,
    layers: LayersArg = None,
    *args: Any,
    example: Any = None,
    options: FreezeOutOptions | None = None,
    cache: bool | dict[str, Any] = False,
    **kwargs: Any,
) -> TrainerFreezeOut:
    """Make ``trainer`` (a ``transformers.Trainer`` or subclass) train with FreezeOut; see the module doc.

    ``layers``: a list in forward order, a callable ``model -> layers``, or None for ``find_layers`` on
    ``example`` (any input the model takes: a dict, a ``BatchEncoding``) or the first training batch. Then
    FreezeOut's options, exactly as ``freezeout.FreezeOut`` takes them (``t0``, ``schedule``, ``scale_lr`` by
    position or name; ``warmup_steps``, ``strict``, ``fuse`` by name: ``freezeout.FreezeOutOptions``), or
    ``options=FreezeOutOptions(...)``. The learning rate and the number of steps come from ``trainer.args``, and
    the warmup too unless ``warmup_steps`` is given here. ``cache``: True (or a dict of ``max_bytes``, ``path``,
    ``verify``) trains with the frozen-prefix cache, ``freezeout.PrefixCache``, one process only
    (``freezeout.integrations.trainer_cache``). Returns the installed ``TrainerFreezeOut``.
    """
    opts = options_from(kwargs, args, options=options, where="add_freezeout")
    if not isinstance(trainer, transformers.Trainer):
        raise ValueError(f"trainer must be a transformers.Trainer, got {type(trainer).__name__}")
    if isinstance(getattr(trainer, "_freezeout", None), TrainerFreezeOut):
        raise ValueError("add_freezeout was already called on this trainer")
    listed = isinstance(layers, Sequence) and not isinstance(layers, str)
    if isinstance(layers, nn.Module) or not (layers is None or callable(layers) or listed):
        raise ValueError(
            "layers must be None (find_layers), a list of the model's modules in forward order or a callable "
            f"model -> list, got {type(layers).__name__}"
        )
    if trainer.lr_scheduler is not None:
        raise ValueError(
            "trainer was given an LR scheduler (optimizers=(optimizer, scheduler)): FreezeOut is the LR schedule, "
            "pass optimizers=(None, None) or (optimizer, None)"
        )
    for what in ("deepspeed", "fsdp"):
        if getattr(trainer, f"is_{what}_enabled", False):
            raise ValueError(f"add_freezeout does not support {what} (its optimizer holds flattened parameters)")
    theirs = {k: getattr(trainer.args, k, 0) for k in ("warmup_steps", "warmup_ratio")}  # 5.x: a ratio is < 1 steps
    if opts.warmup_steps and any(theirs.values()):
        asked = ", ".join(f"{k}={v}" for k, v in theirs.items() if v)
        raise ValueError(
            f"add_freezeout(warmup_steps={opts.warmup_steps}) and the trainer's own warmup ({asked}): give the warmup "
            "once"
        )
    cache_options = check_cache(cache)
    if cache_options is not None and trainer.args.world_size > 1:
        raise ValueError(f"cache=True trains in one process, this trainer runs {trainer.args.world_size}")
    handle = TrainerFreezeOut(trainer, layers, example, opts)
    if cache_options is not None:
        handle.cache = TrainerCache(trainer, cache_options)
    trainer._freezeout = handle
    trainer.create_optimizer = handle.create_optimizer
    trainer.create_scheduler = handle.create_scheduler
    trainer.log = handle.log
    trainer.add_callback(_CloseAtEnd(handle))
    return handle


class _CloseAtEnd(transformers.TrainerCallback):
    def __init__(self, handle: TrainerFreezeOut) -> None:
        self.handle = handle

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.handle.close()
