"""The training workload the step-time curve and the benchmark time: a copy of the user's model, the paper's
optimizer on FreezeOut's groups, labels for its output, a loss, and one training step.

Any model the core takes: its input a tensor, a tuple or a mapping (``run_model``), its output logits or a
Hugging Face ``ModelOutput``. By default (``model_loss``) the loss is the model's own when it computes one
(labels in the example input), else cross-entropy of its logits against random labels (``random_targets``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..freezing.mode import eval_mode
from ..groups import param_groups, unwrap
from ..layers import LayerLike, as_layers
from ..tensors import first_tensor, map_tensors, run_model

__all__ = [
    "LossFn",
    "copy_model",
    "logits_of",
    "make_optimizer",
    "model_loss",
    "random_batches",
    "random_targets",
    "train_step",
]

LossFn = Callable[[Any, Any], torch.Tensor]  # (the model's output, the target) -> loss


def copy_model(model: nn.Module, layers: Sequence[LayerLike], device: Any = None) -> tuple[nn.Module, list]:
    """A deep copy of ``model`` (on ``device``) and its layers (groups too), found again by their names."""
    inner = unwrap(model)
    modules = {id(m): name for name, m in inner.named_modules()}
    params = {id(p): name for name, p in inner.named_parameters()}
    for layer in as_layers(layers):
        if any(id(m) not in modules for m in layer.modules) or any(id(p) not in params for p in layer.loose):
            raise ValueError(f"layers[{layer.index}] is not a submodule of the model")
    clone = copy.deepcopy(inner)
    if device is not None:
        clone.to(device)

    def find(item: Any) -> Any:
        if isinstance(item, nn.Parameter):
            return clone.get_parameter(params[id(item)])
        if isinstance(item, nn.Module):
            return clone.get_submodule(modules[id(item)])
        return type(item)(find(x) for x in item)

    return clone, [find(layer) for layer in layers]


def make_optimizer(model: nn.Module, layers: Sequence[nn.Module], lr: float = 0.1) -> torch.optim.Optimizer:
    """The paper's optimizer (SGD, Nesterov momentum 0.9, weight decay 1e-4) on FreezeOut's groups."""
    return torch.optim.SGD(param_groups(model, layers), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)


def _own_loss(output: Any) -> torch.Tensor | None:
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def logits_of(output: Any) -> torch.Tensor:
    """The output itself if a tensor, else its ``logits`` (a ``ModelOutput``), else its first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    found = logits if isinstance(logits, torch.Tensor) else first_tensor(output)
    if found is None:
        raise ValueError(f"the model's output ({type(output).__name__}) holds no tensor: pass loss_fn=")
    return found


def model_loss(output: Any, target: torch.Tensor | None) -> torch.Tensor:
    """The default loss of the step-time curve and the benchmark. The model's own loss if it computed one (a
    Hugging Face ``ModelOutput`` with ``loss``: labels were in the example input); else cross-entropy of its
    logits (``logits_of``; classes along the last dimension: ``(batch, classes)`` or ``(batch, length,
    vocabulary)``) against ``target``, by default random labels (``random_targets``)."""
    loss = _own_loss(output)
    if loss is not None:
        return loss
    if target is None:
        raise ValueError("the model computed no loss and there is no target: pass target= (or loss_fn=)")
    logits = logits_of(output)
    return F.cross_entropy(logits.flatten(0, -2), target.flatten())


def random_targets(model: nn.Module, example_input: Any, seed: int = 0) -> torch.Tensor | None:
    """Random labels for ``model_loss``: class indices for logits ``(B, C)`` or ``(B, L, C)``, the class count read
    from the model's output; ``None`` when the model computes its own loss (it needs none)."""
    with eval_mode(model), torch.no_grad():  # reading the output shape must not move BatchNorm statistics
        out = run_model(model, example_input)
    if _own_loss(out) is not None:
        return None
    logits = logits_of(out)
    if logits.dim() not in (2, 3):
        raise ValueError(
            "pass target= and loss_fn= for a model whose output is not logits (batch, classes) or (batch, length, "
            f"classes), nor a ModelOutput with a loss (got a tensor of shape {tuple(logits.shape)})"
        )
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, logits.shape[-1], logits.shape[:-1], generator=g).to(logits.device)


def train_step(model: nn.Module, optimizer: Any, x: Any, y: torch.Tensor | None, loss_fn: LossFn) -> None:
    """zero_grad, forward on ``x`` (a tensor, tuple or mapping, as ``run_model`` passes it), loss, backward, step."""
    optimizer.zero_grad(set_to_none=True)
    loss_fn(run_model(model, x), y).backward()
    optimizer.step()


def random_batches(
    example_input: Any, model: nn.Module, target: torch.Tensor | None, count: int, seed: int, device: Any
) -> list[tuple[Any, Any]]:
    """``count`` distinct random batches like ``example_input`` on ``device`` (content does not change the cost):
    its floating tensors redrawn in their own memory layout (channels-last or not: what a step-time curve times),
    the others (token ids, masks) kept; each with ``target``, or random labels for ``model``'s output."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)

    def redraw(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t.to(device)
        x = torch.randn(t.shape, generator=g, dtype=t.dtype)
        return torch.empty_like(t, device=device).copy_(x)

    batches = []
    for i in range(count):
        x = map_tensors(example_input, redraw)
        batches.append((x, random_targets(model, x, seed=seed + i) if target is None else target.to(device)))
    return batches
