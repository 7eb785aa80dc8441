"""Text renderings: the table of nodes, the JSON document, and the code / graph / fx printouts."""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from ..core import format_graph
from .analysis import Analysis, shape_text

__all__ = ["PRINTOUTS", "json_doc", "printout", "size_text", "table", "totals_line"]

#: The formats that are a printout of the graph itself (no shapes needed).
PRINTOUTS = ("code", "graph", "fx")


def _num(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def size_text(nbytes: int) -> str:
    """A byte count for people.

    >>> size_text(512), size_text(437_544)
    ('512 B', '427.3 KiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes} B" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    return ""  # pragma: no cover


def clip(text: str, width: int = 48) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut.

    >>> clip("abcdef", 4)
    'abc…'
    """
    return text if len(text) <= width else text[: width - 1] + "…"


def totals_line(a: Analysis) -> str:
    """The line under the table: the input used (or why shapes are unknown), parameters, bytes, FLOPs."""
    where = (f"input {shape_text(a.input_shape)} {a.input_dtype}" if a.input_shape is not None
             else (a.shape_error or "shapes unknown"))
    return (f"{where}; {a.params:,} parameters, {size_text(a.weight_bytes)} of weights and buffers; "
            f"{a.flops:,} FLOPs (matmuls and convolutions; a multiply-add counts 2)")


def table(a: Analysis) -> str:
    """One row per node (opcode, name, target, args, shape, dtype, params, FLOPs), totals at the bottom."""
    from tabulate import SEPARATING_LINE, tabulate

    headers = ["opcode", "name", "target", "args", "shape", "dtype", "params", "FLOPs"]
    rows: list[Any] = [
        [n.op, n.name, clip(n.target), clip(n.args), n.shape_text(), n.dtype, _num(n.params), _num(n.flops)]
        for n in a.nodes
    ]
    rows.append(SEPARATING_LINE)
    rows.append(["total", f"{len(a.nodes)} nodes", "", "", "", "", f"{a.params:,}", f"{a.flops:,}"])
    text = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left",) * 6 + ("right", "right"))
    return text + "\n" + totals_line(a) + "\n"


def json_doc(a: Analysis) -> dict[str, Any]:
    """The analysis as a JSON-able dict: model, pipeline, input, nodes, edges, totals."""
    return {
        "model": type(a.gm).__name__,
        "pipeline": a.gm.meta.get("fxlab.pipeline", ""),
        "input": {"shape": a.input_shape, "dtype": a.input_dtype} if a.input_shape is not None else None,
        "shape_error": a.shape_error,
        "nodes": [
            {"name": n.name, "op": n.op, "target": n.target, "args": n.args, "inputs": n.inputs,
             "shape": n.shape, "dtype": n.dtype or None, "params": n.params, "flops": n.flops,
             **({"change": n.change} if n.change else {})}
            for n in a.nodes
        ],
        "edges": [[src, n.name] for n in a.nodes for src in n.inputs],
        "totals": {"nodes": len(a.nodes), "params": a.params, "weight_bytes": a.weight_bytes, "flops": a.flops},
    }


def printout(gm: fx.GraphModule, fmt: str) -> str:
    """``gm`` as ``code`` (its Python), ``fx`` (torch's ``print(gm.graph)``) or ``graph`` (fxlab's)."""
    if fmt == "code":
        return "\n".join(line.rstrip() for line in gm.code.strip().splitlines()) + "\n"
    if fmt == "fx":
        return str(gm.graph).rstrip("\n") + "\n"
    return format_graph(gm) + "\n"
