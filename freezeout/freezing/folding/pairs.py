"""Which BatchNorms of a frozen module fold into an adjacent convolution or linear map in a given call, and the
folded weights.

A BatchNorm with fixed statistics is a per-channel affine map ``y = s * x + t``: after a conv or linear map it
scales the output channels' weights (``torch.nn.utils.fusion``); before a conv it scales the input channels' and
adds ``W`` applied to ``t``, which near a zero-padded border is a *bias map* (``border_map``: the conv of the
constant ``t``, built once per input size). A pair folds only where an fx trace of the call, its non-tensor
arguments fixed, shows the first module's output feeding the second alone, each called once; only stock torch
convolutions and linear maps fold, and a BatchNorm subclass only when its own traced forward is the batch norm then
a tail (``tail``). The arithmetic runs in float64, rounded once to the weight's dtype."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from ...compat import BatchNormBase, conv_forward, conv_pads, stock_conv
from ..effect import OwnedHook
from ..mode import eval_mode
from .tail import Tail, find_tail

__all__ = ["FoldPair", "border_map", "call_pairs", "foldable", "folded_weights"]

log = logging.getLogger(__name__)

_CONVS = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}  # input rank of a batched call
_BN_RANKS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,), nn.SyncBatchNorm: (2, 3, 4, 5)}


@dataclass(frozen=True)
class FoldPair:
    """``first`` feeds ``second``; ``kind`` is ``conv-bn``, ``linear-bn`` or ``bn-conv``; ``rank`` is the input
    rank at which the fold holds (a batched call: the channel dimension is 1 for both modules); ``paths`` are the
    two modules' names in the layer, where they must still be for the fold to hold."""

    kind: str
    first: nn.Module
    second: nn.Module
    rank: int
    paths: tuple[str, str] = ("", "")
    tail: Tail | None = None  # what the BatchNorm's forward does after normalising (``effects.tail``)

    @property
    def bn(self) -> nn.Module:
        return self.first if self.kind == "bn-conv" else self.second

    @property
    def border(self) -> bool:
        """A BN -> Conv fold through zero padding: the conv adds ``border_map`` instead of a bias."""
        return self.kind == "bn-conv" and _conv_pads_with_zeros(self.second)

    @property
    def target(self) -> nn.Module:
        """The conv or linear module whose weights absorb the BatchNorm."""
        return self.second if self.kind == "bn-conv" else self.first


def _conv_rank(m: nn.Module) -> int | None:
    for base, rank in _CONVS.items():
        if isinstance(m, base):
            return rank if stock_conv(m, base) else None
    return None


class _Norms:
    """Which modules of a layer are BatchNorms with fixed statistics, and the tail of each subclass (traced once)."""

    def __init__(self) -> None:
        self.tails: dict[int, Tail | None] = {}

    def ranks(self, m: nn.Module) -> tuple[int, ...]:
        """Input ranks at which ``m`` normalises by fixed statistics in eval mode (none: batch statistics, or a
        subclass whose forward is not the batch norm then a tail)."""
        if not isinstance(m, BatchNormBase) or not m.track_running_stats or m.running_var is None:
            return ()
        for base, ranks in _BN_RANKS.items():
            if isinstance(m, base):
                return ranks if type(m).forward is base.forward or self.tail(m) is not None else ()
        return ()

    def tail(self, m: nn.Module) -> Tail | None:
        if id(m) not in self.tails:
            self.tails[id(m)] = find_tail(m)
        return self.tails[id(m)]


def _conv_pads_with_zeros(conv: nn.Module) -> bool:
    return conv.padding_mode == "zeros" and conv_pads(conv)


def _pair(a: nn.Module, b: nn.Module, norms: _Norms, paths: tuple[str, str] = ("", "")) -> FoldPair | None:
    """The fold of ``a`` feeding ``b``, if the two make an exact one."""
    rank = _conv_rank(a)
    if rank in norms.ranks(b) and b.num_features == a.out_channels:
        return FoldPair("conv-bn", a, b, rank, paths, norms.tail(b))
    linear = isinstance(a, nn.Linear) and type(a).forward is nn.Linear.forward
    if linear and 2 in norms.ranks(b) and b.num_features == a.out_features:
        return FoldPair("linear-bn", a, b, 2, paths, norms.tail(b))
    rank = _conv_rank(b)
    if rank in norms.ranks(a) and a.num_features == b.in_channels and norms.tail(a) is None:
        return FoldPair("bn-conv", a, b, rank, paths)
    return None


class _Tracer(torch.fx.Tracer):
    def __init__(self, norms: _Norms) -> None:
        super().__init__()
        self.norms = norms

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # stock subclasses from other packages are folded too, so keep them whole in the graph
        return _conv_rank(m) is not None or bool(self.norms.ranks(m)) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        # a forward FreezeOut put on the module (a fold, the cache's stand-in) is not its dataflow: trace the class's
        own = isinstance(m.__dict__.get("forward"), OwnedHook)
        real = type(m).forward.__get__(m, type(m)) if own else m.forward
        return super().call_module(m, lambda *a, **k: real(*a, **k), args, kwargs)


_PLAIN = (type(None), bool, int, float, str)


