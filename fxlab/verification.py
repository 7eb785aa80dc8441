"""Verification: every step of a pipeline proven by numbers, accuracy and a graph diff.

``fxlab.verify(model, passes)`` applies a pipeline one pass at a time and holds each pass to the
promise of its ``kind``:

- ``exact``: on a fixed batch of real MNIST test images, the outputs of the model after the pass
  match those of the model before it: max absolute difference ≤ ``tolerance`` (default 1e-4) and
  100 % argmax agreement;
- ``approximate``: the test accuracy drops by at most the pass's ``budget`` (accuracy points),
  measured against the model *before this step* (so every step is judged on its own change, and
  the budgets of several approximate steps add up for the whole pipeline); a pass that declares
  no budget is held to ``floor``. A pass with an empty ``calibration`` option
  (``quantize-linear{mode=static}`` from pipeline text) is calibrated on MNIST training images;
- ``changes``: the model is fine-tuned ``retrain_epochs`` epochs (``fxlab.train.fit``) and its
  recovered accuracy (``retrained_accuracy``) must be within ``floor`` points (default 1) of the
  baseline. Retraining changes the weights: later steps start from the retrained model.

Every step also records the test accuracy after the pass, the graph diff (nodes added, removed,
changed) with the printouts before and after, and the wall time. ``Report.ok`` is False when any
contract fails, and the failing step says why.

>>> import fxlab
>>> report = fxlab.verify("mymodule", "fuse-linear-relu")      # doctest: +SKIP
>>> print(report.table())                                       # doctest: +SKIP

Command line (``python -m fxlab.verify``)::

    python -m fxlab.verify --model mymodule --passes "insert-activation{after=layer2 fn=gelu},fuse-linear-relu,quantize-linear{mode=dynamic}"
    python -m fxlab.verify model.pth --passes fuse-linear-relu --json report.json --plot report.png

Exit status: 0 when every contract holds, 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ._util import write_atomic
from .errors import FxlabError, VerifyError, did_you_mean
from .core import GraphDiff, diff_graphs, format_graph, trace
from .pipeline import Pass, apply, as_passes

log = logging.getLogger(__name__)

__all__ = ["CHECK_IMAGES", "Baseline", "Report", "Step", "verify"]

#: How many test images (the first ones, always the same) the numeric checks run on.
CHECK_IMAGES = 1000

#: Peak learning rate of the fine-tuning after a ``changes`` step (one-cycle schedule, Adam).
RETRAIN_LR = 1e-3

#: Batch size of the fine-tuning.
RETRAIN_BATCH = 128

_JSON_FORMAT = "fxlab.verify/1"


# --------------------------------------------------------------------------------------------
# the report


@dataclass
class Baseline:
    """The input model's test accuracy (percent) and mean cross-entropy loss."""

    accuracy: float
    loss: float


@dataclass
class Step:
    """One pipeline step: what the pass did, the numbers before and after, and its verdict.

    Accuracies are percentages on the 10 000 MNIST test images. ``max_abs_diff`` and ``agreement``
    (percent of images whose argmax class is unchanged) compare the outputs after the pass with the
    outputs before it on the first ``CHECK_IMAGES`` test images; they are None when the output shapes
    differ. ``reference_accuracy`` is the accuracy of the model the step started from.
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

    @property
    def final_accuracy(self) -> float:
        """The accuracy the next step starts from: retrained when the step retrained, else after the pass."""
        return self.retrained_accuracy if self.retrained_accuracy is not None else self.accuracy

    @property
    def verdict(self) -> str:
        return ("ok" if self.ok else "FAIL") + (f": {self.reason}" if self.reason else "")

    def diff_text(self) -> str:
        """The graph diff of this step: a node table (added / removed / changed) and a unified diff."""
        from tabulate import tabulate

        d = self.diff
        title = (f"step {self.index}: {self.pass_text} ({self.kind}): nodes {len(d.added)} added, "
                 f"{len(d.removed)} removed, {len(d.changed)} changed")
        lines = [title, "=" * len(title)]
        if self.diff.empty:
            lines.append("graph unchanged")
            return "\n".join(lines)
        lines.append(tabulate(self.diff.rows(), headers=["change", "node", "before", "after"], tablefmt="simple"))
        lines.append("")
        lines.extend(
            difflib.unified_diff(self.before.splitlines(), self.after.splitlines(), "before", "after", lineterm="")
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
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
            "seconds": self.seconds,
            "pass_seconds": self.pass_seconds,
            "diff": {"added": self.diff.added, "removed": self.diff.removed, "changed": self.diff.changed},
            "before": self.before,
            "after": self.after,
            "retrain_history": [{k: _num(v) if isinstance(v, float) else v for k, v in e.items()}
                                for e in self.retrain_history],
        }


def _num(value: float | None) -> float | None:
    """A float for JSON: None stays None, and so do NaN and infinities (JSON has no such numbers)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


