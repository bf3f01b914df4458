"""A BatchNorm subclass that normalises, then does more (timm's ``BatchNormAct2d``: drop, then an activation).

Such a module folds like a BatchNorm only if its forward is provably *the batch norm, then something that never
looks at the input again*: fx traces its eval-mode forward (the path a frozen layer runs) and the graph must hold
exactly one ``F.batch_norm`` on the input with the module's own statistics, weight and bias, in inference mode
(``training=False``); every other use of the input reads its metadata only (``x.ndim``, ``x.shape``) for an
assertion, and nothing after the batch norm touches the statistics, weight or bias again. The rest is the *tail*,
which the fold keeps: the folded forward runs the traced graph with the batch norm replaced by its input (the
adjacent conv's folded output), looking submodules and attributes up at each call as the module's own forward
does. Anything else (a forward fx cannot trace, batch statistics, a second use of the input): no tail, no fold.
"""

from __future__ import annotations

import builtins
import inspect
import logging
import operator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ...tensors import METADATA_METHODS, VALUE_ATTRIBUTES

__all__ = ["Tail", "find_tail"]

log = logging.getLogger(__name__)

_BN_ARGS = inspect.signature(F.batch_norm)
_OWN = ("running_mean", "running_var", "weight", "bias", "num_batches_tracked")
# what an assertion on the input's metadata is made of: x.ndim == 4, _assert(...)
_GUARD_FUNCTIONS = frozenset(
    {torch._assert, operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.getitem}
)


class Tail:
    """What the module's forward does after its batch norm, as its traced graph, and the ``eps`` it normalised
    with (a fold holds only while ``bn.eps`` is still that)."""

    def __init__(self, graph: torch.fx.Graph, norm: torch.fx.Node, eps: float) -> None:
        self.eps, self.norm = eps, norm
        self.steps = [n for n in graph.nodes if n is not norm and not (n.op == "get_attr" and n.target in _OWN)]

    def __call__(self, module: nn.Module, x: torch.Tensor) -> Any:
        """The module's forward with its batch norm already applied to ``x`` (folded into the conv before it)."""
        env: dict[torch.fx.Node, Any] = {self.norm: x}
        for node in self.steps:
            if node.op == "placeholder":
                env[node] = x  # the input, for the metadata its assertions read: the same shape and dtype
                continue
            if node.op == "output":
                return torch.fx.node.map_arg(node.args[0], env.__getitem__)
            args = torch.fx.node.map_arg(node.args, env.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "get_attr":
                env[node] = _attribute(module, node.target)
            elif node.op == "call_module":
                env[node] = _attribute(module, node.target)(*args, **kwargs)
            elif node.op == "call_method":
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                env[node] = node.target(*args, **kwargs)
        raise AssertionError("a traced graph ends with its output")  # pragma: no cover


def _attribute(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _is_norm(node: torch.fx.Node, x: torch.fx.Node, bn: nn.Module) -> bool:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training=False, ...)`` on the module's own."""
    if node.op != "call_function" or node.target is not F.batch_norm:
        return False
    try:
        bound = _BN_ARGS.bind(*node.args, **node.kwargs).arguments
    except TypeError:
        return False
    for name in ("running_mean", "running_var", "weight", "bias"):
        arg = bound.get(name)
        own = arg is None if getattr(bn, name) is None else isinstance(arg, torch.fx.Node) and arg.target == name
        if not own or (arg is not None and arg.op != "get_attr"):
            return False
    return bound["input"] is x and bound.get("training", False) is False and bound.get("eps", 1e-5) == bn.eps


def _metadata(node: torch.fx.Node) -> bool:
    """A read of a tensor's metadata (``x.ndim``, ``x.shape``, ``x.size()``): no value of it comes out."""
    if node.op == "call_function" and node.target is builtins.getattr:
        return node.args[1] not in VALUE_ATTRIBUTES
    return node.op == "call_method" and node.target in METADATA_METHODS


def _guard(node: torch.fx.Node) -> bool:
    """A node of an assertion on metadata: a read, a comparison, ``torch._assert``."""
    return _metadata(node) or (node.op == "call_function" and node.target in _GUARD_FUNCTIONS)


def _needed(output: torch.fx.Node) -> set[torch.fx.Node]:
    seen, todo = set(), [output]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(node.all_input_nodes)
    return seen


def find_tail(bn: nn.Module) -> Tail | None:
    """The tail of BatchNorm subclass ``bn`` (in eval mode), if its forward is the batch norm then the tail."""
    try:
        graph = torch.fx.Tracer().trace(bn)
    except Exception as exc:  # control flow fx cannot follow: nothing is proven
        log.debug("fx cannot trace %s (%s): it does not fold", type(bn).__name__, exc)
        return None
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return None
    (x,) = inputs
    norms = [n for n in graph.nodes if _is_norm(n, x, bn)]
    output = next(n for n in graph.nodes if n.op == "output")
    needed = _needed(output)
    if len(norms) != 1 or norms[0] not in needed:
        return None
    (norm,) = norms
    for node in graph.nodes:
        if node in (x, norm, output) or node in norm.all_input_nodes:
            continue
        if node.op == "get_attr" and node.target in _OWN:
            return None  # the statistics, weight or bias used again after the batch norm
        if x in node.all_input_nodes and not _metadata(node):
            return None  # the input used for a value, not only for its metadata
        if node not in needed and not _guard(node):
            return None  # an op whose result nobody reads: a side effect (an in-place update) the fold would skip
    return Tail(graph, norm, float(bn.eps))
