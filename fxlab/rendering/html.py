"""One self-contained HTML page of a pipeline: every step's graphs side by side, matched and explained.

The page has no network needs (SVG, CSS and the one small script are inline) and opens from disk.
:func:`build_html` takes plain inputs, so that both ``python -m fxlab.show --html`` (a pipeline
applied without verification: no figures, :func:`pipeline_html`) and ``Report.write_html`` (the
figures and verdicts of ``verify``) use it::

    from fxlab.rendering.html import pipeline_html
    html = pipeline_html(build("simplenn"), "fold-batchnorm,remove-dropout,fuse-linear-relu")

The DOM contract, for tests (ours and anyone's):

- each step is an element with ``data-step="N"`` (1-based, in pipeline order);
- each drawn node is an SVG ``<g>`` with ``data-node="NAME"`` and a class ``added``, ``removed``,
  ``changed``, ``replaced`` or ``same``, inside an element with ``data-side="b"`` (before) or
  ``data-side="a"`` (after);
- clicking a node fills the step's element with ``data-detail`` with the node's name, its
  printout and its figures (and those of its counterpart on the other side).

Graphs are drawn by Graphviz's ``dot`` (all of a page's graphs in one run).
"""

from __future__ import annotations

import difflib
import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch.fx as fx
from torch import nn

from ..core import GraphDiff
from .analysis import Analysis, NodeInfo, analyze
from .graphviz import _FILL, DIFF_FILL, _label, _q, run_dot

__all__ = ["CLASSES", "HtmlStep", "build_html", "line_chart", "pipeline_html", "pipeline_steps"]

#: The classes a drawn node carries.
CLASSES = ("added", "removed", "changed", "replaced", "same")
_BORDER = {"added": "#2e7d32", "replaced": "#1a4f9c", "changed": "#c05a00", "removed": "#b71c1c"}
#: Above this many steps the page starts with every step collapsed.
OPEN_STEPS = 8


@dataclass
class HtmlStep:
    """One step of the page: the pass, its verdict and figures, and the graphs before and after it.

    ``figures`` are (label, text) pairs shown as a table (absent for ``show``). ``rewritten`` and
    ``skipped`` are the sites a pass rewrote and left alone (items: text, ``(node, reason)``
    pairs, dicts or objects with ``node`` / ``reason``). ``numbers`` maps a node of the after
    graph to its per-node figures; ``error_key`` names the one drawn as a colour scale.
    """

    index: int
    pass_text: str
    kind: str
    before: fx.GraphModule | None
    after: fx.GraphModule | None
    diff: GraphDiff
    ok: bool | None = None
    verdict: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)
    rewritten: Sequence[Any] = ()
    skipped: Sequence[Any] = ()
    numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    error_key: str = "error"


def pipeline_steps(model: nn.Module, passes: Any) -> list[HtmlStep]:
    """Apply ``passes`` to ``model`` one at a time (never mutating it); one ``HtmlStep`` per pass."""
    from ..core import trace
    from ..pipeline import apply, as_passes, records

    current = model if isinstance(model, fx.GraphModule) else trace(model)
    steps = []
    for index, p in enumerate(as_passes(passes), 1):
        new = apply(current, [p])
        record = records(new)[-1]
        steps.append(HtmlStep(
            index, str(p), p.kind, current, new, record.diff or GraphDiff(),
            rewritten=getattr(record, "rewritten", None) or (), skipped=getattr(record, "skipped", None) or (),
            numbers=getattr(record, "numbers", None) or {},
        ))
        current = new
    return steps


def pipeline_html(model: nn.Module, passes: Any, *, title: str = "", summary: Sequence[tuple[str, str]] = ()) -> str:
    """The page of ``passes`` applied to ``model`` without verification (``python -m fxlab.show --html``)."""
    steps = pipeline_steps(model, passes)
    rows = [("pipeline", ",".join(s.pass_text for s in steps)), *summary,
            ("verification", "none (fxlab.show applies the pipeline; python -m fxlab.verify --html checks it on MNIST)")]
    return build_html(title or f"fxlab: {type(model).__name__}", rows, steps)