_TABLE_HEADERS = ["step", "pass", "kind", "accuracy", "retrained", "Δ vs baseline", "max abs diff", "agreement", "verdict"]


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
        """True when every step's contract held."""
        return all(s.ok for s in self.steps)

    @property
    def failures(self) -> list[Step]:
        return [s for s in self.steps if not s.ok]

    def table(self, tablefmt: str = "simple") -> str:
        """One row for the baseline and one per step: accuracy, Δ vs baseline, max abs diff, agreement, verdict."""
        from tabulate import tabulate

        rows: list[list[Any]] = [[0, f"(input: {self.model_name})", "", f"{self.baseline.accuracy:.2f}%", "", "", "", "", "baseline"]]
        for s in self.steps:
            rows.append([
                s.index,
                s.pass_text,
                s.kind,
                f"{s.accuracy:.2f}%",
                f"{s.retrained_accuracy:.2f}%" if s.retrained_accuracy is not None else "",
                f"{s.delta:+.2f}",
                _fmt_diff(s.max_abs_diff),
                f"{s.agreement:.2f}%" if s.agreement is not None else "n/a",
                s.verdict,
            ])
        return tabulate(rows, headers=_TABLE_HEADERS, tablefmt=tablefmt, disable_numparse=True)

    def diffs(self) -> str:
        """The graph diff of every step, in order."""
        return "\n\n".join(s.diff_text() for s in self.steps)

    def summary(self) -> str:
        """One line: every contract held, or which steps failed."""
        n = len(self.steps)
        if self.ok:
            what = "the contract holds" if n == 1 else f"all {n} contracts hold"
            return f"ok: {what} on {self.device} ({self.seconds:.1f}s)"
        bad = ", ".join(f"step {s.index} ({s.name})" for s in self.failures)
        return f"FAIL: {len(self.failures)} of {n} contracts failed: {bad}"

    def text(self, diffs: bool = True) -> str:
        """What the CLI prints: a header, the table, the summary line, then every step's graph diff."""
        header = (
            f"verify {self.model_name} on {self.device}: {self.pipeline}\n"
            f"baseline {self.baseline.accuracy:.2f}% (loss {self.baseline.loss:.4f}); exact: max abs diff ≤ "
            f"{self.tolerance:g} on {self.check_images} test images; changes: {self.retrain_epochs:g} retraining "
            f"epoch(s), floor baseline − {self.floor:g}"
        )
        parts = [header, self.table(), self.summary()]
        return "\n\n".join(parts + [self.diffs()] if diffs else parts)

    def __str__(self) -> str:
        return self.text()

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (accuracies in percent)."""
        return {
            "format": _JSON_FORMAT,
            "model": self.model_name,
            "pipeline": self.pipeline,
            "device": self.device,
            "baseline": {"accuracy": _num(self.baseline.accuracy), "loss": _num(self.baseline.loss)},
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
        try:
            import matplotlib

            matplotlib.use("Agg", force=True)
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise VerifyError("plotting needs matplotlib: pip install 'fxlab[plot]'") from exc

        retrained = [s for s in self.steps if s.retrain_history]
        ncols = 2 if retrained else 1
        fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.5), squeeze=False)
        ax = axes[0][0]
        labels = ["baseline"] + [f"{s.index}. {s.name}" for s in self.steps]
        xs = list(range(len(labels)))
        # the line follows the model each step hands on (retrained where the step retrained)
        ax.plot(xs, [self.baseline.accuracy] + [s.final_accuracy for s in self.steps], "o-", color="tab:blue",
                label="model after the step")
        for s in self.steps:
            if s.retrained_accuracy is not None:
                ax.plot([s.index], [s.accuracy], "o", mfc="white", color="tab:blue")
                ax.annotate("", xy=(s.index, s.retrained_accuracy), xytext=(s.index, s.accuracy),
                            arrowprops={"arrowstyle": "->", "color": "tab:green"})
            if not s.ok:
                ax.plot([s.index], [s.final_accuracy], "x", color="tab:red", markersize=12, mew=2)
        if any(s.retrained_accuracy is not None for s in self.steps):
            ax.plot([], [], "o", mfc="white", color="tab:blue", label="before retraining")
        if not self.ok:
            ax.plot([], [], "x", color="tab:red", mew=2, label="contract failed")
        ax.axhline(self.baseline.accuracy - self.floor, color="tab:gray", ls="--", lw=1,
                   label=f"floor (baseline − {self.floor:g})")
        ax.set_xticks(xs, labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{self.model_name}: accuracy per step ({'ok' if self.ok else 'FAIL'})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        if retrained:
            ax2 = axes[0][1]
            ax3 = ax2.twinx()
            for s in retrained:
                epochs = [0.0] + [float(e.get("epoch_fraction", e["epoch"])) for e in s.retrain_history]
                acc = [s.accuracy] + [e.get("test_accuracy") for e in s.retrain_history]
                line = ax2.plot(epochs, acc, "o-", label=f"{s.index}. {s.name}: test accuracy")[0]
                loss = [(float(e.get("epoch_fraction", e["epoch"])), e["train_loss"]) for e in s.retrain_history]
                ax3.plot([p[0] for p in loss], [p[1] for p in loss], "s--", color=line.get_color(), alpha=0.6,
                         label=f"{s.index}. {s.name}: train loss")
            ax3.set_ylabel("train loss")
            ax2.axhline(self.baseline.accuracy, color="tab:gray", ls=":", lw=1, label="baseline")
            ax2.set_xlabel("retraining epochs")
            ax2.set_ylabel("test accuracy (%)")
            ax2.set_title("retraining")
            ax2.grid(alpha=0.3)
            handles = ax2.get_legend_handles_labels()
            extra = ax3.get_legend_handles_labels()
            ax2.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="best")
        fig.tight_layout()
        try:
            return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        finally:
            plt.close(fig)


def _fmt_diff(value: float | None) -> str:
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return str(value)
    return "0" if value == 0 else f"{value:.2e}"


# --------------------------------------------------------------------------------------------
# verify


def _resolve_model(
    model: nn.Module | str | os.PathLike[str],
    *,
    data: Any,
    device: torch.device,
    trust: bool,
    architecture: str | None,
    progress: bool,
) -> tuple[nn.Module, str]:
    """(module, display name) from a module, a seed model name, or a model file."""
    if isinstance(model, nn.Module):
        return model, type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        from .models import names

        text = os.fspath(model)
        if isinstance(model, str) and text in names() and not os.path.exists(text):
            from .train import pretrained

            log.info("using %s trained with the default recipe (cached after the first time)", text)
            return pretrained(text, data=data, device=device, progress=progress), text
        if os.path.exists(text):
            from .serialization import load_file

            kwargs: dict[str, Any] = {"trust": trust}
            if architecture is not None:
                kwargs["model"] = architecture
            loaded = load_file(text, **kwargs)
            log.info("verifying %s", loaded.description)
            return loaded.model, text
        raise VerifyError(
            f"no model {text!r}: not a file, nor a seed model name{did_you_mean(text, names())}; "
            f"seed models: {', '.join(names())}"
        )
    raise VerifyError(f"verify expects an nn.Module, a seed model name or a model file, got {type(model).__name__}")


def _outputs(gm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = gm(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float().clone()


def _compare(before: torch.Tensor, after: torch.Tensor) -> tuple[float | None, float | None]:
    """(max abs diff, argmax agreement in percent), or (None, None) when the shapes differ."""
    if before.shape != after.shape:
        return None, None
    diff = (after - before).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    if torch.isnan(diff).any():
        max_abs = math.nan
    if before.dim() < 2 or before.shape[0] == 0:
        return max_abs, None
    agree = 100.0 * float((before.argmax(1) == after.argmax(1)).float().mean())
    return max_abs, agree


def _retrain_plan(epochs: float, n_train: int, batch_size: int) -> tuple[int, int | None]:
    """(whole epochs to run, max optimizer steps or None) for a possibly fractional epoch count."""
    if float(epochs).is_integer():
        return int(epochs), None
    steps_per_epoch = math.ceil(n_train / batch_size)
    return math.ceil(epochs), max(1, round(epochs * steps_per_epoch))


def verify(
    model: nn.Module | str | os.PathLike[str],
    passes: str | Pass | Iterable[Pass],
    *,
    data: Any = None,
    retrain_epochs: float = 1,
    device: str | torch.device | None = None,
    tolerance: float = 1e-4,
    floor: float = 1.0,
    check_images: int = CHECK_IMAGES,
    retrain_lr: float = RETRAIN_LR,
    seed: int = 0,
    trust: bool = False,
    architecture: str | None = None,
    progress: bool = False,
) -> Report:
    """Apply ``passes`` to ``model`` one at a time and check each pass's contract on MNIST.

    - ``model``: an ``nn.Module`` (or ``GraphModule``; it is never mutated), a seed model name
      (``"mymodule"``: trained with the default recipe, or loaded from its cached checkpoint), or a
      model file (read by ``fxlab.load``; ``trust`` and ``architecture`` are passed on to it).
    - ``passes``: pipeline text, a pass, or a list of passes.
    - ``data``: an MNIST root directory or a loaded ``fxlab.data.MNIST`` (default: ``fxlab.data``'s root).
    - ``retrain_epochs``: fine-tuning after each ``changes`` step; a fraction (``0.1``) trains on that
      share of one epoch's batches; ``0`` skips retraining (the step is then judged on its accuracy).
    - ``device``: where evaluation and retraining run (default: CUDA when present, else CPU).
    - ``tolerance``: the largest max-abs output difference an ``exact`` pass may cause.
    - ``floor``: a ``changes`` step must end within this many accuracy points of the baseline; an
      ``approximate`` pass with no declared ``budget`` may lose at most this many points.

    Returns a ``Report``; a contract that fails makes ``report.ok`` False (it does not raise). Bad
    input (no such model, a pipeline that does not parse or a pass that cannot apply) raises an
    ``FxlabError``.
    """
    from . import data as mnist_data
    from .train import default_device, evaluate, fit

    start = time.perf_counter()
    dev = _device(device) if device is not None else default_device()
    if retrain_epochs < 0 or not math.isfinite(retrain_epochs):
        raise VerifyError(f"retrain_epochs must be ≥ 0, got {retrain_epochs}")
    if tolerance < 0 or floor < 0:
        raise VerifyError("tolerance and floor must be ≥ 0")
    pipeline = as_passes(passes)
    if not pipeline:
        raise VerifyError("empty pipeline: name at least one pass")
    mnist = mnist_data.as_mnist(data, dev)
    module, model_name = _resolve_model(model, data=mnist, device=dev, trust=trust,
                                        architecture=architecture, progress=progress)

    # our own copy, on the device, in eval mode: the caller's model is never touched
    current = copy.deepcopy(module)
    current = current if isinstance(current, fx.GraphModule) else trace(current)
    current.to(dev).eval()
    x = _images(mnist.test, check_images)

    base = evaluate(current, mnist, device=dev)
    baseline = Baseline(base.accuracy, base.loss)
    log.info("baseline of %s on %s: %.2f%% (loss %.4f)", model_name, dev, base.accuracy, base.loss)
    previous_out = _outputs(current, x)
    reference = base.accuracy
    steps: list[Step] = []

    for index, p in enumerate(pipeline, 1):
        t0 = time.perf_counter()
        text = str(p)
        p = _calibrated(p, mnist, check_images)
        before_text = format_graph(current)
        t_pass = time.perf_counter()
        new = apply(current, [p])
        pass_seconds = time.perf_counter() - t_pass
        new.to(dev).eval()
        diff = diff_graphs(current, new)
        after_text = format_graph(new)
        out = _outputs(new, x)
        max_abs, agreement = _compare(previous_out, out)
        ev = evaluate(new, mnist, device=dev)
        kind = p.kind
        budget = _budget(p) if kind == "approximate" else None
        retrained: float | None = None
        history: list[dict[str, Any]] = []
        ok, reason = True, ""

        if kind == "exact":
            problems = []
            if max_abs is None:
                problems.append(f"output shape changed {tuple(previous_out.shape)} → {tuple(out.shape)}")
            else:
                if not max_abs <= tolerance:
                    problems.append(f"max abs diff {_fmt_diff(max_abs)} > tolerance {tolerance:g}")
                if agreement is not None and agreement < 100.0:
                    problems.append(f"argmax agreement {agreement:.2f}% < 100%")
            ok = not problems
            reason = "; ".join(problems) if problems else f"max abs diff ≤ {tolerance:g}"
        elif kind == "approximate":
            allowed = budget if budget is not None else floor
            drop = reference - ev.accuracy
            ok = drop <= allowed + 1e-9
            source = "budget" if budget is not None else "no budget declared; floor"
            reason = f"accuracy drop {drop:.2f} {'≤' if ok else '>'} {source} {allowed:g}"
        elif kind == "changes":
            trainable = any(t.requires_grad and t.is_floating_point() for t in new.parameters())
            if retrain_epochs > 0 and trainable:
                epochs, max_steps = _retrain_plan(retrain_epochs, len(mnist.train), RETRAIN_BATCH)
                try:
                    hist = fit(new, mnist, epochs=epochs, lr=retrain_lr, batch_size=RETRAIN_BATCH, device=dev,
                               seed=seed + index, progress=progress, max_steps=max_steps)
                except FxlabError as exc:
                    raise VerifyError(f"step {index} ({text}): cannot retrain: {exc}") from exc
                new.eval()
                spe = math.ceil(len(mnist.train) / RETRAIN_BATCH)
                history = [dict(e, epoch_fraction=e["steps"] / spe) for e in hist.epochs]
                after_ev = evaluate(new, mnist, device=dev)
                retrained = after_ev.accuracy
                out = _outputs(new, x)  # the next step compares against the retrained model
            final = retrained if retrained is not None else ev.accuracy
            limit = baseline.accuracy - floor
            ok = final >= limit - 1e-9
            if retrained is not None:
                what = "retrained accuracy"
            elif retrain_epochs > 0:
                what = "accuracy (not retrained: no trainable parameters)"
            else:
                what = "accuracy (no retraining)"
            reason = f"{what} {final:.2f}% {'≥' if ok else '<'} floor {limit:.2f}%"
        else:
            ok, reason = False, f"unknown kind {kind!r}: a pass is 'exact', 'approximate' or 'changes'"

        step = Step(
            index=index, pass_text=text, name=p.label(), kind=kind, accuracy=ev.accuracy, loss=ev.loss,
            delta=(retrained if retrained is not None else ev.accuracy) - baseline.accuracy,
            max_abs_diff=max_abs, agreement=agreement, retrained_accuracy=retrained,
            reference_accuracy=reference, budget=budget, seconds=time.perf_counter() - t0,
            pass_seconds=pass_seconds, diff=diff, before=before_text, after=after_text, ok=ok,
            reason=reason, retrain_history=history,
        )
        steps.append(step)
        log.info("step %d %s (%s): %s", index, text, kind, step.verdict)
        current, previous_out, reference = new, out, step.final_accuracy

    return Report(
        model_name=model_name, pipeline=",".join(s.pass_text for s in steps), device=str(dev),
        baseline=baseline, steps=steps, tolerance=tolerance, floor=floor, retrain_epochs=retrain_epochs,
        check_images=int(x.shape[0]), seconds=time.perf_counter() - start, model=current,
    )


def _device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device that exists on this machine (else ``VerifyError``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise VerifyError(f"bad device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VerifyError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VerifyError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu" and not (dev.type == "mps" and torch.backends.mps.is_available()):
        raise VerifyError(f"device {device!r} is not supported here: use cpu or cuda")
    return dev


def _images(split: Any, n: int) -> torch.Tensor:
    """The first ``n`` images of a split, normalised (without normalising the whole split)."""
    if hasattr(split, "batch"):
        return split.batch(slice(0, n))[0]
    return split.images[:n]


def _calibrated(p: Pass, mnist: Any, n: int) -> Pass:
    """``p`` with ``calibration`` set to MNIST training batches, when it has that option and it is empty.

    So that ``quantize-linear{mode=static}`` from pipeline text is calibrated on real data (the first
    ``n`` training images, in batches of 256); other modes ignore the option.
    """
    if not dataclasses.is_dataclass(p) or getattr(p, "calibration", "absent") is not None:
        return p
    if "calibration" not in {f.name for f in dataclasses.fields(p)}:
        return p
    images = _images(mnist.train, n)
    batches = [images[i : i + 256] for i in range(0, images.shape[0], 256)]
    log.info("calibrating %s on %d MNIST training images", p.label(), images.shape[0])
    return dataclasses.replace(p, calibration=batches)


def _budget(p: Pass) -> float | None:
    """The accuracy budget (points) an approximate pass declares, if any."""
    budget = getattr(p, "budget", None)
    if callable(budget):
        budget = budget()
    if budget is None:
        return None
    try:
        return float(budget)
    except (TypeError, ValueError):
        raise VerifyError(f"pass {p.label()!r} declares a budget {budget!r} that is not a number") from None


# --------------------------------------------------------------------------------------------
# CLI
