"""The graph layer: tracing, selecting nodes, printing, diffing, provenance.

Plain functions over an explicit ``GraphModule``; nothing here mutates its input (except
:func:`provenance.track`, which ``apply`` calls to stamp the nodes a pass made).
"""

from .diff import GraphDiff, diff_graphs, diff_signatures, signatures
from .printing import args_text, format_graph, module_text, node_line, submodules, target_name
from .provenance import base, origin_map, origins
from .select import Selector, describe_selector, module_paths, select
from .trace import LeafModule, trace

__all__ = [
    "GraphDiff",
    "LeafModule",
    "Selector",
    "args_text",
    "base",
    "describe_selector",
    "diff_graphs",
    "diff_signatures",
    "format_graph",
    "module_paths",
    "module_text",
    "node_line",
    "origin_map",
    "origins",
    "select",
    "signatures",
    "submodules",
    "target_name",
    "trace",
]
