"""Where every node came from, and which model a graph was traced from.

Each node of a graph that ``fxlab.apply`` returns carries two entries in ``node.meta``:

- ``"fxlab.from"``: the names of the nodes of the *traced* graph that this node stands for, in
  graph order. A traced node stands for itself; a node a pass created in place of others stands
  for what they stood for (``gelu`` inserted where ``relu`` was: ``("relu",)``); a node that
  absorbed others gets theirs added (a Linear fused with the ReLU after it:
  ``("layer1", "relu")``); a node that replaced nothing (an inserted activation) stands for
  nothing: ``()``.
- ``"fxlab.pass"``: the label of the last pass that created or rewrote the node (absent on
  nodes no pass touched).

A pass may set ``"fxlab.from"`` itself, on the nodes it creates or on a node it keeps (with
:func:`absorb`: the node now stands for the ones it took in, too); what a pass set is kept, and a
traced name some node claims that way is not handed to another. Otherwise :func:`track` infers it
from the graph before and after the pass: a new node that took the place of a removed node in
one of that node's users (or in the output) replaced it. Graph diffs match nodes by this, so a
renamed node shows as *replaced*, not as one removal and one addition.

``gm.meta["fxlab.base"]`` is set when a model is traced: ``{"class": qualified class name,
"arch": (name, kwargs) or None}``, where ``arch`` is what the model's ``fxlab_arch`` attribute
says (fxlab's own models have one) and lets ``fxlab.save`` name the base model without guessing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch.fx as fx
from torch import nn

FROM = "fxlab.from"
PASS = "fxlab.pass"
BASE = "fxlab.base"
_TOKEN = "fxlab.token"  # identifies a node across one pass, even when the pass copies the graph

_tokens = itertools.count()


def origins(node: fx.Node) -> tuple[str, ...]:
    """The traced nodes ``node`` stands for (itself, for a node no pass touched)."""
    return tuple(node.meta.get(FROM, (node.name,)))


def absorb(node: fx.Node, *parts: fx.Node) -> None:
    """Record that ``node`` now does what ``parts`` did (a merge or a fold; ``node`` itself among
    them): it stands for their traced names, in the order given (give them in graph order:
    ``absorb(layer2, layer1, layer2)`` for layer1 merged into layer2)."""
    merged: list[str] = []
    for part in parts:
        merged += [name for name in origins(part) if name not in merged]
    node.meta[FROM] = tuple(merged)


def origin_map(gm: fx.GraphModule) -> dict[str, tuple[str, ...]]:
    """Node name → :func:`origins`, in graph order."""
    return {n.name: origins(n) for n in gm.graph.nodes}


def record_base(gm: fx.GraphModule, model: nn.Module) -> None:
    """Remember which model ``gm`` was traced from (its class, and its ``fxlab_arch`` if it has one)."""
    cls = type(model)
    arch = getattr(model, "fxlab_arch", None)
    gm.meta[BASE] = {"class": f"{cls.__module__}.{cls.__qualname__}", "arch": arch}


def base(gm: nn.Module) -> dict[str, Any] | None:
    """What :func:`record_base` recorded for ``gm``, or ``None``."""
    meta = getattr(gm, "meta", None)
    return meta.get(BASE) if isinstance(meta, dict) else None


class _Before:
    """What :func:`track` needs to know of a graph before a pass."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.users: dict[int, list[tuple[int, list[int]]]] = {}
        self.names: dict[int, str] = {}
        self.origins: dict[int, tuple[str, ...]] = {}
        for n in gm.graph.nodes:
            n.meta.setdefault(FROM, (n.name,))
            n.meta[_TOKEN] = next(_tokens)
        for n in gm.graph.nodes:
            t = n.meta[_TOKEN]
            self.names[t] = n.name
            self.origins[t] = origins(n)
            self.users[t] = [(u.meta[_TOKEN], _arg_tokens(u)) for u in n.users]


def _arg_tokens(node: fx.Node) -> list[int]:
    return [a.meta.get(_TOKEN, -1) for a in node.all_input_nodes]


def before_pass(gm: fx.GraphModule) -> _Before:
    """Mark every node of ``gm`` so that :func:`track` can tell afterwards what a pass did."""
    return _Before(gm)


def track(before: _Before, gm: fx.GraphModule, label: str) -> None:
    """Give every node a pass created or rewrote its provenance (``"fxlab.from"``, ``"fxlab.pass"``)."""
    survivors: dict[int, fx.Node] = {}
    created: list[fx.Node] = []
    for n in gm.graph.nodes:
        t = n.meta.get(_TOKEN)
        if t in before.names and t not in survivors and before.names[t] == n.name:
            survivors[t] = n
        else:
            created.append(n)
    for n in created:  # a node with a copied token took over that node's meta: it replaced it
        t = n.meta.get(_TOKEN)
        if t in before.names and t not in survivors and FROM in n.meta and _is_copied(n, before, t):
            n.meta[FROM] = before.origins[t]
        elif not _explicit(n, before):
            n.meta[FROM] = ()
        n.meta[PASS] = label
    for t, n in survivors.items():  # a kept node the pass gave new provenance (absorb): rewritten
        if tuple(n.meta.get(FROM, ())) != before.origins[t]:
            n.meta[PASS] = label
    claimed = {name for n in gm.graph.nodes for name in n.meta.get(FROM, ())}
    removed = [t for t in before.names if t not in survivors]
    by_token = {n.meta.get(_TOKEN): n for n in survivors.values()}
    new_ids = {id(n) for n in created}
    for t in removed:
        for user_token, old_args in before.users[t]:
            user = by_token.get(user_token)
            if user is None:
                continue
            for heir in user.all_input_nodes:
                if heir.meta.get(_TOKEN) in old_args and id(heir) not in new_ids:
                    continue  # an input the user already had
                names = [name for name in before.origins[t] if name not in claimed]
                if names or id(heir) in new_ids:
                    _absorb(heir, names, label, is_new=id(heir) in new_ids)
                    claimed.update(names)
    for n in gm.graph.nodes:
        n.meta.pop(_TOKEN, None)


def _is_copied(node: fx.Node, before: _Before, token: int) -> bool:
    return tuple(node.meta.get(FROM, ())) == before.origins[token]


def _explicit(node: fx.Node, before: _Before) -> bool:
    """Whether the pass set ``"fxlab.from"`` on a node it created (not inherited by copying meta)."""
    return FROM in node.meta and node.meta.get(_TOKEN) not in before.names


def _absorb(heir: fx.Node, names: Iterable[str], label: str, *, is_new: bool) -> None:
    merged = list(heir.meta.get(FROM, () if is_new else (heir.name,)))
    merged += [name for name in names if name not in merged]
    heir.meta[FROM] = tuple(merged)
    heir.meta[PASS] = label
