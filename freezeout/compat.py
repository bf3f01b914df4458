"""Every private PyTorch API the package uses, in one place (docs/METHOD.md, "What frozen means").

Each name here reads something torch does not promise to keep. ``tests/test_compat.py`` checks each against the
installed torch and fails loudly when one moves or changes meaning; nothing here falls back silently.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.fx import _symbolic_trace
from torch.nn.modules import batchnorm as _bn
from torch.nn.modules import module as _module

__all__ = [
    "BatchNormBase",
    "NormBase",
    "child_modules",
    "conv_forward",
    "conv_pads",
    "foreach_copy_",
    "forward_hooks",
    "fsdp_collectives",
    "fsdp_param_groups",
    "fsdp_state",
    "global_hooks",
    "has_hooks",
    "in_backward",
    "is_tracing",
    "lr_scheduler_attached",
    "outermost_call",
    "outermost_module",
    "own_parameters",
    "raise_recompile_limit",
    "saved_tensors_hooks_outer",
    "stock_conv",
    "tensor_slot",
    "tensor_version",
]

# The base classes of torch's BatchNorms (Sync included) and of every norm with running statistics.
BatchNormBase = _bn._BatchNorm
NormBase = _bn._NormBase


def in_backward() -> bool:
    """Whether the autograd engine is running a backward pass on this thread (a checkpoint recomputing)."""
    return torch._C._current_graph_task_id() != -1


_CALL_CODES = {getattr(nn.Module, n).__code__ for n in ("_call_impl", "_wrapped_call_impl") if hasattr(nn.Module, n)}


def outermost_call() -> tuple[nn.Module, tuple, dict] | None:
    """The module whose call encloses this point outermost (the model the training loop called), with the
    arguments it was called with, from the stack; ``None`` outside any module call."""
    frame, found = sys._getframe(1), None
    while frame is not None:
        if frame.f_code in _CALL_CODES and isinstance(frame.f_locals.get("self"), nn.Module):
            found = frame.f_locals
        frame = frame.f_back
    if found is None:
        return None
    return found["self"], tuple(found.get("args", ())), dict(found.get("kwargs", {}))


def outermost_module() -> nn.Module | None:
    """The module whose call encloses this point outermost (the model the training loop called), from the stack."""
    call = outermost_call()
    return None if call is None else call[0]


def saved_tensors_hooks_outer() -> tuple[Any, Any]:
    """The saved-tensor (pack, unpack) hooks active now (a checkpoint's, an offload's), identity if none: a hook of
    ours nested inside them must pass tensors through to them."""
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)
    return outer if outer is not None else (_same, _same)


def _same(t: Any) -> Any:
    return t


def is_tracing() -> bool:
    """Inside a trace that records the model as a program: ``torch.fx.symbolic_trace``, ``torch.export``,
    ``torch.jit.trace`` or TorchScript. Python-side state (folds, cached maps) must not leak into such a program."""
    return (
        _symbolic_trace._is_fx_tracing_flag
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    )


def forward_hooks(module: nn.Module) -> tuple[dict[int, Any], dict[int, Any]]:
    """``module``'s forward pre-hooks and forward hooks (the dicts torch runs them from)."""
    return module._forward_pre_hooks, module._forward_hooks


def has_hooks(module: nn.Module) -> bool:
    """Whether any forward, forward-pre or backward hook is registered on ``module`` itself (read per call: cheap)."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


def own_parameters(module: nn.Module) -> Any:
    """``module``'s own parameters (a view of the dict torch keeps; entries may be None), without a generator."""
    return module._parameters.values()


def tensor_slot(module: nn.Module, name: str) -> tuple[dict[str, Any], str]:
    """The dict in which ``module`` holds its parameter or buffer ``name``, and the name: ``slot[0].get(slot[1])``
    reads it as ``getattr`` would (``None`` when unset), at a dict lookup's cost."""
    return (module._parameters if name in module._parameters else module._buffers), name


def global_hooks() -> int:
    """How many module hooks are registered for every module (``nn.modules.module.register_module_forward_hook``)."""
    return len(_module._global_forward_pre_hooks) + len(_module._global_forward_hooks)


def child_modules(module: nn.Module) -> dict[str, nn.Module | None]:
    """``module``'s registered children by name (cheaper than ``named_children``; read in every forward)."""
    return module._modules


def conv_forward(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv``'s own convolution (its padding mode included) with other weights."""
    return conv._conv_forward(x, weight, bias)


def conv_pads(conv: nn.Module) -> bool:
    """Whether ``conv`` pads its input at all (any non-zero padding, ``"same"`` included)."""
    return any(p for p in conv._reversed_padding_repeated_twice)


def stock_conv(module: nn.Module, base: type) -> bool:
    """``module`` is a ``base`` conv whose forward and convolution are torch's own (a subclass may change them)."""
    return type(module).forward is base.forward and type(module)._conv_forward is base._conv_forward


def tensor_version(t: torch.Tensor) -> int:
    """``t``'s version counter: bumped by every in-place write (not by one through ``.data``)."""
    return t._version


def foreach_copy_(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """``dst[i].copy_(src[i])`` for all ``i`` in one fused call."""
    torch._foreach_copy_(dst, src)


def fsdp_param_groups(module: nn.Module) -> Iterator[Any]:
    """The parameter groups of an FSDP2 module's state (FSDP2 exposes no public list of what a state manages)."""
    from torch.distributed.fsdp import fully_shard

    yield from fully_shard.state(module)._fsdp_param_groups


def fsdp_state(module: nn.Module) -> Any:
    from torch.distributed.fsdp import fully_shard

    return fully_shard.state(module)


def fsdp_collectives() -> tuple[type, type]:
    """FSDP2's default all-gather and reduce-scatter classes (counted by ``accel.fsdp.CommCounter``)."""
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

    return DefaultAllGather, DefaultReduceScatter


def lr_scheduler_attached(optimizer: Any) -> bool:
    """Whether a torch LR scheduler was built on ``optimizer``: ``LRScheduler.__init__`` wraps its ``step`` once and
    marks the wrapper (to warn about step order). FreezeOut does not, so the mark is another scheduler's."""
    return hasattr(getattr(optimizer, "step", None), "_wrapped_by_lr_sched")


def raise_recompile_limit(by: int) -> tuple[int, int] | None:
    """Raise dynamo's recompile limits (per code object, and accumulated) by ``by`` if dynamo is loaded, that is if
    ``torch.compile`` was used in this process; ``(old, new)`` per-code-object limit, or None when it is not."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        return None
    config = dynamo.config
    old = config.recompile_limit
    config.recompile_limit = old + by
    config.accumulated_recompile_limit += by
    return old, old + by