def build_html(
    title: str,
    summary: Sequence[tuple[str, str]],
    steps: Sequence[HtmlStep],
    *,
    overall: tuple[bool, str] | None = None,
    charts: Iterable[str] = (),
    columns: Sequence[str] = (),
) -> str:
    """The page: ``summary`` rows and ``overall`` verdict at the top, then a table of the steps (with the
    figures named in ``columns``), ``charts`` (SVG text), and one collapsible section per step."""
    analyses = _analyses(steps)
    sources, keys = [], []
    for s in steps:
        b, a = analyses[id(s.before)] if s.before is not None else None, analyses[id(s.after)] if s.after is not None else None
        before_cls, after_cls = _classes(s.diff, b, a)
        for side, an, cls in (("b", b, before_cls), ("a", a, after_cls)):
            if an is not None:
                sources.append(_side_dot(an, cls, f"s{s.index}{side}_", s.numbers if side == "a" else {}, s.error_key))
                keys.append((s.index, side))
    svgs = dict(zip(keys, _run_all(sources)))
    data: dict[str, Any] = {}
    parts = []
    for s in steps:
        b = analyses[id(s.before)] if s.before is not None else None
        a = analyses[id(s.after)] if s.after is not None else None
        data[str(s.index)] = _node_data(s, b, a)
        parts.append(_step_html(s, svgs, data[str(s.index)], open_=len(steps) <= OPEN_STEPS))
    head = [_table(summary)]
    if overall is not None:
        head.insert(0, f'<div class="overall {"ok" if overall[0] else "fail"}">{_e(overall[1])}</div>')
    head.append(_overview(steps, columns))
    chart_html = "".join(charts)
    page = _template()
    for marker, text in (("@@TITLE@@", _e(title)), ("@@SUMMARY@@", "\n".join(head)),
                         ("@@CHARTS@@", f'<h2>Charts</h2><div class="charts">{chart_html}</div>' if chart_html else ""),
                         ("@@STEPS@@", "\n".join(parts)),
                         ("@@DATA@@", json.dumps(data, ensure_ascii=False).replace("</", "<\\/"))):
        page = page.replace(marker, text)
    return page


# --------------------------------------------------------------------------------------------
# graphs


def _analyses(steps: Sequence[HtmlStep]) -> dict[int, Analysis]:
    """One analysis per distinct graph (a step's after is often the next step's before)."""
    out: dict[int, Analysis] = {}
    for s in steps:
        for gm in (s.before, s.after):
            if gm is not None and id(gm) not in out:
                out[id(gm)] = analyze(gm)
    return out


def _classes(diff: GraphDiff, b: Analysis | None, a: Analysis | None) -> tuple[dict[str, str], dict[str, str]]:
    """Each node's class on the before side and on the after side."""
    before = {n.name: "same" for n in b.nodes} if b is not None else {}
    after = {n.name: "same" for n in a.nodes} if a is not None else {}
    for n in diff.removed:
        before[n] = "removed"
    for new, olds in diff.replaced.items():
        after[new] = "replaced"
        for o in olds:
            before[o] = "replaced"
    for n in diff.changed:
        before[n] = after[n] = "changed"
    for n in diff.added:
        after[n] = "added"
    return before, after


def _side_dot(an: Analysis, classes: dict[str, str], prefix: str, numbers: dict[str, dict[str, Any]],
              error_key: str) -> str:
    """Graphviz source of one side; node ``i`` gets the SVG id ``{prefix}{i}`` and its class."""
    colour = _error_colours(numbers, error_key)
    out = [f"digraph {_q(prefix)} {{", "  graph [rankdir=TB, fontname=Helvetica, fontsize=10];",
           '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10, fillcolor="#fdf5d3"];',
           "  edge [arrowsize=0.7];"]
    for i, n in enumerate(an.nodes):
        cls = classes.get(n.name, "same")
        attrs = [f"label={_q(_label(n))}", f'id="{prefix}{i}"', f'class="{cls}"']
        fill = colour.get(n.name) or DIFF_FILL.get(cls) or _FILL.get(n.op)
        if fill:
            attrs.append(f'fillcolor="{fill}"')
        if cls in _BORDER:
            attrs.append(f'penwidth=2, color="{_BORDER[cls]}"')
        if cls == "removed":
            attrs.append('style="rounded,filled,dashed"')
        out.append(f"  {_q(n.name)} [{', '.join(attrs)}];")
    out += [f"  {_q(src)} -> {_q(n.name)};" for n in an.nodes for src in n.inputs]
    out.append("}")
    return "\n".join(out)


