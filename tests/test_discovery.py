"""find_layers: blocks in forward order on torchvision/timm look-alikes, overrides, errors, end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freezeout import FreezeOut, find_layers, param_groups
from freezeout.experiment.models import DenseNetBC
from freezeout.layers import as_layers
from tests.helpers.lookalikes import DenseNet, Residual, ResNet, Scrambled, TextEncoder, VisionTransformer
from tests.helpers.models import TinyNet

IMG = torch.randn(1, 3, 16, 16)


def names(model: nn.Module, layers: list) -> list[str]:
    """Each layer's module name; a group ``[module, *parameters]`` as ``module+param+...``."""
    by_id = {id(m): n for n, m in model.named_modules()} | {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(x)] if isinstance(x, nn.Module) else "+".join(by_id[id(m)] for m in x) for x in layers]


def params(layer) -> list[nn.Parameter]:
    return list(as_layers([layer])[0].parameters())


def test_resnet_stem_then_every_basic_block_head_excluded():
    # the stem, what the data meets before the first block, is one layer (as this project's own ResNet lists it)
    m = ResNet()
    got = names(m, find_layers(m, IMG))
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert got == ["conv1+bn1", *blocks]


def test_densenet_stem_dense_layers_and_transitions_final_norm_in_head():
    m = DenseNet(blocks=(2, 3, 2))
    got = names(m, find_layers(m, torch.randn(1, 3, 32, 32)))
    dense = lambda b, n: [f"features.denseblock{b}.denselayer{i}" for i in range(1, n + 1)]  # noqa: E731
    want = ["features.conv0+features.norm0", *dense(1, 2), "features.transition1"]
    want += [*dense(2, 3), "features.transition2", *dense(3, 2)]
    assert got == want  # features.norm5 and classifier are the head


def test_vit_patch_embed_with_the_root_parameters_it_feeds_then_blocks():
    # cls_token and pos_embed, held by the root, meet the data right after patch_embed: they freeze with it
    m = VisionTransformer(depth=3)
    layers = find_layers(m, torch.randn(1, 3, 8, 8))
    assert names(m, layers) == ["patch_embed+cls_token+pos_embed", "blocks.0", "blocks.1", "blocks.2"]
    rest = param_groups(m, layers)[-1]["params"]
    assert {id(p) for p in rest} == {id(p) for p in (*m.norm.parameters(), *m.head.parameters())}


def test_transformer_encoder_layers_final_norm_in_head():
    m = TextEncoder(depth=3)
    got = names(m, find_layers(m, torch.randint(0, 11, (1, 6))))
    assert got == ["embed", "encoder.layers.0", "encoder.layers.1", "encoder.layers.2"]


def test_execution_order_not_declaration_order():
    m = Scrambled()
    assert [n for n, _ in m.named_children()] == ["head", "b2", "b1", "stem"]
    assert names(m, find_layers(m, IMG)) == ["stem", "b1", "b2"]


def test_matches_the_hand_written_layer_lists_of_this_project():
    torch.manual_seed(0)
    dn = DenseNetBC(depth=16, growth=4)
    assert find_layers(dn, torch.randn(1, 3, 8, 8)) == dn.layers
    tiny = TinyNet()
    assert find_layers(tiny, torch.randn(1, 3, 8, 8)) == tiny.layers


def test_wrapper_around_the_model_is_looked_through():
    wrapper = nn.Sequential(Scrambled())  # a single parametrised child: expanded
    assert names(wrapper, find_layers(wrapper, IMG)) == ["0.stem", "0.b1", "0.b2"]


def test_integer_granularity_is_module_name_depth():
    m = ResNet()
    assert names(m, find_layers(m, IMG, granularity=1)) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
    got = names(m, find_layers(m, IMG, granularity=3))
    assert got[:4] == ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1"]
    assert "layer2.0.downsample.0" not in got and got[got.index("layer2.0.bn2") + 1] == "layer2.1.conv1"
    # layer2.0's downsample runs first (identity branch), so at depth 3 it comes before conv1
    assert got.index("layer2.0.downsample") < got.index("layer2.0.conv1")


