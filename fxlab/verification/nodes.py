"""Per-node numerics: where in the graph a step's outputs start to differ.

Every node of the graph after a pass that has a *counterpart* in the graph before it is compared
on the check images. The counterpart of a node standing for traced names ``(t1, ..., tk)``
(``node.meta["fxlab.from"]``, see :mod:`fxlab.core.provenance`) is the node before the pass whose
own provenance ends with ``tk``: the node that computes the same value (a fused ``layer1`` standing
for ``(layer1, relu)`` is compared with the ``relu`` before fusion). Nodes standing for nothing (an
inserted activation) are skipped, and so are outputs that are not tensors or whose shapes differ.

>>> import torch, fxlab
>>> from fxlab.passes import InsertRelu
>>> from fxlab.models import build
>>> model = build("mymodule")
>>> before, after = fxlab.trace(model), fxlab.apply(model, [InsertRelu("layer3")])
>>> rows = node_numerics(before, after, torch.randn(8, 1, 28, 28))
>>> [r.name for r in rows][:3], rows[0].max_abs_diff
(['flatten', 'layer1', 'relu'], 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from ..core.provenance import origins

__all__ = ["NodeNumerics", "capture", "counterparts", "first_divergence", "node_numerics"]


@dataclass
class NodeNumerics:
    """One node after the pass against its counterpart before it, on the check images.

    ``rel_error`` is ‖after − before‖ / ‖before‖ (0 when both are zero); ``sqnr_db`` is
    10·log10(‖before‖² / ‖after − before‖²), ``inf`` when they are equal.
    """

    name: str
    counterpart: str
    max_abs_diff: float
    rel_error: float
    sqnr_db: float

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "max_abs_diff", "rel_error", "sqnr_db"}`` (non-finite numbers as ``None``)."""
        return {"name": self.name, "counterpart": self.counterpart, "max_abs_diff": _num(self.max_abs_diff),
                "rel_error": _num(self.rel_error), "sqnr_db": _num(self.sqnr_db)}


def counterparts(before: fx.GraphModule, after: fx.GraphModule) -> dict[str, str]:
    """Node after → its counterpart before (by the last traced name each stands for), in graph order.

    One refinement: a node that stands for nothing (an inserted activation) adds nothing to the
    provenance of a node that absorbs it, so when the counterpart's only user stands for nothing and
    is gone after the pass, that user is the counterpart (a fused ``layer2`` that took in a ReLU
    inserted after ``layer2`` computes the ReLU's value, not ``layer2``'s).
    """
    by_last: dict[str, fx.Node] = {}
    for n in before.graph.nodes:
        if n.op == "output":
            continue
        names = origins(n)
        if names:
            by_last.setdefault(names[-1], n)
    kept = {n.name for n in after.graph.nodes}
    found = {}
    for n in after.graph.nodes:
        if n.op in ("output", "placeholder"):
            continue
        names = origins(n)
        if not names or names[-1] not in by_last:
            continue
        other = by_last[names[-1]]
        while len(other.users) == 1:
            (user,) = other.users
            if origins(user) or user.name in kept or user.op == "output":
                break
            other = user
        found[n.name] = other.name
    return found


class _Capture(fx.Interpreter):
    """Runs a graph and keeps a float32 copy of the tensor values of the named nodes."""

    def __init__(self, gm: fx.GraphModule, names: Iterable[str]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.wanted = set(names)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.name in self.wanted and isinstance(result, torch.Tensor) and result.is_floating_point():
            self.values[n.name] = result.detach().float().clone()
        return result


def capture(gm: fx.GraphModule, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The values of the nodes ``names`` of ``gm`` on ``x`` (one run; float tensors only, float32 copies)."""
    interp = _Capture(gm, names)
    with torch.inference_mode():
        interp.run(x)
    return interp.values


def compare_values(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float, float]:
    """(max abs diff, relative error, SQNR in dB) of ``after`` against ``before`` (same shape, float32)."""
    if torch.equal(before, after):
        return 0.0, 0.0, math.inf
    diff = after - before
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    noise = float(torch.linalg.vector_norm(diff))
    signal = float(torch.linalg.vector_norm(before))
    if math.isnan(noise) or math.isnan(max_abs):
        return math.nan, math.nan, math.nan
    rel = noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)
    if noise == 0:
        sqnr = math.inf
    elif signal == 0:
        sqnr = -math.inf
    else:
        sqnr = 20 * math.log10(signal / noise)
    return max_abs, rel, sqnr


def node_numerics(before: fx.GraphModule, after: fx.GraphModule, x: torch.Tensor) -> list[NodeNumerics]:
    """Every node of ``after`` with a counterpart in ``before``, compared on ``x``, in graph order."""
    pairs = counterparts(before, after)
    if not pairs:
        return []
    old = capture(before, x, set(pairs.values()))
    new = capture(after, x, pairs)
    rows = []
    for name, other in pairs.items():
        a, b = old.get(other), new.get(name)
        if a is None or b is None or a.shape != b.shape:
            continue
        rows.append(NodeNumerics(name, other, *compare_values(a, b)))
    return rows


def first_divergence(rows: list[NodeNumerics], kind: str, tolerance: float) -> str | None:
    """The node that explains a step's difference.

    For an ``exact`` pass: the first node, in graph order, whose max abs diff exceeds ``tolerance``
    (or is NaN). For other kinds: the node with the largest relative error (None when none differs).
    """
    if kind == "exact":
        return next((r.name for r in rows if not r.max_abs_diff <= tolerance), None)
    worst = None
    for r in rows:
        if r.rel_error > 0 and (worst is None or not r.rel_error <= worst.rel_error):
            worst = r
    return worst.name if worst is not None else None


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