def _run_all(sources: list[str]) -> list[str]:
    """Every source drawn to SVG by one run of ``dot``, ready to inline (no prolog, no namespaces)."""
    if not sources:
        return []
    text = run_dot("\n".join(sources) + "\n", "svg").decode("utf-8")
    svgs = [part[part.index("<svg"):] for part in text.split("<?xml")[1:]]
    if len(svgs) != len(sources):
        from ..errors import ExportError

        raise ExportError(f"Graphviz drew {len(svgs)} graphs of {len(sources)}")
    return [re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg).replace("<title>%3</title>", "") for svg in svgs]


def _tag_nodes(svg: str, prefix: str, names: list[str]) -> str:
    """``data-node`` on each node's ``<g>`` (found by the id ``_side_dot`` gave it)."""

    def tag(m: re.Match[str]) -> str:
        name = names[int(m.group(2))]
        return f'{m.group(0)} data-node="{_e(name)}"'

    return re.sub(rf'<g id="({re.escape(prefix)})(\d+)" class="node [a-z]+"', tag, svg)


def _error_colours(numbers: dict[str, dict[str, Any]], key: str) -> dict[str, str]:
    """Node → fill colour on a white → red scale of ``numbers[node][key]`` (log scale over its range)."""
    values = {n: float(v[key]) for n, v in numbers.items() if isinstance(v.get(key), (int, float))
              and math.isfinite(float(v[key]))}
    if not values:
        return {}
    logs = {n: math.log10(max(v, 1e-12)) for n, v in values.items()}
    lo, hi = min(logs.values()), max(logs.values())
    out = {}
    for n, x in logs.items():
        t = 1.0 if hi == lo else (x - lo) / (hi - lo)
        r, g, b = (round(255 + (c - 255) * t) for c in (0xD7, 0x30, 0x27))
        out[n] = f"#{r:02x}{g:02x}{b:02x}"
    return out


def _node_data(s: HtmlStep, b: Analysis | None, a: Analysis | None) -> dict[str, Any]:
    """What the script shows for a node: class, printout, figures, counterparts."""
    before_cls, after_cls = _classes(s.diff, b, a)
    peers: dict[str, list[str]] = {}
    for new, olds in s.diff.replaced.items():
        peers[new] = list(olds)
        for o in olds:
            peers.setdefault(o, []).append(new)
    out: dict[str, Any] = {}
    for side, an, cls, lines in (("b", b, before_cls, s.diff.before), ("a", a, after_cls, s.diff.after)):
        if an is None:
            continue
        out[side] = {}
        for n in an.nodes:
            item: dict[str, Any] = {"cls": cls.get(n.name, "same"), "printout": lines.get(n.name, n.name),
                                    "figures": _figures_text(n, s.numbers.get(n.name) if side == "a" else None)}
            if n.name in peers:
                item["peers"] = peers[n.name]
            out[side][n.name] = item
    return out


def _figures_text(n: NodeInfo, numbers: dict[str, Any] | None) -> str:
    parts = [f"{n.op} {n.target}".strip()]
    if n.shape is not None:
        parts.append(f"output {n.shape_text()} {n.dtype}".strip())
    if n.params:
        parts.append(f"{n.params:,} params")
    if n.flops:
        parts.append(f"{n.flops:,} FLOPs")
    if numbers:
        parts.append(", ".join(f"{k} {_fmt(v)}" for k, v in numbers.items()))
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------
# sections


