"""Graph renderings for people and tools: tables, code, FX IR, JSON, Graphviz (dot, svg, png), diffs.

:func:`render` is the library face of ``python -m fxlab.show``; it returns the text (or PNG bytes),
so it works in notebooks too::

    print(fxlab.render(gm))                              # the table
    print(fxlab.render(after, diff_against=before))      # what a pipeline changed

Output shapes and dtypes come from running the model once (``torch.fx.passes.shape_prop.ShapeProp``,
eval mode, no grad) on a dummy MNIST batch of shape (1, 1, 28, 28), or on ``example_input``.
FLOPs are counted for Linear-like modules and matmul-like functions only, a multiply-add being 2.
"""

from __future__ import annotations

import difflib
import json
import operator
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import ExportError
from .core import GraphDiff, args_text, diff_signatures, format_graph, module_text, signatures, target_name, trace

__all__ = ["FORMATS", "MNIST_BATCH", "Analysis", "NodeInfo", "analyze", "render"]

#: The formats :func:`render` knows; ``svg`` and ``png`` need Graphviz's ``dot`` program.
FORMATS = ("table", "code", "graph", "fx", "json", "dot", "svg", "png")

#: The dummy input shape propagation runs on unless given ``example_input``.
MNIST_BATCH = (1, 1, 28, 28)

_STATS = {"running_mean", "running_var", "num_batches_tracked"}

# matmul-like functions: (target, index of the left operand)
_MATMULS: dict[Any, int] = {F.linear: 0, torch.matmul: 0, torch.mm: 0, torch.bmm: 0, torch.addmm: 1,
                             operator.matmul: 0}
if hasattr(torch, "_int_mm"):
    _MATMULS[torch._int_mm] = 0
_MATMUL_METHODS = {"matmul": 0, "mm": 0, "bmm": 0}


@dataclass
class NodeInfo:
    """One node as the renderings show it."""

    name: str
    op: str
    target: str
    args: str
    inputs: list[str]
    shape: Any = None  # list of ints, or a list of those for tuple outputs; None: unknown
    dtype: str = ""
    params: int | None = None
    flops: int | None = None
    change: str | None = None  # "added" or "changed" in a diff

    def shape_text(self) -> str:
        return _shape_text(self.shape)


@dataclass
class Analysis:
    """A graph with shapes, parameter counts and FLOPs per node."""

    gm: fx.GraphModule
    nodes: list[NodeInfo]
    input_shape: list[int] | None
    input_dtype: str
    shape_error: str | None = None
    params: int = 0
    weight_bytes: int = 0
    flops: int = 0
    by_name: dict[str, NodeInfo] = field(default_factory=dict, repr=False)


