"""What ``verify`` found: the baseline, one ``Step`` per pass, and the ``Report`` (table, summary, JSON)."""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from .._util import write_atomic
from ..core import GraphDiff
from ..pipeline.execute import sensitivity_text

__all__ = ["JSON_FORMAT", "Baseline", "Report", "Step"]

#: The ``format`` field of the JSON report.
JSON_FORMAT = "fxlab.verify/1"

_TABLE_HEADERS = ["step", "pass", "kind", "accuracy", "retrained", "Δ vs baseline", "max abs diff", "agreement", "sites",
                  "verdict"]


@dataclass
class Baseline:
    """The input model's test accuracy (percent) and mean cross-entropy loss; what in it is not finite:
    ``nonfinite_parameters`` (``"layer2.weight: 3 NaN values"``) and ``nonfinite_outputs`` (``"NaN"``)."""

    accuracy: float
    loss: float
    nonfinite_parameters: list[str] = field(default_factory=list)
    nonfinite_outputs: str | None = None

    @property
    def problem(self) -> str | None:
        """One phrase saying what in the input model is NaN or inf, or ``None`` when nothing is."""
        parts = []
        if self.nonfinite_parameters:
            shown = ", ".join(self.nonfinite_parameters[:4]) + (" …" if len(self.nonfinite_parameters) > 4 else "")
            parts.append(f"its parameters hold NaN/inf ({shown})")
        if self.nonfinite_outputs:
            parts.append(f"its outputs contain {self.nonfinite_outputs}")
        return "; ".join(parts) or None

    def to_dict(self) -> dict[str, Any]:
        """The baseline as plain data (the ``baseline`` entry of the JSON report)."""
        return {"accuracy": _num(self.accuracy), "loss": _num(self.loss),
                "nonfinite_parameters": list(self.nonfinite_parameters), "nonfinite_outputs": self.nonfinite_outputs}


