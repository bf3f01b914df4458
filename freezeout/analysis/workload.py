"""The training workload the step-time curve and the benchmark time: a copy of the user's model, the paper's
optimizer on FreezeOut's groups, labels for its output, and one training step."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..groups import param_groups, unwrap
from ..layers import LayerLike, as_layers
from ..measure import eval_mode

__all__ = ["LossFn", "copy_model", "make_optimizer", "random_targets", "train_step"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def random_targets(model: nn.Module, example_input: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Random class labels for cross-entropy, the class count read from the model's output ``(B, C)``."""
    with eval_mode(model), torch.no_grad():  # reading the output shape must not move BatchNorm statistics
        out = model(example_input)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError("pass target= and loss_fn= for a model whose output is not (batch, classes) logits")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, out.shape[1], (out.shape[0],), generator=g).to(out.device)


def train_step(model: nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    optimizer.step()
