"""Diff renderings: what changed from one graph to another.

Nodes are matched by :func:`fxlab.core.diff_graphs` (by name, then by provenance), so a node a
pass put in place of another shows as *replaced* (``relu → gelu``), not as one removal and one
addition.
"""

from __future__ import annotations

import difflib
from typing import Any

from ..core import GraphDiff, diff_graphs, format_graph
from .analysis import Analysis
from .text import printout, size_text

__all__ = ["diff_doc", "diff_text", "graph_diff", "mark"]


def graph_diff(before: Analysis, after: Analysis) -> GraphDiff:
    """Nodes added, removed, replaced and changed from ``before``'s graph to ``after``'s."""
    return diff_graphs(before.gm, after.gm)


def _rows_table(diff: GraphDiff) -> str:
    from tabulate import tabulate

    rows = [list(row) for row in diff.rows()]
    return tabulate(rows, headers=["change", "node", "before", "after"], tablefmt="simple", disable_numparse=True)


def diff_text(before: Analysis, after: Analysis, fmt: str) -> str:
    """The table of changed nodes, (for ``table``) the totals before → after, and a unified diff of
    the printouts (``code`` for code, the FX IR for fx, fxlab's printout otherwise)."""
    diff = graph_diff(before, after)
    lines = [f"graph diff: {diff.summary()} (nodes added, removed, changed"
             + (", replaced)" if diff.replaced else ")")]
    lines.append("no node changed" if diff.empty else _rows_table(diff))
    if fmt == "table":
        lines.append(
            f"parameters {before.params:,} → {after.params:,}; weights and buffers {size_text(before.weight_bytes)}"
            f" → {size_text(after.weight_bytes)}; FLOPs {before.flops:,} → {after.flops:,}"
        )
    kind = fmt if fmt in ("code", "fx") else "graph"
    udiff = list(difflib.unified_diff(
        printout(before.gm, kind).splitlines(), printout(after.gm, kind).splitlines(),
        fromfile=f"before ({kind})", tofile=f"after ({kind})", lineterm="",
    ))
    lines.append("")
    lines.extend(udiff if udiff else [f"the {kind} printouts are identical"])
    return "\n".join(lines) + "\n"


def mark(after: Analysis, diff: GraphDiff) -> None:
    """Set ``change`` on ``after``'s nodes: ``added``, ``replaced`` or ``changed``."""
    for name in diff.added:
        after.by_name[name].change = "added"
    for name in diff.replaced:
        after.by_name[name].change = "replaced"
    for name in diff.changed:
        after.by_name[name].change = "changed"


def diff_doc(before: Analysis, after: Analysis, diff: GraphDiff) -> dict[str, Any]:
    """The ``diff`` entry of the JSON rendering."""
    return {
        "summary": diff.summary(),
        "added": diff.added,
        "removed": diff.removed,
        "replaced": [{"node": new, "replaces": olds, "before": [diff.before[o] for o in olds],
                      "after": diff.after[new]} for new, olds in diff.replaced.items()],
        "changed": [{"node": n, "before": diff.before[n], "after": diff.after[n]} for n in diff.changed],
        "unified_diff": "\n".join(difflib.unified_diff(
            format_graph(before.gm).splitlines(), format_graph(after.gm).splitlines(),
            "before", "after", lineterm="")),
    }