def _concrete(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """Every argument of the call that is not a tensor, by name, defaults included; None if the call has one fx
    cannot hold fixed (an object, ``*args``)."""
    try:
        bound = inspect.signature(type(module).forward).bind(module, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    fixed = {}
    for name, value in list(bound.arguments.items())[1:]:
        kind = bound.signature.parameters[name].kind
        if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            return None
        if isinstance(value, torch.Tensor):
            continue
        if not isinstance(value, _PLAIN):
            return None
        fixed[name] = value
    return fixed


def _traced_pairs(layer: nn.Module, concrete: dict[str, Any]) -> list[FoldPair]:
    norms = _Norms()
    for m in layer.modules():  # each subclass's own trace first, not nested
        norms.ranks(m)
    graph = _Tracer(norms).trace(layer, concrete_args=concrete)
    # counted per module object: one registered under two names is one module called twice
    calls = Counter(id(layer.get_submodule(n.target)) for n in graph.nodes if n.op == "call_module")

    def single(node: torch.fx.Node) -> bool:  # a module called once, on one input
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return False
        return calls[id(layer.get_submodule(node.target))] == 1

    pairs, used = [], set()
    for node in graph.nodes:
        if not single(node) or len(node.users) != 1 or node.target in used:
            continue
        (user,) = node.users
        if not single(user) or user.args[0] is not node or user.target in used:
            continue
        first, second = layer.get_submodule(node.target), layer.get_submodule(user.target)
        pair = _pair(first, second, norms, (node.target, user.target))
        if pair is not None:  # graph order: in Conv -> BN -> Conv the first (exact at any padding) wins
            pairs.append(pair)
            used |= {node.target, user.target}
    return pairs


def call_pairs(module: nn.Module, args: tuple, kwargs: dict) -> list[FoldPair] | None:
    """The BatchNorm folds of this call of the frozen ``module``: an fx trace of its class ``forward`` in eval mode
    with the call's non-tensor arguments fixed (see the module doc); ``None`` if fx cannot trace it so."""
    concrete = _concrete(module, args, kwargs)
    if concrete is None:
        return None
    try:
        with eval_mode(module), warnings.catch_warnings():
            warnings.simplefilter("error")  # fx's "cannot add an assertion for this input": nothing is proven
            return _traced_pairs(module, concrete)
    except Exception as exc:  # data-dependent control flow and the like: fx cannot follow it, so nothing is proven
        log.debug("fx cannot trace %s (%s): this call folds nothing", type(module).__name__, exc)
        return None


def foldable(module: nn.Module) -> bool:
    """Whether ``module`` holds a stock conv or linear map and a BatchNorm with fixed statistics of the same width
    (a pair that could fold, if a call's dataflow proves it)."""
    norms, maps, widths = _Norms(), set(), set()
    for m in module.modules():
        if _conv_rank(m) is not None:
            maps |= {m.in_channels, m.out_channels}
        elif isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
            maps.add(m.out_features)
        elif norms.ranks(m):
            widths.add(m.num_features)
    return bool(maps & widths)


def _double(t: torch.Tensor | None) -> torch.Tensor | None:
    # float64 where the device has it (MPS has not): the fold is rounded once, to the weight's dtype
    return None if t is None else t.to(torch.float32 if t.device.type == "mps" else torch.float64)


def _affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The BatchNorm's fixed map ``y = s * x + t`` per channel, in float64."""
    s = torch.rsqrt(_double(bn.running_var) + bn.eps)
    if bn.weight is not None:
        s = s * _double(bn.weight)
    t = -_double(bn.running_mean) * s
    if bn.bias is not None:
        t = t + _double(bn.bias)
    return s, t


def folded_weights(pair: FoldPair) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias (float64, no autograd history) of ``pair.target`` with the BatchNorm folded in; the caller
    rounds them to the weight's dtype."""
    bn, target = pair.bn, pair.target
    with torch.no_grad():
        w, b = _double(target.weight), _double(target.bias)
        stats = (_double(bn.running_mean), _double(bn.running_var), bn.eps)
        if pair.kind == "conv-bn":
            return tuple(t.detach() for t in fuse_conv_bn_weights(w, b, *stats, _double(bn.weight), _double(bn.bias)))
        if pair.kind == "linear-bn":
            gamma = torch.ones_like(stats[0]) if bn.weight is None else _double(bn.weight)
            beta = torch.zeros_like(stats[0]) if bn.bias is None else _double(bn.bias)
            return tuple(t.detach() for t in fuse_linear_bn_weights(w, b, *stats, gamma, beta))
        # BN -> conv: input channel j of output o is channel (o's group) * in_per_group + j of the BatchNorm
        s, t = _affine(bn)
        groups, per_group = target.groups, w.shape[1]
        shape = (w.shape[0], per_group) + (1,) * (w.dim() - 2)

        def per_output(v: torch.Tensor) -> torch.Tensor:
            v = v.view(groups, 1, per_group).expand(groups, w.shape[0] // groups, per_group)
            return v.reshape(shape)

        bias = (w * per_output(t)).sum(dim=tuple(range(1, w.dim())))
        return w * per_output(s), bias if b is None else bias + b


def border_map(pair: FoldPair, spatial: tuple[int, ...]) -> torch.Tensor:
    """What a zero-padding BN -> Conv fold adds in place of a bias, for inputs of ``spatial`` size (float64): the
    original conv (its bias included) applied to the BatchNorm's constant ``t``, the zeros padded as they are.
    Shape ``(out_channels, *output spatial)``; it broadcasts over the batch."""
    bn, target = pair.bn, pair.target
    with torch.no_grad():
        _, t = _affine(bn)
        const = t.view(1, -1, *(1,) * len(spatial)).expand(1, t.numel(), *spatial)
        return conv_forward(target, const, _double(target.weight), _double(target.bias))[0]
