"""What a freezable layer is: an ``nn.Module``, or a list/tuple of modules and parameters that freeze together.

A group is how real models are cut: a ViT's embedding is ``[model.patch_embed, model.cls_token,
model.pos_embed]`` (two parameters held by the root, met by the data right after the patch embedding). Every
part of the package takes layers through ``as_layers``, which checks them once and gives ``Layer`` objects:
the modules (which run in eval mode once frozen) and the parameters (which stop training), each listed once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from .compat import NormBase

__all__ = ["NORMS", "Layer", "LayerLike", "as_layers", "check_layers", "describe", "is_norm", "param_owners"]

LayerLike = nn.Module | Sequence[nn.Module | nn.Parameter]


@dataclass(frozen=True, eq=False)
class Layer:
    """One freezable layer: its modules and the parameters given directly, in the order given."""

    index: int
    modules: tuple[nn.Module, ...]
    loose: tuple[nn.Parameter, ...]  # parameters listed on their own (held by a module outside the layer)

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter of the layer once: its modules', then the loose ones."""
        seen: set[int] = set()
        for p in (*(p for m in self.modules for p in m.parameters()), *self.loose):
            if id(p) not in seen:
                seen.add(id(p))
                yield p

    def all_modules(self) -> Iterator[nn.Module]:
        """The layer's modules and everything inside them."""
        for m in self.modules:
            yield from m.modules()


def param_owners(layers: Sequence[Layer]) -> dict[int, int]:
    """Each layer's parameters (by id) -> the layer's index."""
    return {id(p): layer.index for layer in layers for p in layer.parameters()}


def describe(layer: LayerLike) -> str:
    """A short label for messages: the class name, or the group's members."""
    if isinstance(layer, nn.Module):
        return type(layer).__name__
    return "[" + ", ".join("Parameter" if isinstance(m, nn.Parameter) else type(m).__name__ for m in layer) + "]"


def _members(layer: LayerLike, i: int) -> tuple[list[nn.Module], list[nn.Parameter]]:
    if isinstance(layer, nn.Parameter):
        return [], [layer]
    if isinstance(layer, nn.Module):
        return [layer], []
    if isinstance(layer, (list, tuple)) and layer:
        modules = [m for m in layer if isinstance(m, nn.Module)]
        loose = [p for p in layer if isinstance(p, nn.Parameter)]
        if len(modules) + len(loose) == len(layer):
            return modules, loose
    raise ValueError(
        f"layers[{i}] must be an nn.Module or a non-empty list/tuple of modules and parameters that freeze "
        f"together, got {type(layer).__name__}"
    )


def as_layers(layers: Sequence[LayerLike]) -> list[Layer]:
    """Validate a list of freezable layers and return them as ``Layer`` objects.

    ``ValueError`` for an empty list, a member that is not a module or parameter, or a module or parameter
    in two layers (nested or tied layers: each parameter may belong to one layer only).
    """
    if isinstance(layers, (nn.Module, str)) or not isinstance(layers, Sequence):
        raise ValueError("layers must be a non-empty list of layers (modules, or groups of them) in forward order")
    if not layers:
        raise ValueError("layers must be a non-empty list of nn.Module in forward order, got an empty list")
    out: list[Layer] = []
    module_owner: dict[int, int] = {}
    param_owner: dict[int, int] = {}
    for i, layer in enumerate(layers):
        modules, loose = _members(layer, i)
        for m in modules:
            if id(m) in module_owner:
                j = module_owner[id(m)]
                what = "is the same module as" if isinstance(layer, nn.Module) else "holds a module of"
                raise ValueError(f"layers[{i}] {what} layers[{j}]: list each layer once")
            module_owner[id(m)] = i
        item = Layer(i, tuple(modules), tuple(loose))
        for p in item.parameters():
            if param_owner.get(id(p), i) != i:
                raise ValueError(
                    f"layers[{i}] shares a parameter with layers[{param_owner[id(p)]}] (nested or tied layers): "
                    "each parameter may belong to one layer only"
                )
            param_owner[id(p)] = i
        out.append(item)
    return out


def check_layers(layers: Sequence[LayerLike]) -> list[LayerLike]:
    """``layers`` as a list, if ``as_layers`` accepts it."""
    as_layers(layers)
    return list(layers)


# What counts as a normalisation layer, for every rule that treats one apart (no weight decay, a model's head):
# torch's own (every norm with running statistics, LayerNorm, GroupNorm, RMSNorm) and, since a library's norm rarely
# subclasses these (Hugging Face's ``T5LayerNorm``, ``LlamaRMSNorm``), any class whose name ends in ``Norm``.
NORMS: tuple[type[nn.Module], ...] = (
    NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (``NORMS``, or a class named ``...Norm``)."""
    return isinstance(module, NORMS) or type(module).__name__.endswith("Norm")
