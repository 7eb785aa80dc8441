"""Graph renderings for people and tools: tables, code, FX IR, JSON, Graphviz (dot, svg, png), diffs.

:func:`render` is the library face of ``python -m fxlab.show``; it returns the text (or PNG bytes),
so it works in notebooks too::

    print(fxlab.render(gm))                              # the table
    print(fxlab.render(after, diff_against=before))      # what a pipeline changed

The parts: :mod:`~fxlab.rendering.analysis` (output shapes and dtypes from one run of the model,
eval mode, no grad, on a dummy MNIST batch of shape (1, 1, 28, 28) or on ``example_input``;
parameter counts; FLOPs counted by torch's ``FlopCounterMode``: matmuls and convolutions, a
multiply-add being 2), :mod:`~fxlab.rendering.text` (table, JSON, printouts),
:mod:`~fxlab.rendering.graphviz` (dot, svg, png) and :mod:`~fxlab.rendering.diff`.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from ..errors import ExportError
from .analysis import MNIST_BATCH, Analysis, NodeInfo, analyze, as_graph_module
from .diff import diff_doc, diff_text, graph_diff, mark
from .graphviz import dot, run_dot
from .text import PRINTOUTS, json_doc, printout, table

__all__ = ["FORMATS", "MNIST_BATCH", "Analysis", "NodeInfo", "analyze", "render"]

#: The formats :func:`render` knows; ``svg`` and ``png`` need Graphviz's ``dot`` program.
FORMATS = ("table", "code", "graph", "fx", "json", "dot", "svg", "png")


def render(
    gm: nn.Module,
    format: str = "table",  # noqa: A002 - the natural name for the caller
    *,
    diff_against: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
) -> str | bytes:
    """``gm`` rendered as ``format``; with ``diff_against``, what changed from that model to ``gm``.

    Formats: ``table`` (one row per node: opcode, name, target, args, output shape and dtype,
    parameters, FLOPs; totals at the bottom), ``code`` (the GraphModule's Python), ``graph``
    (fxlab's compact printout, :func:`fxlab.format_graph`), ``fx`` (torch's own ``print(gm.graph)``),
    ``json`` (nodes, edges, shapes, totals), ``dot`` (Graphviz source), ``svg`` (text) and ``png``
    (bytes), rendered by Graphviz's ``dot``. A model that is not a ``GraphModule`` is traced.

    With ``diff_against`` (the model before a pipeline): the text formats give a table of the
    added / removed / replaced / changed nodes and a unified diff of the printouts (of ``code``
    for code, of the FX IR for fx, of fxlab's printout otherwise); ``json`` adds ``diff`` and
    ``before``; ``dot`` / ``svg`` / ``png`` draw the new graph with added nodes green, replaced
    nodes blue, changed nodes orange and removed nodes red and dashed.

    >>> import fxlab
    >>> from fxlab.models import build
    >>> print(fxlab.render(build("mymodule"), "graph"), end="")
    %x = input
    %flatten = torch.flatten(%x, 1)
    %layer1 = layer1:Linear(784→128)(%flatten)
    %relu = torch.relu(%layer1)
    %layer2 = layer2:Linear(128→64)(%relu)
    %relu_1 = torch.relu(%layer2)
    %layer3 = layer3:Linear(64→10)(%relu_1)
    return %layer3
    >>> "218,368 FLOPs" in fxlab.render(build("mymodule"))
    True
    """
    if format not in FORMATS:
        from ..errors import did_you_mean

        raise ExportError(f"unknown format {format!r}{did_you_mean(format, FORMATS)}; formats: {', '.join(FORMATS)}")
    after_gm = as_graph_module(gm)
    before_gm = as_graph_module(diff_against) if diff_against is not None else None
    if format in PRINTOUTS and before_gm is None:
        return printout(after_gm, format)
    after = analyze(after_gm, example_input)
    before = analyze(before_gm, example_input) if before_gm is not None else None
    if format in ("table", *PRINTOUTS):
        return table(after) if before is None else diff_text(before, after, format)
    return _structured(after, before, format)


def _structured(after: Analysis, before: Analysis | None, fmt: str) -> str | bytes:
    """The json, dot, svg and png renderings; with ``before``, of the diff from it."""
    diff = graph_diff(before, after) if before is not None else None
    if diff is not None:
        mark(after, diff)
    if fmt == "json":
        doc = json_doc(after)
        if before is not None and diff is not None:
            doc["diff"] = diff_doc(before, after, diff)
            doc["before"] = json_doc(before)
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    source = dot(after, diff, before)
    if fmt == "dot":
        return source
    data = run_dot(source, fmt)
    return data.decode("utf-8") if fmt == "svg" else data
