"""``apply``: trace a model, run passes over it, check each step, and record what each did."""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import numbers
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from .._util import child_property, module_call
from ..core import GraphDiff, diff_signatures, origin_map, signatures, trace
from ..core.provenance import before_pass, track
from ..errors import PassError
from . import sites
from .base import Pass
from .text import as_passes

log = logging.getLogger(__name__)


@dataclass
class PassRecord:
    """What one pass did to the graph: time, node counts, its graph diff, and its sites.

    ``rewritten`` lists the nodes the pass rewrote and ``skipped`` the ``(node, reason)`` it left
    alone, as the pass reported them (:mod:`fxlab.pipeline.sites`); both are ``None`` for a pass
    that reports no sites (its sites are unknown). ``sensitivity`` is what a pass that chooses its
    sites by measuring (``quantize-linear{max_drop=...}``) measured, else ``None``.
    """

    name: str
    kind: str
    seconds: float
    nodes_before: int
    nodes_after: int
    added: int
    removed: int
    changed: int
    text: str = ""
    replaced: int = 0
    diff: GraphDiff | None = field(default=None, repr=False, compare=False)  # the graph diff of this pass
    rewritten: list[str] | None = None
    skipped: list[tuple[str, str]] | None = None
    sensitivity: dict[str, Any] | None = None

    def sites_text(self) -> str:
        """``"2 rewritten, 1 left alone"``, or ``"unknown"`` for a pass that reports no sites."""
        if self.rewritten is None:
            return "unknown"
        return f"{len(self.rewritten)} rewritten, {len(self.skipped or [])} left alone"

    def row(self) -> list[Any]:
        return [self.name, self.kind, f"{self.seconds * 1000:.2f}", self.nodes_before, self.nodes_after,
                self.added, self.removed, self.replaced, self.changed, self.sites_text()]


RECORD_HEADERS = ["pass", "kind", "ms", "nodes before", "nodes after", "added", "removed", "replaced", "changed",
                  "sites"]


class PassRecords(list):
    """The records of one ``apply`` run; ``table()`` formats them, ``left_alone()`` says what was skipped."""

    def table(self, fmt: str = "simple") -> str:
        from tabulate import tabulate

        text = tabulate([r.row() for r in self], headers=RECORD_HEADERS, tablefmt=fmt)
        notes = "\n".join(t for t in (self.left_alone(), self.sensitivity()) if t)
        return text + ("\n" + notes if notes else "")

    def left_alone(self) -> str:
        """One line per site a pass left alone: ``pass: node: reason``."""
        return "\n".join(f"{r.name}: {node}: {reason}" for r in self for node, reason in (r.skipped or []))

    def sensitivity(self) -> str:
        """One line per pass that measured to choose its sites: the ranking and the resulting drop."""
        return "\n".join(f"{r.name}: {sensitivity_text(r.sensitivity)}" for r in self if r.sensitivity)


def sensitivity_text(s: dict[str, Any]) -> str:
    """``max_drop=0.5 on 10000 images: ranking layer1 -86.30 (kept), layer3 -0.04, layer2 -0.01;
    97.90% → 97.86% (drop 0.04)``: a ``PassRecord.sensitivity`` in one line."""
    ranking = ", ".join(f"{r['node']} {r['change']:+.2f}{' (kept)' if r['kept'] else ''}" for r in s["ranking"])
    return (f"max_drop={s['max_drop']:g} on {s['images']} images: ranking {ranking or '(no layer)'}; "
            f"{s['float_accuracy']:.2f}% → {s['accuracy']:.2f}% (drop {s['drop']:.2f})")


def records(gm: fx.GraphModule) -> PassRecords:
    """The pass records ``apply`` attached to ``gm`` (empty if none)."""
    return gm.meta.get("fxlab.records", PassRecords())


def apply(
    model: nn.Module,
    passes: str | Pass | Iterable[Pass],
    *,
    inplace: bool = False,
    limit: int | None = None,
) -> fx.GraphModule:
    """Trace ``model`` (if needed) and run ``passes`` over it; return the new ``GraphModule``.

    ``passes`` is a list of passes or pipeline text. The caller's model is never mutated
    unless ``inplace=True`` (then the result shares its submodules and parameters, and a
    ``GraphModule`` input is transformed itself). After every pass the graph is linted and
    recompiled; a pass that raises or leaves an invalid graph raises ``PassError`` naming the
    pass, and nothing is half-applied. ``fxlab.records(result).table()`` shows what each pass did.
    ``limit`` (None, or a whole number ≥ 0; 0 rewrites nothing) lets each pass rewrite at most that
    many sites (passes that report their sites, see :mod:`fxlab.pipeline.sites`); bisection uses it.

    >>> import fxlab, torch
    >>> from fxlab.passes import InsertRelu
    >>> from fxlab.models import build
    >>> gm = fxlab.apply(build("mymodule"), [InsertRelu("layer3")])
    >>> [n.name for n in gm.graph.nodes][-2:]
    ['relu_2', 'output']
    """
    pipeline = as_passes(passes)
    if not isinstance(model, nn.Module):
        raise PassError(f"apply expects an nn.Module or GraphModule, got {type(model).__name__}")
    _check_limit(limit)
    with _gc_paused():
        return _apply(model, pipeline, inplace, limit)


