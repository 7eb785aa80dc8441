"""``verify``: apply a pipeline one pass at a time and hold every step to its kind's contract."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._util import eval_mode, first_line, model_device, resolve_device
from ..core import trace
from ..errors import FxlabError, UsageError, VerifyError
from ..passes._rewrite import nonfinite_counts
from ..pipeline import Pass, PassRecord, apply, as_passes, records
from .contracts import Settings, StepCheck, contract_for
from .models import resolve_model
from .nodes import NodeNumerics, first_divergence, node_numerics
from .report import Baseline, Report, Step
from .retrain import RETRAIN_LR

log = logging.getLogger(__name__)

__all__ = ["CHECK_IMAGES", "CALIBRATION_BATCH", "prepare", "verify"]

#: How many test images (the first ones, always the same) the numeric checks run on; as many
#: training images calibrate a pass.
CHECK_IMAGES = 1000

#: Batch size of the calibration batches.
CALIBRATION_BATCH = 256


#: QAT epochs of an approximate step that misses its budget when ``qat_epochs`` is left at None.
AUTO_QAT_EPOCHS = 1


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
    name: str | None = None,
    nodes: bool = True,
    qat_epochs: float | None = None,
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
    - ``name``: what the report calls the model (default: the seed name, the file, or the class).
    - ``nodes``: compare every node with its counterpart before the pass (``Step.nodes``,
      ``Step.first_divergence``; see :mod:`fxlab.verification.nodes`).
    - ``qat_epochs``: quantization-aware training for every approximate step that offers it
      (``quantize-linear`` in the modes of ``QAT_MODES``: all but static, bf16, fp16): that many MNIST epochs through the quantizer
      before converting; the step then reports the plain conversion's accuracy too (``Step.qat``).
      A pass with its own ``qat_epochs`` trains so anyway (on this MNIST). ``None`` (the default):
      only a step that misses its budget is done again with ``AUTO_QAT_EPOCHS`` of QAT, and that
      attempt is the step; ``0``: never.

    Returns a ``Report``; a contract that fails makes ``report.ok`` False (it does not raise). Bad
    input (no such model, a pipeline that does not parse or a pass that cannot apply) raises an
    ``FxlabError``.
    """
    start = time.perf_counter()
    run, pipeline, model_name = prepare(
        model, passes, data=data, retrain_epochs=retrain_epochs, device=device, tolerance=tolerance, floor=floor,
        check_images=check_images, retrain_lr=retrain_lr, seed=seed, trust=trust, architecture=architecture,
        progress=progress, name=name, nodes=nodes, qat_epochs=qat_epochs)
    log.info("baseline of %s on %s: %.2f%% (loss %.4f)", model_name, run.device, run.baseline.accuracy,
             run.baseline.loss)
    steps = [run.step(index, p) for index, p in enumerate(pipeline, 1)]
    return Report(
        model_name=model_name, pipeline=",".join(s.pass_text for s in steps), device=str(run.device),
        baseline=run.baseline, steps=steps, tolerance=tolerance, floor=floor, retrain_epochs=retrain_epochs,
        check_images=int(run.images.shape[0]), seconds=time.perf_counter() - start, model=run.current,
    )


def prepare(model: Any, passes: Any, *, data: Any = None, retrain_epochs: float = 1,
            device: str | torch.device | None = None, tolerance: float = 1e-4, floor: float = 1.0,
            check_images: int = CHECK_IMAGES, retrain_lr: float = RETRAIN_LR, seed: int = 0, trust: bool = False,
            architecture: str | None = None, progress: bool = False, name: str | None = None,
            nodes: bool = True, qat_epochs: float | None = None) -> tuple[_Run, list[Pass], str]:
    """What ``verify`` (and ``bisect``) start from: (the run at the input model, the passes, the model's name).

    Arguments as ``verify``'s; bad input raises ``FxlabError`` before anything is checked.
    """
    from .. import data as mnist_data

    dev = _device(device)
    settings = _settings(tolerance, floor, retrain_epochs, retrain_lr, seed, progress, qat_epochs)
    pipeline = as_passes(passes)
    if not pipeline:
        raise VerifyError("empty pipeline: name at least one pass")
    mnist = mnist_data.as_mnist(data, dev)
    module, model_name = resolve_model(model, data=mnist, device=dev, trust=trust, architecture=architecture,
                                       progress=progress)
    model_name = name or model_name
    check_mnist_input(module, _images(mnist.test, 2), model_name)
    run = _Run.start(module, mnist, dev, settings, check_images)
    run.nodes = nodes
    return run, pipeline, model_name


