"""Reading a model's layers from its traced call tree: repeated blocks, containers, the head (see ``find_layers``).

A *block* is a member of a *run*: two or more consecutive sibling calls with parameters, of one class, each a
composite module (it holds a submodule with parameters: a transformer or residual block, not a ``Linear``), at
least two of them distinct modules, none holding a run itself (in a run of stages the stages' blocks are the
blocks). For a plain ``Sequential``/``ModuleList``/``ModuleDict``, whose class says nothing, "one class" also
means the same classes of children. Siblings run one after the other, so a run is a stack executed in
sequence. Two refinements for how timm builds CNNs: the conv-norm-act *units* (a composite module of leaf modules
that chains them, ``ConvNormAct``) of a residual block are not blocks, the block is (RegNet's ``Bottleneck``); and
a stage holding one block beside stages of the same class holding runs is a stage too, its block a block
(EfficientNet's last stage ``blocks.6``, MobileNetV3's ``blocks.5``, RegNet's ``s1``). Found from execution and
class identity only, never from names: Hugging Face's ``BertLayer``,
``GPT2Block``, ``ViTLayer``, ``T5Block``, timm's ``Block``, ``nn.TransformerEncoderLayer``, torchvision's
``BasicBlock`` and ``_DenseLayer`` are all found so.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..layers import is_norm
from .trace import Call

__all__ = ["auto_units", "depth_units", "has_params"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

Units = list[list[Call]]  # the layers to be: each a list of calls that freeze together


def has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _composite(module: nn.Module) -> bool:
    return any(has_params(c) for c in module.children())


def _chains(call: Call) -> bool:
    link = call.first_in
    for child in call.children:
        if link is None or child.first_in is not link:
            return False
        link = child.first_out
    return link is not None and link is call.first_out


def _auto_expand(call: Call) -> bool:
    """A container of blocks: a ``Sequential``/``ModuleList``/``ModuleDict``, or a module without parameters of
    its own that only chains its children (each child's input is the previous one's output), with at least one
    composite child. A residual, dense or attention block fails the chain test (a sum, a concatenation)."""
    container = isinstance(call.module, _CONTAINERS) or (
        next(call.module.parameters(recurse=False), None) is None and _chains(call)
    )
    return container and any(_composite(c.module) for c in call.children)


def _flatten(call: Call, expand: Callable[[Call], bool]) -> list[Call]:
    out: list[Call] = []
    for child in call.children:
        if child.children and expand(child):
            out.extend(_flatten(child, expand))
        else:
            out.append(child)
    return out


def _kind(module: nn.Module) -> object:
    """A module's class; for a plain container, whose class says nothing, also its children's classes."""
    if type(module) in _CONTAINERS:
        return type(module), tuple(type(c) for c in module.children())
    return type(module)


def _runs(call: Call) -> list[list[Call]]:
    runs: list[list[Call]] = []
    current: list[Call] = []
    for child in (c for c in call.children if has_params(c.module)):
        if current and _kind(child.module) == _kind(current[0].module):
            current.append(child)
            continue
        runs.append(current)
        current = [child] if _composite(child.module) else []
    runs.append(current)
    return [r for r in runs if len({id(c.module) for c in r}) >= 2]


def _unit(call: Call) -> bool:
    """A conv-norm-act unit: a composite module of leaf modules that only chains them (timm's ``ConvNormAct``)."""
    return _composite(call.module) and not any(_composite(c.module) for c in call.children) and _chains(call)


def _lone_blocks(call: Call, inner: dict[Call, bool], blocks: set[Call]) -> list[Call]:
    """The composite children of ``call``'s children that are stages of one block: siblings of the same class as a
    stage of blocks (timm's EfficientNet ``blocks.6``, RegNet's ``s1``), that hold no block themselves."""
    stages = {type(c.module) for c in call.children if any(x in blocks for x in c.children)}
    lone = [c for c in call.children if type(c.module) in stages and not inner[c]]
    return [x for c in lone if not any(x in blocks for x in c.children) for x in c.children if _composite(x.module)]


def _blocks(root: Call) -> tuple[set[Call], set[Call]]:
    """The block calls, and the calls that hold one beneath them."""
    blocks: set[Call] = set()
    above: set[Call] = set()

    def walk(call: Call) -> bool:
        inner = {c: walk(c) for c in call.children}
        for run in _runs(call):
            if all(_unit(c) for c in run) and not _chains(call):
                continue  # the conv-norm-act units of a residual block (RegNet's): the block is the layer
            if not any(inner[c] for c in run):  # a run of stages is not one of blocks: their blocks are
                blocks.update(run)
        blocks.update(_lone_blocks(call, inner, blocks))
        found = any(inner.values()) or any(c in blocks for c in call.children)
        if found:
            above.add(call)
        return found

    walk(root)
    return blocks, above


def _norm_only(module: nn.Module) -> bool:
    owners = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None]
    return bool(owners) and all(is_norm(m) for m in owners)


def _head_off(calls: list[Call]) -> list[Call]:
    """Without blocks: the head is the last call (the classifier) and the normalisation-only calls before it."""
    calls = [c for c in calls if has_params(c.module)]
    end = len(calls) - 1
    while end > 0 and _norm_only(calls[end - 1].module):
        end -= 1
    return calls[: max(end, 0)]


def auto_units(root: Call) -> tuple[Units, bool]:
    """The layers of ``granularity="auto"`` as lists of calls, and whether the first is the input group (what
    the data meets before the first block: an embedding, a stem), whose tied members are split off, not
    dropped. With blocks: every call holding a block is expanded (wrappers such as ``BertModel`` inside
    ``BertForSequenceClassification``, ``nn.TransformerEncoder``), a block never is, other calls as
    ``_auto_expand`` says; then the input group, one layer per block or call up to the last block, and after
    it the head (a final norm, a pooler, a classifier; a model that ends with a block: that block). Without
    blocks, the older rule: expansion by ``_auto_expand`` (and through a single wrapper), ``_head_off``."""
    blocks, above = _blocks(root)
    if not blocks:
        calls = _flatten(root, _auto_expand)
        while len(p := [c for c in calls if has_params(c.module)]) == 1 and p[0].children:
            calls = _flatten(p[0], _auto_expand)  # a wrapper around the real model
        return [[c] for c in _head_off(calls)], False
    calls = _flatten(root, lambda c: c in above or (c not in blocks and _auto_expand(c)))
    calls = [c for c in calls if has_params(c.module)]
    at = [i for i, c in enumerate(calls) if c in blocks]
    first, last = at[0], at[-1] if at[-1] < len(calls) - 1 else at[-1] - 1
    units = [[c] for c in calls[first : last + 1]]
    return ([calls[:first], *units], True) if first else (units, False)


def depth_units(root: Call, granularity: int) -> Units:
    """``granularity=g``: every call whose qualified name has fewer than ``g`` parts is expanded; ``_head_off``."""
    calls = _flatten(root, lambda c: len(c.name.split(".")) < granularity)
    return [[c] for c in _head_off(calls)]
