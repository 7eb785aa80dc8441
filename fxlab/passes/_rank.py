"""The rank (number of dims) of the values of a graph, as far as the graph tells without running it.

A value's rank is known from shape metadata (``torch.fx.passes.shape_prop.ShapeProp``'s
``tensor_meta``, or a ``val``), from an op that fixes it (``torch.flatten(x, 1)``, ``nn.Flatten``,
``x.view(-1, 784)``), from a tensor attribute, or from a rank guard (:func:`add_rank_guard`).
Elementwise ops, Linears, convolutions, BatchNorms, dropouts and activations keep the largest
rank of their inputs; any other value, a graph input say, is a *root* whose rank is unknown.

:func:`ranks` sweeps the graph once and says, for each value, the largest rank it is known to
have and the roots whose ranks it also takes the largest of.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ._rewrite import module_of

__all__ = ["Rank", "add_rank_guard", "ranks"]


@dataclass(frozen=True)
class Rank:
    """A value's rank is ``max(known, rank of each root)``; with no roots it is ``known``."""

    known: int = 0
    roots: frozenset[fx.Node] = field(default_factory=frozenset)

    def exactly(self) -> int | None:
        """The rank, when no root leaves it open."""
        return None if self.roots else self.known

    def join(self, other: Rank) -> Rank:
        """The rank of an elementwise op's result on values of ranks ``self`` and ``other`` (broadcasting)."""
        roots = self.roots if other.roots <= self.roots else self.roots | other.roots
        return Rank(max(self.known, other.known), roots)


_KEEP_RANK_FUNCTIONS = {
    torch.relu, torch.relu_, F.relu, F.relu6, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardtanh, F.mish,
    torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, torch.abs, torch.neg, torch.exp,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    torch.dropout, torch.alpha_dropout, torch.feature_dropout, torch.feature_alpha_dropout,
    torch.add, torch.sub, torch.mul, torch.div,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
}
_KEEP_RANK_METHODS = {"relu", "relu_", "sigmoid", "tanh", "abs", "neg", "exp", "add", "sub", "mul", "div",
                      "contiguous", "clone", "detach"}
_KEEP_RANK_MODULES = (
    nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
    nn.Identity, nn.LayerNorm,
)
_FLATTENS = (torch.flatten, "flatten")
_RESHAPES = (torch.reshape, "reshape", "view")
#: calls whose value is a Python number or a size, not a tensor
_NUMBER_CALLS = ("size", "dim", "numel", "nelement", "item", "element_size", len)
_NUMBER_ATTRIBUTES = ("shape", "ndim")


def _recorded_rank(node: fx.Node) -> int | None:
    """The rank shape propagation recorded for ``node``, else None."""
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    if shape is None:
        shape = getattr(node.meta.get("val"), "shape", None)
    return len(shape) if shape is not None else None


def _call_name(node: fx.Node) -> Any:
    return node.target if node.op in ("call_function", "call_method") else None


def _fixed_rank(gm: fx.GraphModule, node: fx.Node, known: dict[fx.Node, Rank]) -> int | None:
    """The rank an op fixes whatever its input's: flatten, view / reshape to a shape, a tensor
    attribute; 0 for the Python numbers and sizes a graph computes (``x.size(0)``, ``x.shape[1]``)."""
    source = node.args[0] if node.args else None
    input_rank = known[source].exactly() if isinstance(source, fx.Node) else None
    module = module_of(gm, node)
    if isinstance(module, nn.Flatten):
        return _flatten_rank(module.start_dim, module.end_dim, input_rank)
    name = _call_name(node)
    if name in _FLATTENS:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return _flatten_rank(start, end, input_rank)
    if name in _RESHAPES and len(node.args) >= 2 and not node.kwargs:
        return _shape_length(node.args[1:])
    if node.op == "get_attr":
        value = _attribute(gm, str(node.target))
        return value.dim() if isinstance(value, torch.Tensor) else None
    if name in _NUMBER_CALLS or (name is getattr and node.args[1:] in [(a,) for a in _NUMBER_ATTRIBUTES]):
        return 0
    if name is operator.getitem and input_rank == 0:  # x.shape[1]
        return 0
    return None


def _flatten_rank(start: Any, end: Any, input_rank: int | None) -> int | None:
    if not (isinstance(start, int) and isinstance(end, int)):
        return None
    if start >= 0 and end == -1:
        return start + 1
    if not input_rank:
        return None
    return input_rank - (end % input_rank - start % input_rank)


def _shape_length(shape: tuple[Any, ...]) -> int | None:
    """The rank of ``x.view(*shape)``: ``view(-1, 784)`` and ``view((-1, 784))`` are 2-D; not known
    for ``view(y.shape)`` (one value that may be a whole shape) nor ``view(dtype)`` (not a shape)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    elif len(shape) == 1 and isinstance(shape[0], fx.Node):
        return None
    return len(shape) if all(isinstance(s, (int, fx.Node)) for s in shape) else None


def _attribute(gm: fx.GraphModule, path: str) -> Any:
    owner, _, name = path.rpartition(".")
    try:
        return getattr(gm.get_submodule(owner), name, None)
    except AttributeError:
        return None


def _keeps_rank(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s value has the largest rank of its tensor inputs."""
    if node.op == "call_module":
        module = module_of(gm, node)
        activation = type(module).__module__ == "torch.nn.modules.activation"
        return isinstance(module, _KEEP_RANK_MODULES) or (activation and not isinstance(module, nn.MultiheadAttention))
    if node.op == "call_function":
        return node.target in _KEEP_RANK_FUNCTIONS
    return node.op == "call_method" and node.target in _KEEP_RANK_METHODS


def _rank_of(gm: fx.GraphModule, node: fx.Node, known: dict[fx.Node, Rank]) -> Rank:
    recorded = _recorded_rank(node)
    if recorded is not None:
        return Rank(recorded)
    if _guarded_2d(node):
        return Rank(2)
    fixed = _fixed_rank(gm, node, known)
    if fixed is not None:
        return Rank(fixed)
    if _keeps_rank(gm, node) and node.all_input_nodes:
        rank = Rank()
        for source in node.all_input_nodes:
            rank = rank.join(known[source])
        return rank
    return Rank(0, frozenset({node}))


def ranks(gm: fx.GraphModule) -> dict[fx.Node, Rank]:
    """The :class:`Rank` of every node's value, in one sweep in graph order."""
    known: dict[fx.Node, Rank] = {}
    for node in gm.graph.nodes:
        known[node] = _rank_of(gm, node, known)
    return known


# --------------------------------------------------------------------------------------------
# rank guards: ``torch._assert(x.dim() == 2, message)``


def _guarded_2d(node: fx.Node) -> bool:
    """Whether a rank guard asserts that ``node`` is 2-D."""
    for dim in node.users:
        if dim.op != "call_method" or dim.target != "dim" or dim.args != (node,):
            continue
        for eq in dim.users:
            if eq.op == "call_function" and eq.target is operator.eq and eq.args == (dim, 2):
                if any(u.op == "call_function" and u.target is torch._assert for u in eq.users):
                    return True
    return False


def add_rank_guard(graph: fx.Graph, value: fx.Node, before: fx.Node, message: str) -> None:
    """Insert ``torch._assert(value.dim() == 2, message)`` before the node ``before``: the graph then
    raises ``AssertionError`` on input where ``value`` is not 2-D, and :func:`ranks` knows it is."""
    with graph.inserting_before(before):
        dim = graph.call_method("dim", (value,))
        is_2d = graph.call_function(operator.eq, (dim, 2))
        graph.call_function(torch._assert, (is_2d, message))
