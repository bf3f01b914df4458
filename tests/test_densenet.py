"""DenseNet-BC of the paper (docs/METHOD.md, "The experiment")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from freezeout.experiment.models import build_model, densenet_bc


@pytest.mark.parametrize("depth, per_block", [(10, 1), (40, 6), (76, 12)])
def test_layer_count_and_output_shape(depth, per_block):
    model = densenet_bc(depth=depth, growth=4, num_classes=7)
    assert len(model.layers) == 1 + 3 * per_block + 2  # stem, dense layers, two transitions
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_depth_counts_weighted_layers():
    # depth = stem + 2 convs per bottleneck layer x 3n + 2 transitions + classifier = 6n + 4
    for depth in (10, 40, 76):
        model = densenet_bc(depth=depth, growth=2)
        weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == depth


def test_every_unit_is_relu_bn_conv():
    model = densenet_bc(depth=10, growth=4)
    for layer in model.layers[1:]:
        mods = [m for m in layer.modules() if isinstance(m, (nn.ReLU, nn.BatchNorm2d, nn.Conv2d))]
        kinds = [type(m) for m in mods]
        assert len(kinds) % 3 == 0 and kinds
        for i in range(0, len(kinds), 3):
            assert kinds[i : i + 3] == [nn.ReLU, nn.BatchNorm2d, nn.Conv2d]


def test_bottleneck_and_compression_channels():
    # The "B" and "C" of DenseNet-BC: a 1x1 bottleneck to 4k channels before each 3x3 conv, and transitions
    # that halve the channels. Without them the net still runs, with other widths and other FLOPs.
    growth = 4
    model = densenet_bc(depth=10, growth=growth)
    dense = [layer for block in model.blocks for layer in block]
    assert len(dense) == 3 and len(model.transitions) == 2
    for layer in dense:
        convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
        assert [c.kernel_size for c in convs] == [(1, 1), (3, 3)]
        assert convs[0].out_channels == 4 * growth and convs[1].in_channels == 4 * growth
        assert convs[1].out_channels == growth
    for transition in model.transitions:
        (conv,) = [m for m in transition.modules() if isinstance(m, nn.Conv2d)]
        assert conv.kernel_size == (1, 1) and conv.out_channels == conv.in_channels // 2
    # stem 2k = 8, +k = 12 after block 1 -> 6, +k = 10 after block 2 -> 5
    assert [t[-2].in_channels for t in model.transitions] == [12, 10]


def test_layers_cover_everything_but_the_head_in_forward_order():
    model = densenet_bc(depth=10, growth=4)
    order = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.layers]
    model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert order == model.layers
    in_layers = {id(p) for layer in model.layers for p in layer.parameters()}
    rest = {id(p) for m in (model.head, model.fc) for p in m.parameters()}
    assert in_layers | rest == {id(p) for p in model.parameters()} and not in_layers & rest


@pytest.mark.parametrize("depth", [0, 11, 75, 7])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        build_model("densenet-bc", depth=depth)


def test_unknown_model():
    with pytest.raises(ValueError, match="model"):
        build_model("vgg")