def check_mnist_input(module: nn.Module, images: torch.Tensor, name: str) -> None:
    """Run two MNIST test images through ``module`` (eval mode, no gradients) before anything else.

    A model that does not take ``(N, 1, 28, 28)`` images raises ``VerifyError`` in one line saying
    what the model expects, as far as it can be told (its first Linear's ``in_features``), and what
    verification feeds it; not a matmul traceback halfway through training.
    """
    x = images.to(model_device(module))
    try:
        with torch.no_grad(), eval_mode(module):
            module(x)
    except Exception as exc:
        first = next((m for m in module.modules() if isinstance(getattr(m, "in_features", None), int)), None)
        pixels = x[0].numel()
        if first is not None and first.in_features != pixels:
            expects = f"its first Linear takes {first.in_features} input features"
        else:
            expects = f"it fails on them ({type(exc).__name__}: {first_line(exc)})"
        raise VerifyError(
            f"{name} does not take MNIST input: verify feeds (N, 1, 28, 28) MNIST images ({pixels} values each), "
            f"but {expects}; verify checks MNIST classifiers only"
        ) from exc


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """``["layer2.weight: 3 NaN values", ...]``: every floating parameter or buffer holding NaN or inf."""
    found = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        text = nonfinite_counts(t.detach())
        if text:
            found.append(f"{name}: {text}")
    return found


def nonfinite_text(outputs: torch.Tensor) -> str | None:
    """``"NaN"``, ``"inf"``, ``"NaN and inf"`` when the outputs hold such values, else ``None``."""
    if bool(torch.isfinite(outputs).all()):
        return None
    kinds = [k for k, bad in (("NaN", torch.isnan(outputs).any()), ("inf", torch.isinf(outputs).any())) if bool(bad)]
    return " and ".join(kinds)


def _device(device: str | torch.device | None) -> torch.device:
    """``device`` resolved by ``fxlab._util.resolve_device``; a bad one raises ``VerifyError`` (one line)."""
    try:
        return resolve_device(device)
    except UsageError as exc:
        raise VerifyError(str(exc)) from exc


def _settings(tolerance: float, floor: float, retrain_epochs: float, retrain_lr: float, seed: int,
              progress: bool, qat_epochs: float | None = None) -> Settings:
    """The contracts' settings, checked."""
    if retrain_epochs < 0 or not math.isfinite(retrain_epochs):
        raise VerifyError(f"retrain_epochs must be ≥ 0, got {retrain_epochs}")
    if qat_epochs is not None and (qat_epochs < 0 or not math.isfinite(qat_epochs)):
        raise VerifyError(f"qat_epochs must be ≥ 0, got {qat_epochs}")
    for name, value in (("tolerance", tolerance), ("floor", floor)):
        if not value >= 0 or not math.isfinite(value):  # NaN compares false
            raise VerifyError(f"{name} must be a finite number ≥ 0, got {value}")
    return Settings(tolerance=tolerance, floor=floor, retrain_epochs=retrain_epochs, retrain_lr=retrain_lr,
                    seed=seed, progress=progress, qat_epochs=qat_epochs)


