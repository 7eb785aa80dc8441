"""Tracing with helpful errors, selecting nodes, describing and diffing graphs.

Everything here is a plain function over an explicit ``GraphModule``; nothing mutates its input.
"""

from __future__ import annotations

import fnmatch
import linecache
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import SelectorError, TraceError, did_you_mean

#: What a selector may be: a node name or module path, a glob over those, an ``nn.Module``
#: subclass, a function (``torch.relu``, ``F.relu``), or a list of any of these (their union).
Selector = Union[str, type, Callable[..., Any], Sequence["Selector"]]


_TORCH_FX_DIR = os.path.dirname(fx.__file__)


class LeafModule:
    """Mixin for fxlab's own modules (``fxlab.nn``): the tracer keeps them as one node."""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: Iterable[type | str] = ()) -> None:
        super().__init__()
        leaves = tuple(leaf_modules)
        self._leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self._leaf_paths = {p for p in leaves if isinstance(p, str)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, LeafModule) or isinstance(m, self._leaf_types):
            return True
        if module_qualified_name in self._leaf_paths:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Symbolically trace ``model`` into a ``GraphModule`` that shares its submodules.

    ``leaf_modules`` lists module types or module paths to keep as single opaque nodes;
    ``concrete_args`` fixes arguments that select a branch of Python control flow.

    >>> import fxlab, torch
    >>> gm = fxlab.trace(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    >>> [n.op for n in gm.graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"trace expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule):
        return model
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # torch raises TraceError, TypeError, RuntimeError... all mean 'untraceable'
        raise TraceError(_explain_trace_failure(model, exc)) from exc
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def _explain_trace_failure(model: nn.Module, exc: BaseException) -> str:
    """Name the module and the source line where tracing broke, and what to try."""
    where = ""
    culprit = type(model).__name__
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if _TORCH_FX_DIR in filename or filename.startswith("<"):
            continue
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and frame.f_code.co_name == "forward":
            culprit = type(owner).__name__
            source = linecache.getline(filename, lineno).strip()
            where = f" at {filename}:{lineno} ({source!r})"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    data_dependent = "control flow" in reason or "iterate" in reason or "bool" in reason
    hint = (
        "this forward uses data-dependent control flow; fix the branch with "
        "concrete_args={'arg': value}, or keep the module whole with leaf_modules=[ItsClass]"
        if data_dependent
        else "keep the offending module whole with leaf_modules=[ItsClass], or fix arguments "
        "with concrete_args"
    )
    return f"cannot trace {culprit}.forward{where}: {reason}; {hint}"


# --------------------------------------------------------------------------------------------
# selecting nodes


def _module_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def _matches(gm: fx.GraphModule, node: fx.Node, selector: Any) -> bool:
    if isinstance(selector, str):
        names = [node.name]
        if node.op == "call_module":
            names.append(str(node.target))
        if any(ch in selector for ch in "*?["):
            return any(fnmatch.fnmatchcase(n, selector) for n in names)
        return selector in names
    if isinstance(selector, type) and issubclass(selector, nn.Module):
        module = _module_of(gm, node)
        return module is not None and isinstance(module, selector)
    if callable(selector):
        return node.op == "call_function" and node.target is selector
    raise SelectorError(
        f"cannot select with {selector!r}: use a node name, module path, glob, nn.Module "
        "subclass or function"
    )


def select(gm: fx.GraphModule, selector: Selector, *, allow_empty: bool = False) -> list[fx.Node]:
    """The nodes of ``gm`` that ``selector`` names, in graph order.

    A string matches a node name or a module path exactly (``"layer3"``,
    ``"linear_relu_stack.4"``), or as a glob when it contains ``* ? [``; a module type matches
    the ``call_module`` nodes of that type; a function matches the ``call_function`` nodes
    calling it; a list is the union of its items. No match raises ``SelectorError`` naming the
    closest names, unless ``allow_empty``.

    >>> import fxlab, torch
    >>> gm = fxlab.trace(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    >>> [n.name for n in select(gm, torch.nn.Linear)]
    ['_0']
    """
    items = list(selector) if isinstance(selector, (list, tuple)) else [selector]
    if not items:
        raise SelectorError("empty selector list: name at least one node, path, glob or type")
    found = [n for n in gm.graph.nodes if any(_matches(gm, n, s) for s in items)]
    if not found and not allow_empty:
        raise SelectorError(f"selector {describe_selector(selector)} matches no node{_hint(gm, items)}")
    return found


def _hint(gm: fx.GraphModule, items: list[Any]) -> str:
    text = next((s for s in items if isinstance(s, str)), None)
    if text is None:
        kinds = sorted({type(m).__name__ for _, m in gm.named_modules() if _ != ""})
        return f"; module types present: {', '.join(kinds)}" if kinds else ""
    names = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    names += [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]
    return did_you_mean(text.replace("*", "").replace("?", ""), names)


def describe_selector(selector: Selector) -> str:
    """A short human-readable form of a selector, for messages."""
    if isinstance(selector, str):
        return repr(selector)
    if isinstance(selector, type):
        return selector.__name__
    if isinstance(selector, (list, tuple)):
        return "[" + ", ".join(describe_selector(s) for s in selector) + "]"
    return getattr(selector, "__qualname__", repr(selector))


# --------------------------------------------------------------------------------------------
# describing and diffing graphs


def target_name(node: fx.Node) -> str:
    """The target of a node as text: module path, qualified function name, or method name."""
    if node.op == "call_function":
        target = node.target
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__name__", None) or str(target)
        if module in ("_operator", "operator"):
            return f"operator.{name}"
        if getattr(F, name, None) is target:
            return f"F.{name}"
        if getattr(torch, name, None) is target:
            return f"torch.{name}"
        return f"{module}.{name}" if module else name
    return str(node.target)


def _arg_text(arg: Any) -> str:
    if isinstance(arg, fx.Node):
        return f"%{arg.name}"
    if isinstance(arg, (list, tuple)):
        inner = ", ".join(_arg_text(a) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner}{',' if len(arg) == 1 else ''})"
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{k}: {_arg_text(v)}" for k, v in arg.items()) + "}"
    if isinstance(arg, torch.dtype):
        return str(arg)
    return repr(arg)