def test_patterns_select_outermost_matches_in_forward_order():
    m = ResNet()
    got = names(m, find_layers(m, IMG, patterns=["layer[34].*", "conv1"]))
    assert got == ["conv1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    m = Scrambled()
    assert names(m, find_layers(m, IMG, patterns="b*")) == ["b1", "b2"]


def test_pattern_matching_nothing_names_it():
    with pytest.raises(ValueError, match=r"pattern 'blocks\.\*' matches no module"):
        find_layers(ResNet(), IMG, patterns=["layer1.*", "blocks.*"])
    with pytest.raises(ValueError, match="pattern 'relu' matches no module with parameters"):
        find_layers(ResNet(), IMG, patterns=["relu"])
    with pytest.raises(ValueError, match="patterns must be"):
        find_layers(ResNet(), IMG, patterns=[])
    with pytest.raises(ValueError, match="give granularity or patterns, not both"):
        find_layers(ResNet(), IMG, granularity=2, patterns=["layer1.*"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "deep", True])
def test_bad_granularity(bad):
    with pytest.raises(ValueError, match="granularity must be 'auto' or an integer >= 1"):
        find_layers(ResNet(), IMG, granularity=bad)


def test_failing_forward_names_the_innermost_module():
    with pytest.raises(ValueError, match=r"failed in module 'conv1' \(Conv2d\)") as info:
        find_layers(ResNet(), torch.randn(1, 4, 16, 16))
    assert isinstance(info.value.__cause__, RuntimeError)

    class Boom(nn.Module):
        def forward(self, x):
            raise KeyError("boom")

    m = ResNet()
    m.layer3[1].bn2 = Boom()
    with pytest.raises(ValueError, match=r"failed in module 'layer3\.1\.bn2' \(Boom\): 'boom'"):
        find_layers(m, IMG)
    assert not m.layer3[1]._forward_hooks and not m.layer3[1]._forward_pre_hooks  # hooks removed


def test_trace_changes_no_state_and_restores_modes():
    torch.manual_seed(0)
    m = ResNet()
    m.train()
    m.layer2.eval()  # a mixed state must come back as it was
    before = {k: v.clone() for k, v in m.state_dict().items()}
    modes = {n: x.training for n, x in m.named_modules()}
    find_layers(m, torch.randn(4, 3, 16, 16))
    assert {n: x.training for n, x in m.named_modules()} == modes
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats and num_batches_tracked unchanged


def test_a_layer_run_twice_is_left_out_with_a_warning():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.blk, self.b3 = nn.Conv2d(3, 4, 1), Residual(4), Residual(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.b3(self.blk(self.blk(self.stem(x)))).mean((2, 3)))

    m = Shared()
    with pytest.warns(UserWarning, match="module 'blk' runs 2 times"):
        assert names(m, find_layers(m, IMG)) == ["stem", "b3"]


def test_no_layers_before_the_head():
    with pytest.raises(ValueError, match="found no freezable layers"):
        find_layers(nn.Linear(3, 2), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"model must be an nn\.Module"):
        find_layers(lambda x: x, IMG)


def test_end_to_end_find_layers_param_groups_freezeout():
    torch.manual_seed(0)
    m = VisionTransformer(depth=3)
    layers = find_layers(m, torch.randn(1, 3, 8, 8))
    opt = torch.optim.AdamW(param_groups(m, layers), lr=1e-3)
    total = 8
    sched = FreezeOut(opt, layers, total_steps=total, t0=0.5, schedule="linear")
    snaps = {}
    for _ in range(total):
        m.train()
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        sched.step()
        for i in range(sched.num_frozen):
            snaps.setdefault(i, [p.clone() for p in params(layers[i])])
    assert sched.num_frozen == len(layers) == 4
    for i, snap in snaps.items():
        assert all(torch.equal(a, b) for a, b in zip(snap, params(layers[i]))), f"layer {i} moved"
