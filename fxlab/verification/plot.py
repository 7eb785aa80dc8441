"""The report as a picture: accuracy per step, and the training curves of any retraining (matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util import write_atomic
from ..errors import VerifyError

if TYPE_CHECKING:
    from .report import Report, Step

__all__ = ["plot_report"]


def plot_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """Draw ``report`` to a PNG at ``path`` (atomically) and return the path.

    Left: the accuracy of the model each step hands on, with retraining arrows and failed steps
    crossed out; right (when a step retrained): test accuracy and train loss over the retraining.
    Needs matplotlib (``pip install 'fxlab[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise VerifyError("plotting needs matplotlib: pip install 'fxlab[plot]'") from exc

    retrained = [s for s in report.steps if s.retrain_history]
    ncols = 2 if retrained else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.5), squeeze=False)
    _accuracy_panel(axes[0][0], report)
    if retrained:
        _retraining_panel(axes[0][1], report, retrained)
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def _accuracy_panel(ax: Any, report: Report) -> None:
    """Accuracy per step: the line follows the model each step hands on (retrained where it retrained)."""
    labels = ["baseline"] + [f"{s.index}. {s.name}" for s in report.steps]
    xs = list(range(len(labels)))
    ax.plot(xs, [report.baseline.accuracy] + [s.final_accuracy for s in report.steps], "o-", color="tab:blue",
            label="model after the step")
    for s in report.steps:
        if s.retrained_accuracy is not None:
            ax.plot([s.index], [s.accuracy], "o", mfc="white", color="tab:blue")
            ax.annotate("", xy=(s.index, s.retrained_accuracy), xytext=(s.index, s.accuracy),
                        arrowprops={"arrowstyle": "->", "color": "tab:green"})
        if not s.ok:
            ax.plot([s.index], [s.final_accuracy], "x", color="tab:red", markersize=12, mew=2)
    if any(s.retrained_accuracy is not None for s in report.steps):
        ax.plot([], [], "o", mfc="white", color="tab:blue", label="before retraining")
    if not report.ok:
        ax.plot([], [], "x", color="tab:red", mew=2, label="contract failed")
    ax.axhline(report.baseline.accuracy - report.floor, color="tab:gray", ls="--", lw=1,
               label=f"floor (baseline − {report.floor:g})")
    ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{report.model_name}: accuracy per step ({'ok' if report.ok else 'FAIL'})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _retraining_panel(ax2: Any, report: Report, retrained: list[Step]) -> None:
    """Test accuracy (left axis) and train loss (right axis) over each retraining, in epochs."""
    ax3 = ax2.twinx()
    for s in retrained:
        epochs = [0.0] + [_epoch(e) for e in s.retrain_history]
        acc = [s.accuracy] + [e.get("test_accuracy") for e in s.retrain_history]
        line = ax2.plot(epochs, acc, "o-", label=f"{s.index}. {s.name}: test accuracy")[0]
        ax3.plot([_epoch(e) for e in s.retrain_history], [e["train_loss"] for e in s.retrain_history], "s--",
                 color=line.get_color(), alpha=0.6, label=f"{s.index}. {s.name}: train loss")
    ax3.set_ylabel("train loss")
    ax2.axhline(report.baseline.accuracy, color="tab:gray", ls=":", lw=1, label="baseline")
    ax2.set_xlabel("retraining epochs")
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title("retraining")
    ax2.grid(alpha=0.3)
    handles, labels = ax2.get_legend_handles_labels()
    extra_handles, extra_labels = ax3.get_legend_handles_labels()
    ax2.legend(handles + extra_handles, labels + extra_labels, fontsize=8, loc="best")


def _epoch(entry: dict[str, Any]) -> float:
    """Where a history entry sits, in (possibly fractional) epochs."""
    return float(entry.get("epoch_fraction", entry["epoch"]))