def _check_limit(limit: object) -> None:
    """``limit`` is None (no limit) or a whole number ≥ 0 (0: each pass rewrites nothing)."""
    if limit is None or (isinstance(limit, numbers.Integral) and not isinstance(limit, bool) and limit >= 0):
        return
    raise PassError(f"limit={limit!r}: give a whole number of sites ≥ 0 that each pass may rewrite, or None")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector, and restore its state exactly afterwards.

    Copying, tracing and rewriting a model of n layers creates O(n) container objects that stay
    alive (the new graph and its modules). With the collector on, every 700 new objects start a
    collection, and whenever the survivors grow the old generation by a quarter a full collection
    walks every object of the process (about 180 000 once torch is imported): on a 4 000-layer MLP that
    is 2 or 3 full collections per ``apply``, 20–30 % of its CPU time, and whether a call gets 2
    or 3 depends on what ran before it. Paused, none runs inside ``apply``; the objects it made
    join the old generation together afterwards, so the process pays at most one full
    collection for them, later. ``apply`` itself leaves little cyclic garbage (the tracer's).
    The collector is re-enabled only if it was enabled, also when a pass raises.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _apply(model: nn.Module, pipeline: list[Pass], inplace: bool, limit: int | None) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        gm = model if inplace else copy.deepcopy(model)
    else:
        gm = trace(model if inplace else copy.deepcopy(model))
    history = PassRecords(gm.meta.get("fxlab.records", []))
    base = gm.meta.get("fxlab.pipeline", "")
    texts = []
    before, before_origins = signatures(gm), origin_map(gm)
    for p in pipeline:
        snapshot = _snapshot(gm) if inplace else None
        marks = before_pass(gm)
        sites.take(gm)  # whatever an earlier run left: this pass reports afresh
        sites.take_measured(gm)
        sites.set_limit(gm, limit)
        start = time.perf_counter()
        try:
            result = p(gm)
            new = result.graph_module
            if not isinstance(new, fx.GraphModule):
                raise PassError(f"{p.label()}: returned {type(new).__name__}, not a GraphModule")
            _check(p, new)
        except Exception as exc:
            if snapshot is not None:
                _restore(gm, snapshot)
            if isinstance(exc, PassError):
                raise
            raise PassError(f"pass {p.label()!r} failed: {type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - start
        rewritten, skipped = sites.take(new)
        sensitivity, replay = sites.take_measured(new)
        sites.set_limit(new, None)
        track(marks, new, p.label())
        after, after_origins = signatures(new), origin_map(new)
        diff = diff_signatures(before, after, before_origins, after_origins)
        history.append(PassRecord(p.label(), p.kind, seconds, len(before), len(diff.after),
                                  len(diff.added), len(diff.removed), len(diff.changed), str(p),
                                  len(diff.replaced), diff, rewritten, skipped, sensitivity))
        texts.append(str(p) if replay is None else replay)
        log.info("%s: %s in %.1f ms", p.label(), diff.summary(), seconds * 1000)
        # nothing changes the printout or the origins between two passes: the next pass's "before"
        gm, before, before_origins = new, after, after_origins
    gm.meta["fxlab.records"] = history
    gm.meta["fxlab.pipeline"] = ",".join(t for t in [base, *texts] if t)
    _call_directly(gm)
    return gm


def _call_directly(gm: fx.GraphModule) -> None:
    """Calls of ``gm`` go straight to its forward (:func:`fxlab._util.module_call`: through
    ``nn.Module.__call__`` when a hook or a tracer needs it), and its code finds its children on
    its class.

    torch.fx routes every call of a recompiled GraphModule through an error handler
    (``_WrappedCall``) that prints the generated code to stderr when the forward raises; it costs
    a few µs a call, about a tenth of a batch-1 forward of a small MLP. Exceptions are unchanged
    and their tracebacks still show the generated line. The generated code reads each child as
    ``self.<name>``, through ``Module.__getattr__`` (~0.8 µs a lookup, a tenth of a batch-1
    static forward over four lookups); a property per top-level child on the class
    (:func:`fxlab._util.child_property`) finds it there first. Each GraphModule has a class of its
    own, so only ``gm`` is affected; ``gm.recompile()`` brings torch's wrapper back, and a child
    added later is found through ``Module.__getattr__`` as before.
    """
    cls = type(gm)
    cls.__call__ = module_call
    for name in gm._modules:
        if name not in cls.__dict__ and not hasattr(fx.GraphModule, name):
            setattr(cls, name, child_property(name))


def _check(p: Pass, gm: fx.GraphModule) -> None:
    try:
        gm.graph.lint()
        gm.recompile()
    except Exception as exc:
        raise PassError(f"pass {p.label()!r} left an invalid graph: {exc}") from exc


def _snapshot(gm: fx.GraphModule) -> tuple[fx.Graph, dict[nn.Module, dict[str, Any]], dict[str, Any]]:
    graph = copy.deepcopy(gm.graph)
    tree = {m: dict(m._modules) for m in gm.modules()}
    return graph, tree, dict(gm.__dict__)


def _restore(gm: fx.GraphModule, snapshot: tuple[fx.Graph, dict[nn.Module, dict[str, Any]], dict[str, Any]]) -> None:
    graph, tree, attrs = snapshot
    for module, children in tree.items():
        module._modules.clear()
        module._modules.update(children)
    gm.__dict__.update(attrs)
    gm.graph = graph