def _step_html(s: HtmlStep, svgs: dict[tuple[int, str], str], nodes: dict[str, Any], *, open_: bool) -> str:
    verdict = ("" if s.ok is None else
               f'<span class="{"ok" if s.ok else "fail"}">{_e(s.verdict or ("ok" if s.ok else "FAIL"))}</span>')
    classes = "step" + (" failed" if s.ok is False else "")
    out = [f'<details class="{classes}" data-step="{s.index}" id="step-{s.index}"{" open" if open_ else ""}>',
           f'<summary><span class="num">{s.index}.</span><code>{_e(s.pass_text)}</code>'
           f'<span class="kind">{_e(s.kind)}</span><span class="mono">{_e(s.diff.summary())}</span> {verdict}</summary>',
           '<div class="body">']
    if s.figures:
        out.append(_table(s.figures))
    sides = []
    for side, caption in (("b", "before"), ("a", "after")):
        svg = svgs.get((s.index, side))
        names = list(nodes.get(side, {}))
        body = _tag_nodes(svg, f"s{s.index}{side}_", names) if svg else "<p class=none>(graph not kept)</p>"
        sides.append(f'<figure class="side" data-side="{side}"><figcaption>{caption}</figcaption>{body}</figure>')
    out.append(f'<div class="graphs">{"".join(sides)}</div>')
    out.append('<div class="detail" data-detail>Click a node for its details.</div>')
    out.append(_changes_html(s, nodes))
    if s.numbers:
        out.append(_numbers_html(s))
    out.append(_udiff_html(s.diff))
    out.append("</div></details>")
    return "\n".join(out)


def _changes_html(s: HtmlStep, nodes: dict[str, Any]) -> str:
    """What the pass rewrote and what it left alone (with reasons, when the record gives them)."""
    out = ["<h4>What the pass rewrote and left alone</h4>"]
    rows = s.diff.rows()
    if rows:
        out.append(_table(rows, ("change", "node", "before", "after"), mono=True))
    else:
        out.append("<p>The graph is unchanged.</p>")
    for label, items in (("rewritten", s.rewritten), ("left alone", s.skipped)):
        if items:
            lis = "".join(f"<li>{_e(_site_text(i))}</li>" for i in items)
            out.append(f"<p>{label}:</p><ul>{lis}</ul>")
    same = [n for n, v in nodes.get("a", {}).items() if v["cls"] == "same"]
    if same:
        out.append(f"<p>{len(same)} node(s) left as they were: <span class=mono>{_e(', '.join(same))}</span></p>")
    return "\n".join(out)


def _site_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return ": ".join(str(item[k]) for k in ("node", "site", "reason") if item.get(k) is not None) or str(item)
    if isinstance(item, tuple):
        return ": ".join(map(str, item))
    fields = [getattr(item, k, None) for k in ("node", "site", "reason")]
    return ": ".join(str(f) for f in fields if f is not None) or str(item)


def _numbers_html(s: HtmlStep) -> str:
    keys: list[str] = []
    for v in s.numbers.values():
        keys += [k for k in v if k not in keys]
    rows = [(n, *(_fmt(v.get(k)) for k in keys)) for n, v in s.numbers.items()]
    scale = (f'<p>{_e(s.error_key)} on the after graph: <span class="scale"></span> low → high (log scale)</p>'
             if _error_colours(s.numbers, s.error_key) else "")
    return "<h4>Per-node numbers</h4>" + scale + _table(rows, ("node", *keys), mono=True)


def _udiff_html(diff: GraphDiff) -> str:
    lines = list(difflib.unified_diff(list(diff.before.values()), list(diff.after.values()), "before", "after",
                                      lineterm=""))
    if not lines:
        return "<h4>Unified diff</h4><p>The printouts are identical.</p>"
    out = []
    for line in lines:
        cls = ("hunk" if line.startswith("@@") else "add" if line.startswith("+") and not line.startswith("+++")
               else "del" if line.startswith("-") and not line.startswith("---") else "")
        out.append(f'<span class="{cls}">{_e(line)}</span>' if cls else _e(line) + "\n")
    return '<h4>Unified diff</h4><pre class="udiff">' + "".join(out) + "</pre>"


def _overview(steps: Sequence[HtmlStep], columns: Sequence[str]) -> str:
    verdicts = any(s.ok is not None for s in steps)
    head = ["step", "pass", "kind", "graph diff", *columns] + (["verdict"] if verdicts else [])
    rows = []
    for s in steps:
        figures = dict(s.figures)
        row = [f'<a href="#step-{s.index}">{s.index}</a>', f"<code>{_e(s.pass_text)}</code>", _e(s.kind),
               f'<span class="mono">{_e(s.diff.summary())}</span>', *(_e(figures.get(c, "")) for c in columns)]
        if verdicts:
            row.append(f'<span class="{"ok" if s.ok else "fail"}">{_e(s.verdict)}</span>' if s.ok is not None else "")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<h2>Contracts</h2><table><tr>{th}</tr>{''.join(rows)}</table>" if verdicts else \
        f"<h2>Pipeline</h2><table><tr>{th}</tr>{''.join(rows)}</table>"