@dataclass
class _Run:
    """The state carried from step to step: the current model, its outputs and its accuracy."""

    mnist: Any
    device: torch.device
    settings: Settings
    images: torch.Tensor  # the check images
    baseline: Baseline
    current: fx.GraphModule
    outputs: torch.Tensor  # the current model's outputs on the check images
    reference: float  # the current model's test accuracy
    _calibration: list[torch.Tensor] | None = None
    nodes: bool = True  # per-node numerics for every step
    _observed: bool = False  # the current model holds observers (it came from a calibrating pass)

    @classmethod
    def start(cls, module: nn.Module, mnist: Any, dev: torch.device, settings: Settings, n: int) -> _Run:
        """Our own copy of ``module``, traced, on ``dev``, in eval mode (the caller's is never touched)."""
        from ..train import evaluate

        current = copy.deepcopy(module)
        current = current if isinstance(current, fx.GraphModule) else trace(current)
        current.to(dev).eval()
        images = _images(mnist.test, n)
        base = evaluate(current, mnist, device=dev)
        outputs = _outputs(current, images)
        baseline = Baseline(base.accuracy, base.loss, nonfinite_parameters=nonfinite_parameters(current),
                            nonfinite_outputs=nonfinite_text(outputs))
        if baseline.nonfinite_parameters or baseline.nonfinite_outputs:
            log.warning("the input model is not finite: %s", baseline.problem)
        return cls(mnist, dev, settings, images, baseline, current, outputs, base.accuracy)

    def calibration(self) -> list[torch.Tensor]:
        """The calibration batches: the first ``CHECK_IMAGES`` MNIST training images, 256 a batch."""
        if self._calibration is None:
            images = _images(self.mnist.train, self.images.shape[0])
            self._calibration = [images[i : i + CALIBRATION_BATCH] for i in range(0, images.shape[0], CALIBRATION_BATCH)]
        return self._calibration

    def step(self, index: int, p: Pass) -> Step:
        """Apply ``p`` to the current model, check its contract, and make the result current."""
        epochs = self.settings.qat_epochs
        p = with_qat(p, epochs or 0)
        step, model, outputs = self.check(index, p, *self._apply(p))
        retry = with_qat(p, AUTO_QAT_EPOCHS) if epochs is None and not step.ok else p
        if retry is not p:  # an approximate step that missed its budget: once more, trained through its quantizer
            log.info("step %d %s missed its budget: again with %g QAT epoch(s)", index, p, AUTO_QAT_EPOCHS)
            p = retry
            step, model, outputs = self.check(index, p, *self._apply(p), plain_accuracy=step.accuracy)
        self.current, self.outputs, self.reference = model, outputs, step.final_accuracy
        self._observed = _calibrates(p)
        return step

    def check(self, index: int, p: Pass, new: fx.GraphModule, record: PassRecord, *,
              plain_accuracy: float | None = None) -> tuple[Step, fx.GraphModule, torch.Tensor]:
        """Check ``new`` (the current model after ``p``, as ``apply`` recorded it) against ``p``'s contract.
        ``plain_accuracy``: for a pass trained through its quantizer, the accuracy of its plain
        conversion when already measured (else :meth:`_qat` measures it).

        Returns (the step, the model the next step would start from, its outputs); the run itself
        is left as it was (``step`` advances it; bisection checks many candidates from one start).
        """
        from ..train import evaluate

        t0 = time.perf_counter()
        diff = record.diff
        if diff is None:
            raise VerifyError(f"{p.label()}: fxlab.apply recorded no graph diff for the pass")
        # a calibrating pass's observers must not see the test images: check a copy, hand on ``new``
        probe = copy.deepcopy(new) if _calibrates(p) else new
        after = _outputs(probe, self.images)
        max_abs, agreement = compare(self.outputs, after)
        nodes: list[NodeNumerics] | None = None
        if self.nodes:
            before = copy.deepcopy(self.current) if self._observed else self.current
            nodes = node_numerics(before, probe, self.images)
        ev = evaluate(probe, self.mnist, device=self.device)
        check = StepCheck(index, p, probe, self.outputs, after, max_abs, agreement, ev.accuracy, self.reference,
                          self.baseline.accuracy, self.settings, self.mnist, self.device,
                          lambda gm: _outputs(gm, self.images))
        verdict = contract_for(p.kind)(check)
        nonfinite = nonfinite_text(verdict.outputs if verdict.outputs is not None else after)
        if nonfinite:  # say so plainly, not as an opaque accuracy or a "nan > tolerance"
            verdict.ok = False
            verdict.reason = f"outputs contain {nonfinite}; " + verdict.reason
        final = verdict.retrained_accuracy if verdict.retrained_accuracy is not None else ev.accuracy
        step = Step(
            index=index, pass_text=str(p), name=p.label(), kind=p.kind, accuracy=ev.accuracy, loss=ev.loss,
            delta=final - self.baseline.accuracy, max_abs_diff=max_abs, agreement=agreement,
            retrained_accuracy=verdict.retrained_accuracy, reference_accuracy=self.reference,
            budget=verdict.budget, seconds=time.perf_counter() - t0 + record.seconds, pass_seconds=record.seconds,
            diff=diff, before="\n".join(diff.before.values()), after="\n".join(diff.after.values()), ok=verdict.ok,
            reason=verdict.reason, retrain_history=verdict.history, nonfinite_outputs=nonfinite,
            nodes=[r.to_dict() for r in nodes] if nodes is not None else None,
            first_divergence=(first_divergence(nodes, p.kind, self.settings.tolerance) if nodes is not None else None),
            rewritten=record.rewritten, skipped=record.skipped, sensitivity=record.sensitivity,
            qat=self._qat(p, ev.accuracy, verdict.budget, plain_accuracy),
        )
        log.info("step %d %s (%s): %s", index, step.pass_text, step.kind, step.verdict)
        model = probe if verdict.outputs is not None else new
        step.graph_before, step.graph_after = self.current, model  # for the HTML report
        return step, model, (verdict.outputs if verdict.outputs is not None else after)

    def _qat(self, p: Pass, accuracy: float, budget: float | None,
             plain_accuracy: float | None = None) -> dict[str, Any] | None:
        """For a step that trained through its quantizer: the plain conversion's accuracy (the same
        pass without training, applied to the same model; measured unless given), the accuracy
        after QAT, and the budget."""
        from ..train import evaluate

        epochs = getattr(p, "qat_epochs", 0)
        if not epochs:
            return None
        if plain_accuracy is None:  # applied as any step is (its data, calibration and device)
            plain, _ = self._apply(dataclasses.replace(p, qat_epochs=0))
            plain_accuracy = evaluate(plain, self.mnist, device=self.device).accuracy
        lost = self.reference - plain_accuracy
        return {"epochs": epochs, "plain_accuracy": plain_accuracy, "qat_accuracy": accuracy, "budget": budget,
                "recovered": (accuracy - plain_accuracy) / lost if lost > 0 else None}

    def _apply(self, p: Pass, limit: int | None = None) -> tuple[fx.GraphModule, PassRecord]:
        """(model after ``p``, the record ``apply`` kept of it); calibrated if ``p`` asks; MNIST as
        its data if it takes data (evaluation for ``max_drop``, training for ``qat_epochs``)."""
        p = with_data(with_calibration(p, self.calibration), self.mnist)
        new = apply(self.current, [p], limit=limit)
        record = records(new)[-1]
        new.to(self.device).eval()
        if _calibrates(p):
            calibrate(new, self.calibration())
        return new, record


