"""Selecting nodes: by name or module path, glob, module type, function, or a list of these."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch.fx as fx
from torch import nn

from ..errors import SelectorError, did_you_mean
from .printing import submodules

#: What a selector may be: a node name or module path, a glob over those, an ``nn.Module``
#: subclass, a function (``torch.relu``, ``F.relu``), or a list of any of these (their union).
Selector = Union[str, type, Callable[..., Any], Sequence["Selector"]]


def _matches(modules: Callable[[str], nn.Module], node: fx.Node, selector: Any) -> bool:
    if isinstance(selector, str):
        names = [node.name]
        if node.op == "call_module":
            names.append(str(node.target))
        if any(ch in selector for ch in "*?["):
            return any(fnmatch.fnmatchcase(n, selector) for n in names)
        return selector in names
    if isinstance(selector, type) and issubclass(selector, nn.Module):
        return node.op == "call_module" and isinstance(modules(str(node.target)), selector)
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
    modules = submodules(gm)
    found = [n for n in gm.graph.nodes if any(_matches(modules, n, s) for s in items)]
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


def module_paths(gm: fx.GraphModule) -> list[str]:
    """The module paths that ``call_module`` nodes use, in graph order."""
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]