def _table(rows: Iterable[Sequence[Any]], headers: Sequence[str] | None = None, *, mono: bool = False) -> str:
    cls = ' class="mono"' if mono else ""
    th = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>" if headers else ""
    if headers is None:
        body = "".join(f"<tr><th>{_e(r[0])}</th>" + "".join(f"<td>{_e(c)}</td>" for c in r[1:]) + "</tr>" for r in rows)
    else:
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{cls}>{th}{body}</table>"


# --------------------------------------------------------------------------------------------
# charts


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def line_chart(
    title: str,
    series: Sequence[dict[str, Any]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    xticks: Sequence[tuple[float, str]] = (),
    hlines: Sequence[tuple[float, str]] = (),
    width: int = 420,
    height: int = 260,
) -> str:
    """A small SVG line chart. ``series``: dicts with ``name``, ``xs``, ``ys`` (None: no point), and optional
    ``color``, ``dashed``, ``marks`` (a list of (x, y, symbol) with symbol ``"x"`` or ``"o"``)."""
    pts = [(x, y) for s in series for x, y in zip(s["xs"], s["ys"]) if y is not None]
    pts += [(m[0], m[1]) for s in series for m in s.get("marks", ())]
    ys = [y for _, y in pts] + [y for y, _ in hlines]
    xs = [x for x, _ in pts] + [x for x, _ in xticks]
    if not pts:
        return ""
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pad = (y1 - y0) * 0.08 or (abs(y0) * 0.1 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 56, 16, 28, 44 + (14 * len(series) + 14 * len(hlines))
    plot_w, plot_h = width - left - right, height - top - 44

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * plot_h

    total_h = height + bottom - 44
    out = [f'<svg class="chart" width="{width}" height="{total_h}" viewBox="0 0 {width} {total_h}" role="img">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">{_e(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    digits = max(0, -math.floor(math.log10((y1 - y0) / 4)))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{py(y) + 4:.1f}" text-anchor="end" font-size="10">{y:.{digits}f}</text>')
    ticks = xticks or [(x0 + (x1 - x0) * i / 4, _fmt(x0 + (x1 - x0) * i / 4)) for i in range(5)]
    for x, label in ticks:
        out.append(f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" text-anchor="middle" font-size="10">{_e(label)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 30}" text-anchor="middle" font-size="11">{_e(xlabel)}</text>')
    out.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" font-size="11" '
               f'transform="rotate(-90 12 {top + plot_h / 2})">{_e(ylabel)}</text>')
    legend_y = top + plot_h + 46
    for y, label in hlines:
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#888" '
                   f'stroke-dasharray="5 4"/>')
        out.append(f'<line x1="{left}" x2="{left + 24}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="#888" '
                   f'stroke-dasharray="5 4"/><text x="{left + 30}" y="{legend_y}" font-size="11">{_e(label)}</text>')
        legend_y += 14
    for i, s in enumerate(series):
        colour = s.get("color") or _PALETTE[i % len(_PALETTE)]
        dash = ' stroke-dasharray="6 3"' if s.get("dashed") else ""
        line = [(px(x), py(y)) for x, y in zip(s["xs"], s["ys"]) if y is not None]
        if line:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in line]
        for mx, my, symbol in s.get("marks", ()):
            cx, cy = px(mx), py(my)
            if symbol == "x":
                out.append(f'<path d="M{cx - 6:.1f},{cy - 6:.1f}L{cx + 6:.1f},{cy + 6:.1f}M{cx - 6:.1f},{cy + 6:.1f}'
                           f'L{cx + 6:.1f},{cy - 6:.1f}" stroke="#d62728" stroke-width="3"/>')
            else:
                out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="white" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<line x1="{left}" x2="{left + 24}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/><text x="{left + 30}" y="{legend_y}" font-size="11">{_e(s["name"])}</text>')
        legend_y += 14
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------


def _template() -> str:
    return resources.files(__package__).joinpath("report.html.tmpl").read_text(encoding="utf-8")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"
    return "" if value is None else str(value)