def _calibrates(p: Pass) -> bool:
    return bool(getattr(p, "calibrates", False))


def with_calibration(p: Pass, batches: Any) -> Pass:
    """``p`` with its ``calibration`` option set to ``batches()``, when it has that option and it is empty.

    So that ``quantize-linear{mode=static}`` from pipeline text is calibrated on real data (the first
    ``CHECK_IMAGES`` training images); other passes, and other modes, are returned as they are.
    """
    if not dataclasses.is_dataclass(p) or getattr(p, "calibration", "absent") is not None:
        return p
    if "calibration" not in {f.name for f in dataclasses.fields(p)}:
        return p
    calibration = batches()
    log.info("calibrating %s on %d MNIST training images", p.label(), sum(b.shape[0] for b in calibration))
    return dataclasses.replace(p, calibration=calibration)


def with_data(p: Pass, mnist: Any) -> Pass:
    """``p`` with its ``data`` option (evaluation data, e.g. ``quantize-linear{max_drop=...}``'s) set
    to ``mnist`` when it has that option and it is empty; other passes are returned as they are."""
    if not dataclasses.is_dataclass(p) or getattr(p, "data", "absent") is not None:
        return p
    if "data" not in {f.name for f in dataclasses.fields(p)}:
        return p
    return dataclasses.replace(p, data=mnist)


def with_qat(p: Pass, epochs: float) -> Pass:
    """``p`` with ``qat_epochs=epochs`` when ``epochs`` > 0 and ``p`` is an approximate pass with a
    ``qat_epochs`` option left at 0 that takes it for its mode (``quantize-linear`` but static);
    other passes as they are."""
    if not epochs or p.kind != "approximate" or not dataclasses.is_dataclass(p) or getattr(p, "qat_epochs", None) != 0:
        return p
    try:
        return dataclasses.replace(p, qat_epochs=epochs)
    except FxlabError:  # a mode that is calibrated, not trained (quantize-linear{mode=static})
        return p


def calibrate(gm: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Run ``batches`` through ``gm`` in eval mode without gradients (feeds a ``calibrates`` pass's observers)."""
    with torch.no_grad(), eval_mode(gm):
        for x in batches:
            gm(x)


def _outputs(gm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``gm``'s (first) output on ``x``, as a float32 copy."""
    with torch.inference_mode():
        out = gm(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float().clone()


def compare(before: torch.Tensor, after: torch.Tensor) -> tuple[float | None, float | None]:
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


def _images(split: Any, n: int) -> torch.Tensor:
    """The first ``n`` images of a split, normalised (without normalising the whole split)."""
    if hasattr(split, "batch"):
        return split.batch(slice(0, n))[0]
    return split.images[:n]