@dataclass
class Step:
    """One pipeline step: what the pass did, the numbers before and after, and its verdict.

    Accuracies are percentages on the 10 000 MNIST test images. ``max_abs_diff`` and ``agreement``
    (percent of images whose argmax class is unchanged) compare the outputs after the pass with the
    outputs before it on the first ``CHECK_IMAGES`` test images; they are None when the output shapes
    differ. ``reference_accuracy`` is the accuracy of the model the step started from. ``diff`` is the
    graph diff ``fxlab.apply`` recorded for the pass (nodes added, removed, replaced, changed).
    """

    index: int
    pass_text: str
    name: str
    kind: str
    accuracy: float
    loss: float
    delta: float
    max_abs_diff: float | None
    agreement: float | None
    retrained_accuracy: float | None
    reference_accuracy: float
    budget: float | None
    seconds: float
    pass_seconds: float
    diff: GraphDiff
    before: str
    after: str
    ok: bool
    reason: str
    retrain_history: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_outputs: str | None = None  # "NaN", "inf" or "NaN and inf" when the step's outputs hold them
    #: per-node numerics (``{"name", "counterpart", "max_abs_diff", "rel_error", "sqnr_db"}``, graph order;
    #: None when not computed) and the node that explains the step's difference (see ``verification.nodes``)
    nodes: list[dict[str, Any]] | None = None
    first_divergence: str | None = None
    #: the pass's site records (``PassRecord.rewritten`` / ``.skipped``); None: the pass reports no sites
    rewritten: list[str] | None = None
    skipped: list[tuple[str, str]] | None = None
    #: what a pass that chooses its sites by measuring measured (``PassRecord.sensitivity``), else None
    sensitivity: dict[str, Any] | None = None
    #: quantization-aware training of this step (``{"epochs", "plain_accuracy", "qat_accuracy", "budget",
    #: "recovered"}``: accuracy of the plain conversion, after QAT, the share of the lost points won back); None: none
    qat: dict[str, Any] | None = None
    # the graphs before and after the step, for the HTML report (not in the JSON)
    graph_before: fx.GraphModule | None = field(default=None, repr=False, compare=False)
    graph_after: fx.GraphModule | None = field(default=None, repr=False, compare=False)

    @property
    def final_accuracy(self) -> float:
        """The accuracy the next step starts from: retrained when the step retrained, else after the pass."""
        return self.retrained_accuracy if self.retrained_accuracy is not None else self.accuracy

    @property
    def verdict(self) -> str:
        """``ok`` or ``FAIL``, then the reason (a failing step names its first divergent node)."""
        text = ("ok" if self.ok else "FAIL") + (f": {self.reason}" if self.reason else "")
        if not self.ok and self.first_divergence:
            text += f"; first divergence: {self.first_divergence}"
        return text

    @property
    def sites(self) -> str:
        """``"2 rewritten, 1 left alone"``, or ``"unknown"`` for a pass that reports no sites."""
        if self.rewritten is None:
            return "unknown"
        return f"{len(self.rewritten)} rewritten, {len(self.skipped or [])} left alone"

    def sites_text(self) -> str:
        """What the pass rewrote and left alone (and why), one line each; ``sites: unknown`` if it does not say."""
        if self.rewritten is None:
            return "sites: unknown (the pass reports no site records)"
        lines = [f"rewrote: {', '.join(self.rewritten) or '(nothing)'}"]
        lines += [f"left alone: {node}: {reason}" for node, reason in self.skipped or []]
        if self.sensitivity:
            lines.append(f"sensitivity: {sensitivity_text(self.sensitivity)}")
        return "\n".join(lines)

    def nodes_text(self) -> str:
        """The per-node table of this step: node, its counterpart, max abs diff, relative error, SQNR."""
        from tabulate import tabulate

        title = f"step {self.index}: {self.pass_text} ({self.kind}): per-node numerics"
        if self.nodes is None:
            return f"{title}\nnot computed"
        rows = [[r["name"], r["counterpart"], fmt_diff(r["max_abs_diff"]), fmt_diff(r["rel_error"]),
                 _fmt_db(r["sqnr_db"]) if r["max_abs_diff"] is not None else "nan", "◀ first divergence" if r["name"] == self.first_divergence else ""]
                for r in self.nodes]
        table = tabulate(rows, headers=["node", "before", "max abs diff", "rel error", "SQNR dB", ""],
                         tablefmt="simple", disable_numparse=True)
        return f"{title}\n{'=' * len(title)}\n{table if rows else '(no node has a counterpart)'}"

    def diff_text(self) -> str:
        """The graph diff of this step: a node table (removed / replaced / changed / added) and a unified diff."""
        from tabulate import tabulate

        d = self.diff
        title = (f"step {self.index}: {self.pass_text} ({self.kind}): nodes {len(d.added)} added, "
                 f"{len(d.removed)} removed, {len(d.changed)} changed")
        if d.replaced:
            title += f", {len(d.replaced)} replaced"
        lines = [title, "=" * len(title), self.sites_text()]
        if d.empty:
            lines.append("graph unchanged")
            return "\n".join(lines)
        lines.append(tabulate(d.rows(), headers=["change", "node", "before", "after"], tablefmt="simple"))
        lines.append("")
        lines.extend(
            difflib.unified_diff(self.before.splitlines(), self.after.splitlines(), "before", "after", lineterm="")
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The step as plain data (the ``steps`` entries of the JSON report)."""
        return {
            "index": self.index,
            "pass": self.pass_text,
            "name": self.name,
            "kind": self.kind,
            "accuracy": _num(self.accuracy),
            "loss": _num(self.loss),
            "delta": _num(self.delta),
            "max_abs_diff": _num(self.max_abs_diff),
            "agreement": _num(self.agreement),
            "retrained_accuracy": _num(self.retrained_accuracy),
            "reference_accuracy": _num(self.reference_accuracy),
            "budget": _num(self.budget),
            "ok": self.ok,
            "reason": self.reason,
            "nonfinite_outputs": self.nonfinite_outputs,
            "nodes": self.nodes,
            "first_divergence": self.first_divergence,
            "rewritten": list(self.rewritten) if self.rewritten is not None else None,
            "skipped": [[n, r] for n, r in self.skipped] if self.skipped is not None else None,
            "sensitivity": _plain(self.sensitivity),
            "qat": {k: _num(v) if isinstance(v, float) else v for k, v in self.qat.items()} if self.qat else None,
            "seconds": self.seconds,
            "pass_seconds": self.pass_seconds,
            "diff": {"added": self.diff.added, "removed": self.diff.removed, "changed": self.diff.changed,
                     "replaced": self.diff.replaced},
            "before": self.before,
            "after": self.after,
            "retrain_history": [{k: _num(v) if isinstance(v, float) else v for k, v in e.items()}
                                for e in self.retrain_history],
        }


@dataclass
class Report:
    """What ``verify`` found: the baseline, one ``Step`` per pass, and whether every contract held.

    ``table()`` and ``diffs()`` format it for people, ``to_json()`` for tools, ``plot(path)`` draws it.
    ``model`` is the final ``GraphModule`` (after the last step, retrained where a step retrained).
    """

    model_name: str
    pipeline: str
    device: str
    baseline: Baseline
    steps: list[Step]
    tolerance: float
    floor: float
    retrain_epochs: float
    check_images: int
    seconds: float
    model: fx.GraphModule | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when every step's contract held (and the input model is finite)."""
        return all(s.ok for s in self.steps) and self.baseline.problem is None

    @property
    def failures(self) -> list[Step]:
        """The steps whose contract failed."""
        return [s for s in self.steps if not s.ok]

    def table(self, tablefmt: str = "simple") -> str:
        """One row for the baseline and one per step: accuracy, Δ vs baseline, max abs diff, agreement, verdict."""
        from tabulate import tabulate

        base = "baseline" if self.baseline.problem is None else f"baseline: NOT FINITE: {self.baseline.problem}"
        rows: list[list[Any]] = [[0, f"(input: {self.model_name})", "", f"{self.baseline.accuracy:.2f}%", "", "", "", "", "",
                                  base]]
        rows += [_row(s) for s in self.steps]
        return tabulate(rows, headers=_TABLE_HEADERS, tablefmt=tablefmt, disable_numparse=True)

    def qat_text(self) -> str:
        """One line per step trained through its quantizer: plain conversion, after QAT, budget ("" if none)."""
        lines = []
        for s in self.steps:
            q = s.qat
            if not q:
                continue
            won = f", {100 * q['recovered']:.0f}% of the lost points won back" if q.get("recovered") is not None else ""
            budget = f"budget {q['budget']:g}" if q.get("budget") is not None else "no budget"
            lines.append(f"step {s.index} {s.pass_text}: plain conversion {q['plain_accuracy']:.2f}%, after "
                         f"{q['epochs']:g} QAT epoch(s) {q['qat_accuracy']:.2f}% (start {s.reference_accuracy:.2f}%, "
                         f"{budget}){won}")
        return ("quantization-aware training:\n" + "\n".join(lines)) if lines else ""

    def nodes_text(self) -> str:
        """The per-node table of every step, in order."""
        return "\n\n".join(s.nodes_text() for s in self.steps)

    def diffs(self) -> str:
        """The graph diff of every step, in order."""
        return "\n\n".join(s.diff_text() for s in self.steps)

    def summary(self) -> str:
        """One line: every contract held, or which steps failed."""
        n = len(self.steps)
        problem = self.baseline.problem
        if problem:
            return f"FAIL: the input model is not finite: {problem}; fix or retrain it before verifying passes"
        if self.ok:
            what = "the contract holds" if n == 1 else f"all {n} contracts hold"
            return f"ok: {what} on {self.device} ({self.seconds:.1f}s)"
        bad = ", ".join(f"step {s.index} ({s.name})" for s in self.failures)
        nan = [s.index for s in self.failures if s.nonfinite_outputs]
        why = f" (outputs contain NaN/inf after step {', '.join(map(str, nan))})" if nan else ""
        return f"FAIL: {len(self.failures)} of {n} contracts failed: {bad}{why}"

    def text(self, diffs: bool = True, nodes: bool = False) -> str:
        """What the CLI prints: a header, the table, the summary line, then (``nodes``) every step's
        per-node table, then (``diffs``) every step's graph diff."""
        header = (
            f"verify {self.model_name} on {self.device}: {self.pipeline}\n"
            f"baseline {self.baseline.accuracy:.2f}% (loss {self.baseline.loss:.4f}); exact: max abs diff ≤ "
            f"{self.tolerance:g} on {self.check_images} test images; changes: {self.retrain_epochs:g} retraining "
            f"epoch(s), floor baseline − {self.floor:g}"
        )
        parts = [header, self.table(), self.summary()]
        qat = self.qat_text()
        if qat:
            parts.append(qat)
        if nodes:
            parts.append(self.nodes_text())
        if diffs:
            parts.append(self.diffs())
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.text()

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (accuracies in percent)."""
        return {
            "format": JSON_FORMAT,
            "model": self.model_name,
            "pipeline": self.pipeline,
            "device": self.device,
            "baseline": self.baseline.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "ok": self.ok,
            "tolerance": self.tolerance,
            "floor": self.floor,
            "retrain_epochs": self.retrain_epochs,
            "check_images": self.check_images,
            "seconds": self.seconds,
            "torch_version": torch.__version__,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text: ``{"device", "baseline": {"accuracy", "loss"}, "steps": [...], "ok", ...}``."""
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``to_json()`` to ``path`` atomically (a temporary file, then a rename)."""
        return write_atomic(path, self.to_json() + "\n")

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Draw accuracy per step and the training curves of any retraining to a PNG at ``path`` (atomically).

        Needs matplotlib (``pip install 'fxlab[plot]'``).
        """
        from .plot import plot_report

        return plot_report(self, path)

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as one self-contained HTML page to ``path`` (atomically); see :mod:`fxlab.verification.html`."""
        from .html import report_html

        return write_atomic(path, report_html(self))


def _row(s: Step) -> list[Any]:
    """A step's row of the table."""
    return [
        s.index,
        s.pass_text,
        s.kind,
        f"{s.accuracy:.2f}%",
        f"{s.retrained_accuracy:.2f}%" if s.retrained_accuracy is not None else "",
        f"{s.delta:+.2f}",
        fmt_diff(s.max_abs_diff),
        f"{s.agreement:.2f}%" if s.agreement is not None else "n/a",
        s.sites,
        s.verdict,
    ]


def _num(value: float | None) -> float | None:
    """A float for JSON: None stays None, and so do NaN and infinities (JSON has no such numbers)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _plain(value: Any) -> Any:
    """``value`` (dicts, lists, numbers) with every float through :func:`_num`, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return _num(value) if isinstance(value, float) else value


def _fmt_db(value: float | None) -> str:
    """SQNR for people: ``inf`` (identical; JSON ``null``) or ``42.1``."""
    return "inf" if value is None else f"{value:.1f}"


def fmt_diff(value: float | None) -> str:
    """A max abs diff for people: ``n/a``, ``0``, ``nan`` or ``1.23e-05``."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return "0" if value == 0 else f"{value:.2e}"
