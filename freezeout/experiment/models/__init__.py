"""The models the experiment trains, as a registry: one entry per model, everything else reads it.

An entry says how to build the model, which depths it takes (checked before anything is built) and its
default size; the model itself exposes ``.layers``, its freezable layers in forward order. A new model is one
``ModelSpec`` in ``MODELS``: the trainer, sweep, estimate, bench and the command line all take it from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .densenet import DenseNetBC, check_depth, densenet_bc
from .gpt import GPT, check_gpt_depth, gpt, token_example
from .resnet import ResNet, check_resnet_depth, resnet, resnet1d

__all__ = [
    "GPT",
    "MODELS",
    "DenseNetBC",
    "ModelSpec",
    "ResNet",
    "build_example",
    "build_model",
    "densenet_bc",
    "example_input",
    "get_model",
    "gpt",
    "resnet",
    "resnet1d",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]  # (depth, width, num_classes, in_channels) -> a model with .layers
    check_depth: Callable[[int], int]  # raises ValueError naming the allowed depths
    depths: str  # the allowed depths, for help texts
    default_depth: int
    width_help: str  # what the width (--growth) means for this model
    default_width: int
    # (shape, batch, num_classes, seed) -> a seeded random input batch, for a model that does not take images
    # (token ids); None: random images of ``shape`` (``example_input``)
    example: Callable[..., torch.Tensor] | None = None


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # The paper's network: DenseNet-BC-76, k = 12.
        ModelSpec("densenet-bc", densenet_bc, check_depth, "6n + 4: 10, 40, 76, 186", 76, "growth rate k", 12),
        # The CIFAR model most users know, in the other unit order (Conv -> BN -> ReLU): ResNet-20, w = 16.
        ModelSpec("resnet", resnet, check_resnet_depth, "6n + 2: 20, 32, 56, 110", 20, "base width", 16),
        # The same ResNet on 1-D signals (MNIST-1D), each signal an N x C x 1 x L image of the data pipeline.
        ModelSpec("resnet1d", resnet1d, check_resnet_depth, "6n + 2: 8, 14, 20, 32", 20, "base width", 16),
        # A byte-level GPT of nanoGPT's CPU size: 4 blocks of 128 (the pystdlib language model).
        ModelSpec("gpt", gpt, check_gpt_depth, "transformer blocks, 1-96", 4, "embedding width", 128, token_example),
    )
}


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name]


def build_model(
    name: str = "densenet-bc",
    depth: int | None = None,
    growth: int | None = None,
    num_classes: int = 10,
    in_channels: int = 3,
) -> nn.Module:
    """Build a model by its registry name; ``depth``/``growth`` (the width) default to the model's own."""
    spec = get_model(name)
    depth = spec.default_depth if depth is None else depth
    width = spec.default_width if growth is None else growth
    spec.check_depth(depth)
    return spec.build(depth, width, num_classes, in_channels)


def build_example(
    name: str,
    depth: int | None,
    growth: int | None,
    num_classes: int,
    shape: tuple[int, int, int],
    batch: int,
    channels_last: bool = True,
    seed: int = 0,
) -> tuple[nn.Module, torch.Tensor]:
    """A seeded model and a random input batch of ``shape`` (C, H, W), both in the layout training runs in.

    ``ValueError`` if the model cannot take that input (an image too small for its poolings).
    """
    torch.manual_seed(seed)
    model = build_model(name, depth, growth, num_classes, shape[0])
    spec = get_model(name)
    x = (
        example_input(shape, batch, False, seed)
        if spec.example is None
        else spec.example(shape, batch, num_classes, seed)
    )
    try:
        with torch.no_grad():
            model.eval()(x[:1])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{name} cannot take a {' x '.join(map(str, shape[1:]))} input: {first}") from None
    model.train()
    if channels_last and spec.example is None:  # NHWC, as the trainer runs: faster on CPU and CUDA (experiment.config)
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def example_input(shape: tuple[int, int, int], batch: int, channels_last: bool = True, seed: int = 0) -> torch.Tensor:
    """``build_example``'s random input batch of ``shape`` (C, H, W), seeded, in the training layout."""
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
