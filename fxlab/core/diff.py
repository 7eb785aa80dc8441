"""Graph diffs: nodes added, removed, replaced and changed, matched by provenance.

Two nodes of the same name are the same node (changed when their printout differs). A node whose
name is new but which stands for removed nodes (see :mod:`fxlab.core.provenance`) *replaced*
them; the rest are added or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from .printing import node_line, submodules
from .provenance import origin_map


@dataclass
class GraphDiff:
    """Nodes added, removed, replaced and changed between two graphs.

    ``replaced`` maps a new node's name to the names of the removed nodes it took the place of.
    """

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    replaced: dict[str, list[str]] = field(default_factory=dict)
    before: dict[str, str] = field(default_factory=dict, repr=False)
    after: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.replaced)

    def summary(self) -> str:
        text = f"+{len(self.added)} -{len(self.removed)} ~{len(self.changed)}"
        return text + (f" ={len(self.replaced)}" if self.replaced else "")

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(change, node, before, after) rows: removed, replaced, changed, added, each in graph order."""
        rows = [("removed", n, self.before[n], "") for n in self.removed]
        rows += [("replaced", f"{', '.join(olds)} → {new}", " / ".join(self.before[o] for o in olds), self.after[new])
                 for new, olds in self.replaced.items()]
        rows += [("changed", n, self.before[n], self.after[n]) for n in self.changed]
        rows += [("added", n, "", self.after[n]) for n in self.added]
        return rows


def signatures(gm: fx.GraphModule) -> dict[str, str]:
    """Node name → printout line, in graph order; the input of :func:`diff_signatures`."""
    modules = submodules(gm)
    return {n.name: node_line(gm, n, modules) for n in gm.graph.nodes}


def diff_signatures(
    before: dict[str, str],
    after: dict[str, str],
    before_origins: dict[str, tuple[str, ...]] | None = None,
    after_origins: dict[str, tuple[str, ...]] | None = None,
) -> GraphDiff:
    """Diff two :func:`signatures` maps (and their nodes' origins) in time linear in their size."""
    diff = GraphDiff(before=before, after=after)
    gone = [n for n in before if n not in after]
    position = {n: i for i, n in enumerate(gone)}  # graph order of the removed nodes
    owner: dict[str, str] = {}  # traced name → a removed node standing for it
    for n in gone:
        for o in (before_origins or {}).get(n, (n,)):
            owner.setdefault(o, n)
    for n, sig in after.items():
        if n in before:
            if before[n] != sig:
                diff.changed.append(n)
            continue
        olds = {owner[o]: None for o in (after_origins or {}).get(n, ()) if o in owner}
        if olds:
            diff.replaced[n] = sorted(olds, key=position.__getitem__)
        else:
            diff.added.append(n)
    taken = {m for olds in diff.replaced.values() for m in olds}
    diff.removed = [n for n in gone if n not in taken]
    return diff


def diff_graphs(before: fx.GraphModule, after: fx.GraphModule) -> GraphDiff:
    """Nodes added, removed, replaced and changed from ``before`` to ``after``.

    >>> import fxlab, torch
    >>> from fxlab.passes import InsertRelu
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> diff_graphs(fxlab.trace(m), fxlab.apply(m, [InsertRelu("_0")])).summary()
    '+1 -0 ~1'
    """
    return diff_signatures(signatures(before), signatures(after), origin_map(before), origin_map(after))
