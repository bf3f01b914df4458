"""Models that come with freezeout, each exposing ``.layers`` (freezable layers in forward order)."""

from __future__ import annotations

from torch import nn

from .densenet import DenseNetBC, densenet_bc

__all__ = ["MODELS", "DenseNetBC", "build_model", "densenet_bc"]

MODELS = ("densenet-bc",)


def build_model(
    name: str = "densenet-bc", depth: int = 76, growth: int = 12, num_classes: int = 10, in_channels: int = 3
) -> nn.Module:
    """Build a model by its command-line name."""
    if name != "densenet-bc":
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return densenet_bc(depth=depth, growth=growth, num_classes=num_classes, in_channels=in_channels)
