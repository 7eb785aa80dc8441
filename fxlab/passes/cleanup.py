"""Cleanup passes (kind ``exact``): remove Dropout (eval semantics), dead code, repeated work.

What may be removed or merged depends on which nodes have effects. ``has_effects`` is the
rule here, stricter than torch.fx's own ``Node.is_impure``: in-place ops (``x.add_(1)``,
``torch.relu_``, ``inplace=True``, ``out=``), random ops (``torch.rand``, dropout in training),
modules that update state when called (BatchNorm in training), and anything fx itself calls
impure all count as effects.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from ..errors import PassError
from ..core import LeafModule
from ..pipeline import Pass, register_pass, sites
from ._rewrite import ModuleUses, module_of, single_input

__all__ = [
    "CommonSubexpressionElimination",
    "DeadCodeElimination",
    "RemoveDropout",
    "has_effects",
]

# --------------------------------------------------------------------------------------------
# what a node does besides computing its value

_IN_PLACE_OPERATORS = {
    operator.setitem, operator.delitem, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.ifloordiv, operator.imod, operator.ipow, operator.imatmul,
    operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
}

_RANDOM_FUNCTIONS = {
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.rand_like, torch.randn_like,
    torch.randint_like, torch.normal, torch.poisson, torch.bernoulli, torch.multinomial,
    F.gumbel_softmax,
}
_RANDOM_METHODS = {
    "bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_", "geometric_",
    "cauchy_", "log_normal_", "multinomial",
}
_EFFECT_METHODS = {"register_hook", "retain_grad", "backward", "record_stream"}

#: dropout spellings → (index of p, index and name of the training flag, its default)
_DROPOUT_FUNCTIONS: dict[Callable[..., Any], tuple[int, int, str, bool]] = {
    F.dropout: (1, 2, "training", True),
    F.dropout1d: (1, 2, "training", True),
    F.dropout2d: (1, 2, "training", True),
    F.dropout3d: (1, 2, "training", True),
    F.alpha_dropout: (1, 2, "training", False),
    F.feature_alpha_dropout: (1, 2, "training", False),
    torch.dropout: (1, 2, "train", True),
    torch.dropout_: (1, 2, "train", True),
    torch.alpha_dropout: (1, 2, "train", True),
    torch.alpha_dropout_: (1, 2, "train", True),
    torch.feature_dropout: (1, 2, "train", True),
    torch.feature_dropout_: (1, 2, "train", True),
    torch.feature_alpha_dropout: (1, 2, "train", True),
    torch.feature_alpha_dropout_: (1, 2, "train", True),
}
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_DROPOUT_FORWARDS = {cls.forward for cls in _DROPOUT_MODULES}

_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _arguments(node: fx.Node) -> dict[str, Any] | None:
    """A Python function call's arguments by parameter name, defaults filled in (None if unknown)."""
    target = node.target
    if target not in _SIGNATURES:
        try:
            _SIGNATURES[target] = inspect.signature(target)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            _SIGNATURES[target] = None
    sig = _SIGNATURES[target]
    if sig is None:
        return None
    try:
        bound = sig.bind(*node.args, **node.kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return dict(bound.arguments)


def _dropout_call(node: fx.Node) -> tuple[Any, Any] | None:
    """``(p, training)`` of a functional dropout call, or None if ``node`` is not one."""
    if node.op != "call_function" or node.target not in _DROPOUT_FUNCTIONS:
        return None
    p_at, train_at, train_name, default = _DROPOUT_FUNCTIONS[node.target]

    def get(i: int, name: str, fallback: Any) -> Any:
        return node.args[i] if len(node.args) > i else node.kwargs.get(name, fallback)
    return get(p_at, "p", 0.5), get(train_at, train_name, default)


def _active(p: Any, training: Any) -> bool:
    """Whether a dropout with these arguments changes its input (anything not constant: yes)."""
    return not (training is False or (isinstance(p, (int, float)) and p == 0))


def _random_module(m: nn.Module) -> bool:
    if isinstance(m, _DROPOUT_MODULES):
        return m.training and m.p > 0
    return isinstance(m, nn.RReLU) and m.training


def _stateful_module(m: nn.Module) -> bool:
    """Calling it updates its state (BatchNorm and friends in training update running stats)."""
    return isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _in_place_name(name: str) -> bool:
    return name.endswith("_") and not name.startswith("__")


def mutates(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` may write into one of its arguments (an in-place op)."""
    if node.op == "call_function":
        if node.target in _IN_PLACE_OPERATORS or _in_place_name(_name(node.target)):
            return True
        if node.kwargs.get("out") is not None or node.kwargs.get("inplace") is True:
            return True
        if len(node.args) > 1:  # F.relu(x, True), F.dropout(x, 0.5, False, True), ...
            args = _arguments(node)
            return args is not None and args.get("inplace") is True
        return False
    if node.op == "call_method":
        name = str(node.target)
        return _in_place_name(name) or name in ("__setitem__", "__delitem__") or (
            name.startswith("__i") and name.endswith("__") and name[3:-2] in _IN_PLACE_DUNDERS
        )
    if node.op == "call_module":
        return any(getattr(m, "inplace", False) is True for m in module_of(gm, node).modules())
    return False


_IN_PLACE_DUNDERS = {"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
                     "lshift", "rshift"}


def is_random(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` draws random numbers (dropout only when it is active)."""
    if node.op == "call_function":
        call = _dropout_call(node)
        if call is not None:
            return _active(*call)
        if node.target in _RANDOM_FUNCTIONS or getattr(node.target, "_nondeterministic_seeded", False):
            return True
        if node.target is F.rrelu:
            args = _arguments(node)
            return args is None or args.get("training") is not False
        return False
    if node.op == "call_method":
        return node.target in _RANDOM_METHODS
    if node.op == "call_module":
        return any(_random_module(m) for m in module_of(gm, node).modules())
    return False


def has_effects(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` does something besides computing its value, so that it must run even if
    nothing reads its value, and must not be merged with a twin: fx's ``Node.is_impure``, in-place
    writes, random numbers, module state updates, hooks."""
    if node.is_impure() or mutates(gm, node) or is_random(gm, node):
        return True
    if node.op == "call_method":
        return node.target in _EFFECT_METHODS
    if node.op == "call_module":
        return any(_stateful_module(m) or getattr(m, "_is_impure", False) for m in module_of(gm, node).modules())
    return False


# --------------------------------------------------------------------------------------------
# remove-dropout


def _dropout_input(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, bool, str] | None:
    """For a dropout node: (its input, whether it is active, how it is spelled); else None."""
    call = _dropout_call(node)
    if call is not None:
        src = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(src, fx.Node):
            return None
        p, training = call
        flag = _DROPOUT_FUNCTIONS[node.target][2]
        return src, _active(p, training), f"{_name(node.target)}(p={p}, {flag}={training})"
    module = module_of(gm, node)
    if isinstance(module, _DROPOUT_MODULES) and type(module).forward in _DROPOUT_FORWARDS:
        src = single_input(node)
        if src is None:
            return None
        mode = "training" if module.training else "eval"
        return src, _active(module.p, module.training), f"{type(module).__name__}(p={module.p}) in {mode} mode"
    return None


@register_pass
@dataclass
class RemoveDropout(Pass):
    """Remove Dropout, which is the identity in eval mode (modules, F.dropout, torch.dropout).

    ``nn.Dropout`` (and ``Dropout1d/2d/3d``, ``AlphaDropout``, ``FeatureAlphaDropout``) modules
    in eval mode and functional dropouts called with ``training=False`` (``F.dropout(x,
    training=self.training)`` traced in eval mode) are removed; their users read their input.
    A dropout that is active (a module in training mode, or a functional one traced with
    ``training=True``) makes the model random: removing it would change what the model computes,
    so the pass refuses with ``PassError`` rather than silently leave or remove it (call
    ``model.eval()`` first). A dropout with ``p=0`` is the identity in any mode and is removed.

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> from fxlab.passes import RemoveDropout
    >>> model = build("simplenn").eval()
    >>> gm = fxlab.apply(model, [RemoveDropout()])
    >>> [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    ['fc1', 'bn1', 'fc2', 'bn2', 'fc3']
    >>> x = torch.randn(4, 1, 28, 28)
    >>> torch.equal(gm(x), model(x))
    True
    """

    name = "remove-dropout"
    kind = "exact"

    def call(self, gm: fx.GraphModule) -> PassResult:
        found = []
        active = []
        for node in gm.graph.nodes:
            match = _dropout_input(gm, node)
            if match is not None:
                (active if match[1] else found).append((node, match))
        if active:
            where = ", ".join(f"{n.name} ({text})" for n, (_, _, text) in active[:3])
            more = f" and {len(active) - 3} more" if len(active) > 3 else ""
            raise PassError(
                f"{self.name}: dropout is active at {where}{more}: the model is random, and removing "
                "it would change what the model computes. Call model.eval() before fxlab.apply "
                f"({self.name} gives eval semantics); a functional dropout must be written "
                "F.dropout(x, training=self.training) to follow the model's mode"
            )
        sites.looked(gm)
        uses = ModuleUses(gm)
        changed = False
        for node, _ in found:  # in graph order: a dropout of a dropout reads the first's input by now
            if not sites.allow(gm, node.name):
                continue
            uses.bypass(node, _dropout_input(gm, node)[0])
            sites.rewrote(gm, node.name)
            changed = True
        return PassResult(gm, changed)


# --------------------------------------------------------------------------------------------
# dce


@register_pass
@dataclass
class DeadCodeElimination(Pass):
    """Remove nodes whose values nothing uses and that have no effects, then unused submodules.

    ``graph.eliminate_dead_code`` with :func:`has_effects` as the test of impurity (fx's own
    test would drop an in-place ``x.add_(1)`` whose result is unused), then
    ``gm.delete_all_unused_submodules()``.

    >>> import fxlab, torch
    >>> from fxlab.passes import DeadCodeElimination
    >>> class Wasteful(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.used, self.unused = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         self.unused(x)
    ...         return self.used(x)
    >>> gm = fxlab.apply(Wasteful(), [DeadCodeElimination()])
    >>> print(fxlab.format_graph(gm))
    %x = input
    %used = used:Linear(4→2)(%x)
    return %used
    >>> hasattr(gm, "unused")
    False
    """

    name = "dce"
    kind = "exact"

    def call(self, gm: fx.GraphModule) -> PassResult:
        # graph.eliminate_dead_code's sweep (last node first), asking sites.allow before each removal
        sites.looked(gm)
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if node.users or node.op in ("placeholder", "output") or has_effects(gm, node):
                continue
            if not sites.allow(gm, node.name):
                continue
            gm.graph.erase_node(node)
            sites.rewrote(gm, node.name)
            changed = True
        before = sum(1 for _ in gm.modules())
        gm.delete_all_unused_submodules()
        changed |= sum(1 for _ in gm.modules()) != before
        return PassResult(gm, changed)


# --------------------------------------------------------------------------------------------
# cse


def _known_module(m: nn.Module) -> bool:
    """torch.nn's and fxlab's own modules: their forward computes a value and nothing else."""
    return type(m).__module__.startswith("torch.nn.") or isinstance(m, LeafModule)


_PURE_BUILTINS = {getattr, len, abs, min, max, round, int, float, bool, isinstance, hasattr, tuple, slice}


def _known_function(target: Any) -> bool:
    """Functions whose only job is their value: torch's, operator's, math's, a few builtins."""
    if target in _PURE_BUILTINS:
        return True
    module = getattr(target, "__module__", None) or ""
    return module.startswith("torch") or module in ("_operator", "operator", "math")


_FRESH_FUNCTIONS = {
    torch.relu, F.relu, F.gelu, F.silu, F.elu, F.leaky_relu, F.hardtanh, F.relu6, F.softplus,
    torch.sigmoid, torch.tanh, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
    F.linear, F.layer_norm, F.batch_norm, torch.matmul, torch.mm, torch.bmm, torch.addmm,
    torch.add, torch.sub, torch.mul, torch.div, torch.exp, torch.log, torch.sqrt, torch.abs,
    torch.neg, torch.cat, torch.stack, torch.clamp, torch.sum, torch.mean,
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.matmul,
    operator.neg, operator.pow, operator.mod,
}
_FRESH_METHODS = {"relu", "sigmoid", "tanh", "exp", "log", "add", "sub", "mul", "div", "matmul", "softmax",
                  "log_softmax", "sum", "mean", "clone", "abs", "neg", "sqrt", "pow"}
_FRESH_MODULES = (
    nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
    nn.Embedding, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax,
    nn.Softplus, nn.Softsign, nn.PReLU,
)


def _fresh(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s value is certainly a new tensor, sharing memory with none of its inputs."""
    if node.op == "call_function":
        return node.target in _FRESH_FUNCTIONS
    if node.op == "call_method":
        return node.target in _FRESH_METHODS
    if node.op == "call_module":
        return isinstance(module_of(gm, node), _FRESH_MODULES)
    return False


def _input_nodes(node: fx.Node) -> Iterator[fx.Node]:
    return iter(node.all_input_nodes)


class _Aliases:
    """Union-find over nodes whose values may share memory; linear time in practice."""

    def __init__(self) -> None:
        self.parent: dict[fx.Node, fx.Node] = {}

    def find(self, node: fx.Node) -> fx.Node:
        root = node
        while self.parent.get(root, root) is not root:
            root = self.parent[root]
        while node is not root:
            self.parent[node], node = root, self.parent.get(node, root)
        return root

    def union(self, a: fx.Node, b: fx.Node) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[ra] = rb


class _Constant:
    """A constant in a CSE key, equal only to the same value of the same type (1 ≠ 1.0 ≠ True)."""

    __slots__ = ("key",)

    def __init__(self, value: Any) -> None:
        if isinstance(value, (float, complex)):
            self.key = (type(value), repr(value))  # keeps 0.0 and -0.0 apart
        elif value is None or isinstance(value, (bool, int, str, torch.dtype, torch.device, torch.layout,
                                                 torch.memory_format)):
            self.key = (type(value), value)
        else:
            self.key = (type(value), id(value))  # anything else: the same object only

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Constant) and self.key == other.key


@register_pass
@dataclass
class CommonSubexpressionElimination(Pass):
    """Merge nodes that compute the same pure operation on the same inputs into one.

    Two nodes are the same when their op, target (for modules: the same module object) and
    arguments are equal (constants equal in type too: ``x + 1`` is not ``x + 1.0``). Nodes with
    effects (see :func:`has_effects`: random ops such as dropout in training, in-place writes,
    BatchNorm in training) are never merged, nor calls of functions and modules from outside
    torch and fxlab. Where the graph writes in place, a value read after a write is not the same
    as one read before it, and values that a write may reach are never merged. One sweep with a
    dict keyed by (op, target, args, kwargs).

    >>> import fxlab, torch
    >>> from fxlab.passes import CommonSubexpressionElimination
    >>> class Twice(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = torch.nn.Linear(4, 4)
    ...     def forward(self, x):
    ...         return torch.relu(self.fc(x)) + torch.relu(self.fc(x))
    >>> gm = fxlab.apply(Twice(), [CommonSubexpressionElimination()])
    >>> print(fxlab.format_graph(gm))
    %x = input
    %fc = fc:Linear(4→4)(%x)
    %relu = torch.relu(%fc)
    %add = operator.add(%relu, %relu)
    return %add
    """

    name = "cse"
    kind = "exact"

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes = list(gm.graph.nodes)
        aliases, written = self._writes(gm, nodes)
        versions: dict[fx.Node, int] = {}  # alias class → writes seen so far in the sweep

        def key_of(value: Any) -> Any:
            if isinstance(value, fx.Node):
                root = aliases.find(value)
                return (value, versions.get(root, 0)) if root in written else value
            if isinstance(value, (list, tuple)):
                return (type(value), tuple(key_of(v) for v in value))
            if isinstance(value, dict):
                return (dict, tuple((k, key_of(v)) for k, v in value.items()))
            if isinstance(value, slice):
                return (slice, key_of(value.start), key_of(value.stop), key_of(value.step))
            return _Constant(value)

        sites.looked(gm)
        seen: dict[Any, fx.Node] = {}
        changed = False
        for node in nodes:
            if self._mergeable(gm, node) and aliases.find(node) not in written:
                target = module_of(gm, node) if node.op == "call_module" else node.target
                key = (node.op, _Constant(target), key_of(node.args), key_of(node.kwargs))
                twin = seen.get(key)
                if twin is None:
                    seen[key] = node
                elif sites.allow(gm, node.name):
                    node.replace_all_uses_with(twin)
                    gm.graph.erase_node(node)
                    sites.rewrote(gm, node.name)
                    changed = True
                    continue
            if mutates(gm, node):
                for arg in _input_nodes(node):
                    root = aliases.find(arg)
                    versions[root] = versions.get(root, 0) + 1
        return PassResult(gm, changed)

    @staticmethod
    def _writes(gm: fx.GraphModule, nodes: list[fx.Node]) -> tuple[_Aliases, set[fx.Node]]:
        """Alias classes (values that may share memory) and the classes some node writes into."""
        aliases = _Aliases()
        external: fx.Node | None = None  # inputs and attributes: the caller's memory, may alias
        writers = []
        for node in nodes:
            if node.op in ("placeholder", "get_attr"):
                if external is None:
                    external = node
                else:
                    aliases.union(node, external)
                continue
            writes = mutates(gm, node)  # an in-place op returns (a view of) what it wrote into
            if writes or not _fresh(gm, node):
                for arg in _input_nodes(node):
                    aliases.union(node, arg)
            if writes:
                writers.append(node)
        written = {aliases.find(arg) for node in writers for arg in _input_nodes(node)}
        return aliases, written

    @staticmethod
    def _mergeable(gm: fx.GraphModule, node: fx.Node) -> bool:
        if node.op == "get_attr":
            return True
        if node.op == "call_function":
            ok = _known_function(node.target)
        elif node.op == "call_method":
            ok = True
        elif node.op == "call_module":
            ok = all(_known_module(m) for m in module_of(gm, node).modules())
        else:
            return False
        return ok and not has_effects(gm, node)
