"""Finding a model's freezable layers from one traced forward pass (``find_layers``): the pass itself (``trace``),
which calls are blocks (``structure``) and the layers they make (``find``)."""

from .find import find_layers

__all__ = ["find_layers"]