def _shape_text(shape: Any) -> str:
    if shape is None:
        return "?"
    if shape and isinstance(shape[0], list):
        return ", ".join(_shape_text(s) for s in shape)
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _as_graph_module(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return model
    if not isinstance(model, nn.Module):
        raise ExportError(f"render expects an nn.Module or GraphModule, got {type(model).__name__}")
    return trace(model)


# --------------------------------------------------------------------------------------------
# analysis: shapes, parameters, FLOPs


def _example_inputs(gm: fx.GraphModule, example_input: torch.Tensor | None) -> list[torch.Tensor]:
    """What to try, in order: ``example_input``; else the MNIST batch (then ``(1, in_features)`` of
    the first Linear-like module when that is not 784), in float32, then in the parameters' dtype."""
    if example_input is not None:
        return [example_input]
    dtypes = [torch.float32]
    dtypes += sorted({p.dtype for p in gm.parameters() if p.is_floating_point()} - {torch.float32}, key=str)
    device = next(iter(gm.parameters()), torch.empty(0)).device
    shapes = [MNIST_BATCH]
    first = next((gm.get_submodule(str(n.target)) for n in gm.graph.nodes if n.op == "call_module"), None)
    width = getattr(first, "in_features", None)
    if isinstance(width, int) and width != MNIST_BATCH[2] * MNIST_BATCH[3]:
        shapes.append((1, width))
    out = []
    for shape in shapes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        out += [x.to(dtype) for dtype in dtypes]
    return out


def _propagate(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, Any]:
    """Node name → tensor metadata, from ShapeProp in eval mode; ``gm`` is left as it was."""
    from torch.fx.node import map_aggregate
    from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata

    class _ShapeProp(ShapeProp):
        # ShapeProp.run_node without fake-tensor support and contiguity queries (both import sympy,
        # ~1 s of startup) and without writing node.meta: the metadata is collected aside.
        def run_node(self, n: fx.Node) -> Any:
            result = fx.Interpreter.run_node(self, n)
            found = False

            def extract(obj: Any) -> Any:
                nonlocal found
                if isinstance(obj, torch.Tensor):
                    found = True
                    return _extract_tensor_metadata(obj, include_contiguity=False)
                return obj

            meta = map_aggregate(result, extract)
            metas[n.name] = meta if found else None
            return result

    metas: dict[str, Any] = {}
    modes = {m: m.training for m in gm.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            _ShapeProp(gm).propagate(x)
        return metas
    finally:
        for m, training in modes.items():
            m.training = training


def _meta_shape(meta: Any) -> tuple[Any, str]:
    if meta is None:
        return None, ""
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return list(meta.shape), str(meta.dtype).replace("torch.", "")
    if isinstance(meta, (list, tuple)):
        parts = [_meta_shape(m) for m in meta]
        shapes = [s for s, _ in parts if s is not None]
        dtypes = sorted({d for _, d in parts if d})
        return (shapes or None), ",".join(dtypes)
    return None, ""


def _count(module: nn.Module) -> int:
    """Parameters plus weight-like buffers (quantized weights, scales); not BatchNorm statistics."""
    total = sum(p.numel() for p in module.parameters())
    total += sum(b.numel() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1] not in _STATS)
    return total


def _numel(shape: Any) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def _flops(gm: fx.GraphModule, node: fx.Node, shapes: dict[str, Any]) -> int | None:
    out = shapes.get(node.name)
    if out is None or (out and isinstance(out[0], list)):
        return None
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        fan_in, fan_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if isinstance(fan_in, int) and isinstance(fan_out, int) and fan_out:
            return 2 * (_numel(out) // fan_out) * fan_in * fan_out
        return None
    index = None
    if node.op == "call_function" and node.target in _MATMULS:
        index = _MATMULS[node.target]
    elif node.op == "call_method" and node.target in _MATMUL_METHODS:
        index = _MATMUL_METHODS[str(node.target)]
    if index is None or len(node.args) <= index or not isinstance(node.args[index], fx.Node):
        return None
    left = shapes.get(node.args[index].name)
    if not left or isinstance(left[0], list):
        return None
    return 2 * _numel(out) * int(left[-1])


def analyze(model: nn.Module, example_input: torch.Tensor | None = None) -> Analysis:
    """Shapes, dtypes, parameter counts and FLOPs of every node of ``model`` (traced if needed)."""
    gm = _as_graph_module(model)
    metas: dict[str, Any] = {}
    error = None
    used: torch.Tensor | None = None
    for x in _example_inputs(gm, example_input):
        try:
            metas = _propagate(gm, x)
            used, error = x, None
            break
        except Exception as exc:  # any failure of the model on this input: shapes stay unknown
            cause = exc.__cause__ or exc
            reason = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            batch = f"{list(x.shape)} {str(x.dtype).replace('torch.', '')}"
            error = error or f"shape propagation on a {batch} batch failed: {type(cause).__name__}: {reason}"
    shapes: dict[str, Any] = {}
    info = Analysis(gm, [], list(used.shape) if used is not None else None,
                    str(used.dtype).replace("torch.", "") if used is not None else "", error)
    seen: set[int] = set()
    for node in gm.graph.nodes:
        shape, dtype = _meta_shape(metas.get(node.name))
        shapes[node.name] = shape
        params = None
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            params = _count(module)
            if id(module) not in seen:
                seen.add(id(module))
                info.params += params
        elif node.op == "get_attr":
            value = _get_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                params = value.numel()
                if id(value) not in seen:
                    seen.add(id(value))
                    info.params += params
        flops = _flops(gm, node, shapes)
        info.flops += flops or 0
        item = NodeInfo(node.name, node.op, _target_text(gm, node), args_text(node),
                        [a.name for a in node.all_input_nodes], shape, dtype, params, flops)
        info.nodes.append(item)
        info.by_name[node.name] = item
    storages = {}
    for t in list(gm.parameters()) + list(gm.buffers()):
        storages[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
    info.weight_bytes = sum(storages.values())
    return info


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    owner: Any = gm
    for part in target.split("."):
        owner = getattr(owner, part, None)
    return owner


def _target_text(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target}: {module_text(gm.get_submodule(str(node.target)))}"
    if node.op == "call_method":
        return f".{node.target}"
    if node.op == "call_function":
        return target_name(node)
    return str(node.target)


# --------------------------------------------------------------------------------------------
# text renderings


def _num(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes} B" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024  # type: ignore[assignment]
    return ""  # pragma: no cover


def _clip(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _totals_line(a: Analysis) -> str:
    where = (f"input {_shape_text(a.input_shape)} {a.input_dtype}" if a.input_shape is not None
             else (a.shape_error or "shapes unknown"))
    return (f"{where}; {a.params:,} parameters, {_size(a.weight_bytes)} of weights and buffers; "
            f"{a.flops:,} FLOPs (Linear and matmul; a multiply-add counts 2)")


def _table(a: Analysis) -> str:
    from tabulate import SEPARATING_LINE, tabulate

    headers = ["opcode", "name", "target", "args", "shape", "dtype", "params", "FLOPs"]
    rows: list[Any] = [
        [n.op, n.name, _clip(n.target), _clip(n.args), n.shape_text(), n.dtype, _num(n.params), _num(n.flops)]
        for n in a.nodes
    ]
    rows.append(SEPARATING_LINE)
    rows.append(["total", f"{len(a.nodes)} nodes", "", "", "", "", f"{a.params:,}", f"{a.flops:,}"])
    text = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left",) * 6 + ("right", "right"))
    return text + "\n" + _totals_line(a) + "\n"


def _json_doc(a: Analysis) -> dict[str, Any]:
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


def _printout(gm: fx.GraphModule, fmt: str) -> str:
    if fmt == "code":
        return "\n".join(line.rstrip() for line in gm.code.strip().splitlines()) + "\n"
    if fmt == "fx":
        return str(gm.graph).rstrip("\n") + "\n"
    return format_graph(gm) + "\n"


# --------------------------------------------------------------------------------------------
# Graphviz

_FILL = {"placeholder": "#e8e8e8", "output": "#e8e8e8", "call_module": "#dbe9f6", "get_attr": "#eadcf2"}
_DIFF_FILL = {"added": "#c6efce", "changed": "#ffe3a3", "removed": "#f8d0d4"}


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(n: NodeInfo) -> str:
    lines = [n.name]
    if n.op == "placeholder":
        lines.append("input")
    elif n.op == "call_module" and ": " in n.target:
        path, _, module = n.target.partition(": ")
        lines.append(_clip(module if path.replace(".", "_") == n.name else n.target, 60))
    elif n.op != "output":
        lines.append(_clip(n.target, 60))
    if n.shape is not None:
        lines.append(f"{n.shape_text()} {n.dtype}".strip())
    if n.params:
        lines.append(f"{n.params:,} params")
    return "\n".join(lines)


def _dot(a: Analysis, diff: GraphDiff | None = None, before: Analysis | None = None) -> str:
    title = type(a.gm).__name__
    if diff is not None:
        title += f" — diff {diff.summary()} (green added, orange changed, red dashed removed)"
    out = [
        f"digraph {_q(type(a.gm).__name__)} {{",
        f"  graph [rankdir=TB, label={_q(title)}, labelloc=t, fontname=Helvetica, fontsize=12];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10, fillcolor="#fdf5d3"];',
        "  edge [arrowsize=0.7];",
    ]
    changes = {}
    if diff is not None:
        changes.update({name: "added" for name in diff.added})
        changes.update({name: "changed" for name in diff.changed})
    for n in a.nodes:
        attrs = [f"label={_q(_label(n))}"]
        change = changes.get(n.name)
        if change:
            attrs.append(f'fillcolor="{_DIFF_FILL[change]}"')
            attrs.append('penwidth=2, color="#c05a00"' if change == "changed" else 'penwidth=2, color="#2e7d32"')
        elif n.op in _FILL:
            attrs.append(f'fillcolor="{_FILL[n.op]}"')
        out.append(f"  {_q(n.name)} [{', '.join(attrs)}];")
    for n in a.nodes:
        for src in n.inputs:
            out.append(f"  {_q(src)} -> {_q(n.name)};")
    if diff is not None and before is not None:
        gone = set(diff.removed)
        for n in before.nodes:
            if n.name in gone:
                out.append(f"  {_q(n.name)} [label={_q(_label(n))}, style=\"rounded,filled,dashed\", "
                           f"fillcolor=\"{_DIFF_FILL['removed']}\", color=\"#b71c1c\", fontcolor=\"#b71c1c\"];")
        for n in before.nodes:
            for src in n.inputs:
                if n.name in gone or src in gone:
                    out.append(f"  {_q(src)} -> {_q(n.name)} [style=dashed, color=\"#b71c1c\"];")
    out.append("}")
    return "\n".join(out) + "\n"


def _graphviz(source: str, fmt: str) -> bytes:
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


# --------------------------------------------------------------------------------------------
# diffs


def _diff_text(before: Analysis, after: Analysis, fmt: str) -> str:
    from tabulate import tabulate

    diff = diff_signatures(signatures(before.gm), signatures(after.gm))
    lines = [f"graph diff: {diff.summary()} (nodes added, removed, changed)"]
    if diff.empty:
        lines.append("no node changed")
    else:
        rows = [[change, node, b, a] for change, node, b, a in diff.rows()]
        lines.append(tabulate(rows, headers=["change", "node", "before", "after"], tablefmt="simple",
                              disable_numparse=True))
    if fmt == "table":
        lines.append(
            f"parameters {before.params:,} → {after.params:,}; weights and buffers {_size(before.weight_bytes)} → "
            f"{_size(after.weight_bytes)}; FLOPs {before.flops:,} → {after.flops:,}"
        )
    printout = "code" if fmt == "code" else "fx" if fmt == "fx" else "graph"
    udiff = list(difflib.unified_diff(
        _printout(before.gm, printout).splitlines(), _printout(after.gm, printout).splitlines(),
        fromfile=f"before ({printout})", tofile=f"after ({printout})", lineterm="",
    ))
    lines.append("")
    lines.extend(udiff if udiff else [f"the {printout} printouts are identical"])
    return "\n".join(lines) + "\n"


def _mark(after: Analysis, diff: GraphDiff) -> None:
    for name in diff.added:
        after.by_name[name].change = "added"
    for name in diff.changed:
        after.by_name[name].change = "changed"


# --------------------------------------------------------------------------------------------
# render


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
    added / removed / changed nodes and a unified diff of the printouts (of ``code`` for code,
    of the FX IR for fx, of fxlab's printout otherwise); ``json`` adds ``diff`` and ``before``;
    ``dot`` / ``svg`` / ``png`` draw the new graph with added nodes green, changed nodes orange
    and removed nodes red and dashed.

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
        from .errors import did_you_mean

        raise ExportError(f"unknown format {format!r}{did_you_mean(format, FORMATS)}; formats: {', '.join(FORMATS)}")
    after_gm = _as_graph_module(gm)
    before_gm = _as_graph_module(diff_against) if diff_against is not None else None
    if format in ("code", "graph", "fx") and before_gm is None:
        return _printout(after_gm, format)
    after = analyze(after_gm, example_input)
    before = analyze(before_gm, example_input) if before_gm is not None else None
    if format in ("table", "code", "graph", "fx"):
        return _table(after) if before is None else _diff_text(before, after, format)
    diff = diff_signatures(signatures(before.gm), signatures(after.gm)) if before is not None else None
    if diff is not None:
        _mark(after, diff)
    if format == "json":
        doc = _json_doc(after)
        if before is not None and diff is not None:
            doc["diff"] = {
                "summary": diff.summary(),
                "added": diff.added,
                "removed": diff.removed,
                "changed": [{"node": n, "before": diff.before[n], "after": diff.after[n]} for n in diff.changed],
                "unified_diff": "\n".join(difflib.unified_diff(
                    format_graph(before.gm).splitlines(), format_graph(after.gm).splitlines(),
                    "before", "after", lineterm="")),
            }
            doc["before"] = _json_doc(before)
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    source = _dot(after, diff, before)
    if format == "dot":
        return source
    data = _graphviz(source, format)
    return data.decode("utf-8") if format == "svg" else data

