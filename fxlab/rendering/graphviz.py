"""Graphviz renderings: dot source, and svg / png through Graphviz's ``dot`` program.

In a diff the new graph is drawn with added nodes green, replaced nodes blue, changed nodes
orange, and the removed nodes of the old graph red and dashed.
"""

from __future__ import annotations

import shutil
import subprocess

from ..core import GraphDiff
from ..errors import ExportError
from .analysis import Analysis, NodeInfo
from .text import clip

__all__ = ["DIFF_FILL", "dot", "run_dot"]

_FILL = {"placeholder": "#e8e8e8", "output": "#e8e8e8", "call_module": "#dbe9f6", "get_attr": "#eadcf2"}
#: Fill colour of each kind of change in a diff drawing.
DIFF_FILL = {"added": "#c6efce", "replaced": "#cfe2ff", "changed": "#ffe3a3", "removed": "#f8d0d4"}
_DIFF_BORDER = {"added": "#2e7d32", "replaced": "#1a4f9c", "changed": "#c05a00"}


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(n: NodeInfo) -> str:
    lines = [n.name]
    if n.op == "placeholder":
        lines.append("input")
    elif n.op == "call_module" and ": " in n.target:
        path, _, module = n.target.partition(": ")
        lines.append(clip(module if path.replace(".", "_") == n.name else n.target, 60))
    elif n.op != "output":
        lines.append(clip(n.target, 60))
    if n.shape is not None:
        lines.append(f"{n.shape_text()} {n.dtype}".strip())
    if n.params:
        lines.append(f"{n.params:,} params")
    return "\n".join(lines)


def _node_line(n: NodeInfo) -> str:
    attrs = [f"label={_q(_label(n))}"]
    if n.change in _DIFF_BORDER:
        attrs.append(f'fillcolor="{DIFF_FILL[n.change]}"')
        attrs.append(f'penwidth=2, color="{_DIFF_BORDER[n.change]}"')
    elif n.op in _FILL:
        attrs.append(f'fillcolor="{_FILL[n.op]}"')
    return f"  {_q(n.name)} [{', '.join(attrs)}];"


def _removed_lines(diff: GraphDiff, before: Analysis) -> list[str]:
    gone = set(diff.removed) | {old for olds in diff.replaced.values() for old in olds}
    out = []
    for n in before.nodes:
        if n.name in gone:
            out.append(f"  {_q(n.name)} [label={_q(_label(n))}, style=\"rounded,filled,dashed\", "
                       f"fillcolor=\"{DIFF_FILL['removed']}\", color=\"#b71c1c\", fontcolor=\"#b71c1c\"];")
    for n in before.nodes:
        for src in n.inputs:
            if n.name in gone or src in gone:
                out.append(f"  {_q(src)} -> {_q(n.name)} [style=dashed, color=\"#b71c1c\"];")
    return out


def dot(a: Analysis, diff: GraphDiff | None = None, before: Analysis | None = None) -> str:
    """Graphviz source of ``a`` (its nodes' ``change`` marks coloured); with ``before``, the removed nodes too."""
    title = type(a.gm).__name__
    if diff is not None:
        title += (f" — diff {diff.summary()} (green added, blue replaced, orange changed, "
                  "red dashed removed)")
    out = [
        f"digraph {_q(type(a.gm).__name__)} {{",
        f"  graph [rankdir=TB, label={_q(title)}, labelloc=t, fontname=Helvetica, fontsize=12];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10, fillcolor="#fdf5d3"];',
        "  edge [arrowsize=0.7];",
    ]
    out += [_node_line(n) for n in a.nodes]
    out += [f"  {_q(src)} -> {_q(n.name)};" for n in a.nodes for src in n.inputs]
    if diff is not None and before is not None:
        out += _removed_lines(diff, before)
    out.append("}")
    return "\n".join(out) + "\n"


def run_dot(source: str, fmt: str) -> bytes:
    """``source`` rendered by Graphviz's ``dot -T{fmt}``; ``ExportError`` (one line) if that fails."""
    exe = shutil.which("dot")
    if exe is None:
        raise ExportError(
            f"{fmt} needs Graphviz's `dot` program, which is not installed (Debian/Ubuntu: apt-get install "
            "graphviz; macOS: brew install graphviz); the table, code, graph, fx, json and dot formats work without it"
        )
    try:
        done = subprocess.run([exe, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"Graphviz's dot failed to run: {exc}") from exc
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ExportError(f"Graphviz's dot failed: {reason[0] if reason else f'exit code {done.returncode}'}")
    return done.stdout
