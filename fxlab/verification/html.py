"""The report as one self-contained HTML page (``Report.write_html``, ``python -m fxlab.verify --html``).

The page itself is :func:`fxlab.rendering.html.build_html`'s; this module hands it the report's
figures: the summary, each step's verdict and numbers, accuracy per step and the retraining curves
as inline SVG charts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..rendering.html import HtmlStep, build_html, line_chart

if TYPE_CHECKING:
    from .report import Report, Step

__all__ = ["report_html"]


def report_html(report: Report) -> str:
    """The HTML page of ``report``."""
    from .report import fmt_diff

    summary = [
        ("model", report.model_name),
        ("pipeline", report.pipeline),
        ("device", report.device),
        ("baseline accuracy", f"{report.baseline.accuracy:.2f}% (loss {report.baseline.loss:.4f})"),
        ("exact passes", f"max abs diff ≤ {report.tolerance:g} on {report.check_images} test images"),
        ("function-changing passes", f"{report.retrain_epochs:g} retraining epoch(s); floor baseline − {report.floor:g}"),
        ("time", f"{report.seconds:.1f}s"),
    ]
    steps = [
        HtmlStep(
            s.index, s.pass_text, s.kind, s.graph_before, s.graph_after, s.diff, ok=s.ok, verdict=s.verdict,
            figures=_figures(s, fmt_diff),
            rewritten=s.rewritten or (), skipped=s.skipped or (), numbers=_node_numbers(s), error_key="rel_error",
        )
        for s in report.steps
    ]
    return build_html(
        f"fxlab verify: {report.model_name}", summary, steps, overall=(report.ok, report.summary()),
        charts=[_accuracy_chart(report), *_retraining_charts(report)],
        columns=("accuracy", "retrained", "Δ vs baseline", "max abs diff", "agreement"),
    )


def _node_numbers(s: Step) -> dict[str, dict[str, Any]]:
    """The step's per-node numerics by node name (drawn on the after graph as a colour scale)."""
    return {row["name"]: {k: v for k, v in row.items() if k != "name"} for row in (s.nodes or [])}


def _figures(s: Step, fmt_diff: Any) -> list[tuple[str, str]]:
    rows = [("accuracy", f"{s.accuracy:.2f}% (loss {s.loss:.4f})")]
    if s.retrained_accuracy is not None:
        rows.append(("retrained", f"{s.retrained_accuracy:.2f}%"))
    rows += [
        ("accuracy before the step", f"{s.reference_accuracy:.2f}%"),
        ("Δ vs baseline", f"{s.delta:+.2f}"),
        ("max abs diff", fmt_diff(s.max_abs_diff)),
        ("agreement", f"{s.agreement:.2f}%" if s.agreement is not None else "n/a"),
    ]
    if s.budget is not None:
        rows.append(("budget", f"{s.budget:g} points"))
    rows += [("verdict", s.verdict), ("time", f"pass {s.pass_seconds * 1000:.1f} ms, step {s.seconds:.1f}s")]
    return rows


def _accuracy_chart(report: Report) -> str:
    """Accuracy of the model each step hands on; hollow: before retraining; a cross: contract failed."""
    xs = list(range(len(report.steps) + 1))
    ys = [report.baseline.accuracy] + [s.final_accuracy for s in report.steps]
    marks = [(s.index, s.accuracy, "o") for s in report.steps if s.retrained_accuracy is not None]
    marks += [(s.index, s.final_accuracy, "x") for s in report.steps if not s.ok]
    ticks = [(0, "baseline")] + [(s.index, f"{s.index}. {s.name}"[:18]) for s in report.steps]
    if len(ticks) > 12:  # a long pipeline: number the steps only
        ticks = [(x, "base" if x == 0 else str(x)) for x in xs if x % max(1, len(xs) // 10) == 0]
    return line_chart(
        f"{report.model_name}: accuracy per step ({'ok' if report.ok else 'FAIL'})",
        [{"name": "model after the step (hollow: before retraining, ✕: failed)", "xs": xs, "ys": ys,
          "marks": marks}],
        xlabel="step", ylabel="test accuracy (%)", xticks=ticks,
        hlines=[(report.baseline.accuracy - report.floor, f"floor (baseline − {report.floor:g})")],
    )


def _retraining_charts(report: Report) -> list[str]:
    """Test accuracy and train loss over each retraining, in epochs."""
    retrained = [s for s in report.steps if s.retrain_history]
    if not retrained:
        return []
    acc, loss = [], []
    for s in retrained:
        epochs = [_epoch(e) for e in s.retrain_history]
        acc.append({"name": f"{s.index}. {s.name}", "xs": [0.0, *epochs],
                    "ys": [s.accuracy, *(e.get("test_accuracy") for e in s.retrain_history)]})
        loss.append({"name": f"{s.index}. {s.name}", "xs": epochs, "ys": [e.get("train_loss") for e in s.retrain_history],
                     "dashed": True})
    return [
        line_chart("retraining: test accuracy", acc, xlabel="retraining epochs", ylabel="test accuracy (%)",
                   hlines=[(report.baseline.accuracy, "baseline")]),
        line_chart("retraining: train loss", loss, xlabel="retraining epochs", ylabel="train loss"),
    ]


def _epoch(entry: dict[str, Any]) -> float:
    return float(entry.get("epoch_fraction", entry["epoch"]))
