"""The contracts: what each pass kind promises, and the check that holds a step to it.

A contract is a function ``(StepCheck) -> Verdict`` registered for a pass kind with
:func:`register_contract`, the way torchao registers a handler per config type: a new kind is a
new registered function, never a branch in ``verify``.

>>> from fxlab.verification.contracts import contract_for
>>> contract_for("exact").__name__
'exact'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from ..errors import VerifyError
from ..pipeline import Pass
from .report import fmt_diff
from .retrain import retrain

__all__ = ["CONTRACTS", "Contract", "Settings", "StepCheck", "Verdict", "contract_for", "register_contract"]


@dataclass(frozen=True)
class Settings:
    """The knobs of one ``verify`` run that contracts read."""

    tolerance: float = 1e-4
    floor: float = 1.0
    retrain_epochs: float = 1
    retrain_lr: float = 1e-3
    seed: int = 0
    progress: bool = False
    # quantization-aware training of every approximate step that offers it; None: of a step that misses
    # its budget only (AUTO_QAT_EPOCHS), 0: never
    qat_epochs: float | None = None


@dataclass
class StepCheck:
    """Everything a contract may look at for one step.

    ``model`` is the GraphModule after the pass (a contract may retrain it in place); ``before`` and
    ``after`` are its outputs on the check images before and after the pass; ``accuracy`` is its test
    accuracy after the pass, ``reference`` that of the model the step started from, ``baseline`` that
    of the input model.
    """

    index: int
    pass_: Pass
    model: fx.GraphModule
    before: torch.Tensor
    after: torch.Tensor
    max_abs_diff: float | None
    agreement: float | None
    accuracy: float
    reference: float
    baseline: float
    settings: Settings
    mnist: Any
    device: torch.device
    outputs: Callable[[fx.GraphModule], torch.Tensor]  # the model's outputs on the check images


@dataclass
class Verdict:
    """A contract's finding. ``outputs`` replaces the step's outputs when the contract changed the model."""

    ok: bool
    reason: str
    budget: float | None = None
    retrained_accuracy: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    outputs: torch.Tensor | None = None


Contract = Callable[[StepCheck], Verdict]

#: kind → the contract that checks passes of that kind.
CONTRACTS: dict[str, Contract] = {}


def register_contract(kind: str) -> Callable[[Contract], Contract]:
    """Decorator: ``fn`` checks every pass whose ``kind`` is ``kind`` (replacing any earlier one)."""

    def decorate(fn: Contract) -> Contract:
        CONTRACTS[kind] = fn
        return fn

    return decorate


def contract_for(kind: str) -> Contract:
    """The contract registered for ``kind``; an unknown kind gets one that always fails, saying why."""
    return CONTRACTS.get(kind, _unknown_kind)


def _unknown_kind(check: StepCheck) -> Verdict:
    kind = check.pass_.kind
    return Verdict(False, f"unknown kind {kind!r}: a pass is {', '.join(repr(k) for k in CONTRACTS)}")


@register_contract("exact")
def exact(check: StepCheck) -> Verdict:
    """Same function: max abs diff ≤ tolerance and 100 % argmax agreement on the check images."""
    tolerance = check.settings.tolerance
    problems = []
    if check.max_abs_diff is None:
        problems.append(f"output shape changed {tuple(check.before.shape)} → {tuple(check.after.shape)}")
    else:
        if not check.max_abs_diff <= tolerance:
            problems.append(f"max abs diff {fmt_diff(check.max_abs_diff)} > tolerance {tolerance:g}")
        if check.agreement is not None and check.agreement < 100.0:
            problems.append(f"argmax agreement {check.agreement:.2f}% < 100%")
    return Verdict(not problems, "; ".join(problems) if problems else f"max abs diff ≤ {tolerance:g}")


@register_contract("approximate")
def approximate(check: StepCheck) -> Verdict:
    """Within budget: the accuracy drop vs the step's start ≤ the pass's budget (else ≤ the floor)."""
    budget = declared_budget(check.pass_)
    allowed = budget if budget is not None else check.settings.floor
    drop = check.reference - check.accuracy
    ok = drop <= allowed + 1e-9
    source = "budget" if budget is not None else "no budget declared; floor"
    return Verdict(ok, f"accuracy drop {drop:.2f} {'≤' if ok else '>'} {source} {allowed:g}", budget=budget)


@register_contract("changes")
def changes(check: StepCheck) -> Verdict:
    """A new function on purpose: after fine-tuning, accuracy within ``floor`` points of the baseline."""
    from ..train import evaluate

    settings = check.settings
    gm = check.model
    trainable = any(t.requires_grad and t.is_floating_point() for t in gm.parameters())
    retrained, history, outputs = None, [], None
    if settings.retrain_epochs > 0 and trainable:
        history = retrain(gm, check.mnist, epochs=settings.retrain_epochs, lr=settings.retrain_lr,
                          device=check.device, seed=settings.seed + check.index, progress=settings.progress,
                          what=f"step {check.index} ({check.pass_})")
        retrained = evaluate(gm, check.mnist, device=check.device).accuracy
        outputs = check.outputs(gm)  # the next step compares against the retrained model
    final = retrained if retrained is not None else check.accuracy
    limit = check.baseline - settings.floor
    ok = final >= limit - 1e-9
    if retrained is not None:
        what = "retrained accuracy"
    elif settings.retrain_epochs > 0:
        what = "accuracy (not retrained: no trainable parameters)"
    else:
        what = "accuracy (no retraining)"
    return Verdict(ok, f"{what} {final:.2f}% {'≥' if ok else '<'} floor {limit:.2f}%",
                   retrained_accuracy=retrained, history=history, outputs=outputs)


def declared_budget(p: Pass) -> float | None:
    """The accuracy budget (points) a pass declares, if any (an attribute, a property or a method)."""
    budget = getattr(p, "budget", None)
    if callable(budget):
        budget = budget()
    if budget is None:
        return None
    try:
        return float(budget)
    except (TypeError, ValueError):
        raise VerifyError(f"pass {p.label()!r} declares a budget {budget!r} that is not a number") from None