def args_text(node: fx.Node) -> str:
    """The arguments of a node as text, nodes written ``%name``."""
    parts = [_arg_text(a) for a in node.args]
    parts += [f"{k}={_arg_text(v)}" for k, v in node.kwargs.items()]
    return ", ".join(parts)


def module_text(module: nn.Module) -> str:
    """One-line description of a module: ``Linear(784→128)``, ``ReLU()``, our modules' repr."""
    if isinstance(module, LeafModule):  # fxlab's own modules (LinearReLU is an nn.Linear too)
        text = repr(module)
        return text if "\n" not in text else f"{type(module).__name__}(…)"
    if isinstance(module, nn.Linear):
        bias = "" if module.bias is not None else ", bias=False"
        return f"Linear({module.in_features}→{module.out_features}{bias})"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{type(module).__name__}({module.num_features})"
    if isinstance(module, nn.Dropout):
        return f"Dropout(p={module.p})"
    text = repr(module)
    return text if "\n" not in text else f"{type(module).__name__}(…)"


def node_line(gm: fx.GraphModule, node: fx.Node) -> str:
    """One line of fxlab's graph printout for ``node``."""
    if node.op == "placeholder":
        return f"%{node.name} = input"
    if node.op == "output":
        return f"return {args_text(node)}"
    if node.op == "get_attr":
        return f"%{node.name} = get_attr {node.target}"
    if node.op == "call_module":
        module = module_text(gm.get_submodule(str(node.target)))
        return f"%{node.name} = {node.target}:{module}({args_text(node)})"
    if node.op == "call_method":
        return f"%{node.name} = .{node.target}({args_text(node)})"
    return f"%{node.name} = {target_name(node)}({args_text(node)})"


def format_graph(gm: fx.GraphModule) -> str:
    """fxlab's compact, stable graph printout (used by golden tests and diffs).

    >>> import fxlab, torch
    >>> print(format_graph(fxlab.trace(torch.nn.Sequential(torch.nn.Linear(4, 2)))))
    %input_1 = input
    %_0 = 0:Linear(4→2)(%input_1)
    return %_0
    """
    return "\n".join(node_line(gm, n) for n in gm.graph.nodes)


@dataclass
class GraphDiff:
    """Nodes added, removed and changed between two graphs, matched by node name."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    before: dict[str, str] = field(default_factory=dict, repr=False)
    after: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def summary(self) -> str:
        return f"+{len(self.added)} -{len(self.removed)} ~{len(self.changed)}"

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(change, node, before, after) rows, removed first, in graph order."""
        rows = [("removed", n, self.before[n], "") for n in self.removed]
        rows += [("changed", n, self.before[n], self.after[n]) for n in self.changed]
        rows += [("added", n, "", self.after[n]) for n in self.added]
        return rows


def signatures(gm: fx.GraphModule) -> dict[str, str]:
    """Node name → signature, in graph order; the input of :func:`diff_signatures`."""
    return {n.name: node_line(gm, n) for n in gm.graph.nodes}


def diff_signatures(before: dict[str, str], after: dict[str, str]) -> GraphDiff:
    """Diff two :func:`signatures` maps in time linear in their size."""
    diff = GraphDiff(before=before, after=after)
    diff.removed = [n for n in before if n not in after]
    diff.added = [n for n in after if n not in before]
    diff.changed = [n for n, sig in after.items() if n in before and before[n] != sig]
    return diff


def diff_graphs(before: fx.GraphModule, after: fx.GraphModule) -> GraphDiff:
    """Nodes added, removed and changed from ``before`` to ``after``.

    >>> import fxlab, torch
    >>> from fxlab.passes import InsertRelu
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> diff_graphs(fxlab.trace(m), fxlab.apply(m, [InsertRelu("_0")])).summary()
    '+1 -0 ~1'
    """
    return diff_signatures(signatures(before), signatures(after))


def module_paths(gm: fx.GraphModule) -> list[str]:
    """The module paths that ``call_module`` nodes use, in graph order."""
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]

