"""``bisect``: find the first pass of a failing pipeline that breaks its contract, then its first bad rewrite.

Two binary searches, each a logarithmic number of verifications (contract checks of
:mod:`fxlab.verification.contracts`, run by the same ``_Run.check`` as ``verify``):

1. **The step.** The prefix ``passes[:m]`` is checked as one step against the input model, held to
   the contract of its weakest kind (``exact`` < ``approximate`` < ``changes``; approximate
   budgets add up). The empty prefix holds; the whole pipeline is checked first (if it holds,
   bisection stops: ``ok``). The smallest failing ``m`` is found by binary search: the culprit is
   pass ``m`` (0-based ``step = m - 1``).
2. **The site.** The culprit pass alone is checked against the model before it (the prefix
   ``passes[:step]`` applied by ``fxlab.apply``); if it fails and reports its sites
   (:mod:`fxlab.pipeline.sites`), ``fxlab.apply(before, [pass], limit=k)`` is checked for the
   smallest failing ``k`` (``k = 0`` rewrites nothing and holds): the culprit rewrite is the
   ``k``-th site.

Bound: with ``N`` steps and ``S`` rewrites in the culprit pass, at most
``1 + ceil(log2 N) + 1 + ceil(log2 S)`` verifications (the whole pipeline, the step search over
``1..N-1``, the culprit alone, the site search over ``1..S-1``).

Prefixes are built by ``fxlab.apply`` without retraining: a ``changes`` step inside a prefix is not
fine-tuned as ``verify`` would (the prefix is then held to the ``changes`` contract as a whole).

>>> import fxlab
>>> result = fxlab.bisect("mymodule", "fuse-linear-relu,quantize-linear{mode=dynamic}")   # doctest: +SKIP
>>> result.ok, result.step, result.site, result.verifications                            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..core import diff_graphs
from ..pipeline import Pass, PassRecord, apply, records
from ..pipeline.base import KINDS
from .contracts import declared_budget
from .report import Step
from .run import _calibrates, _Run, calibrate, prepare, with_calibration, with_data

__all__ = ["BisectResult", "bisect", "verification_bound"]


def verification_bound(steps: int, sites: int) -> int:
    """The most verifications ``bisect`` runs for ``steps`` passes and ``sites`` rewrites in the culprit."""
    return 1 + math.ceil(math.log2(max(steps, 1))) + 1 + math.ceil(math.log2(max(sites, 1)))


@dataclass
class BisectResult:
    """What ``bisect`` found.

    ``ok`` is True when the whole pipeline holds its contract (then ``step`` and ``site`` are None).
    ``step`` is the 0-based index of the first pass that breaks it, ``pass_text`` that pass,
    ``site`` the node of its first rewrite that breaks it (None when the pass reports no sites, or
    when it holds alone: the error built up over earlier steps). ``verifications`` is how many
    contract checks ran; ``checks`` says which (``(what, ok)``). ``culprit`` is the culprit pass's
    step checked alone (per-node numerics, site records), ``site_lines`` the site's printout before
    and after the rewrite.
    """

    ok: bool
    steps: int
    step: int | None = None
    pass_text: str | None = None
    site: str | None = None
    site_index: int | None = None  # 1-based: the site is the pass's ``site_index``-th rewrite
    sites: int | None = None  # rewrites of the culprit pass (None: it reports no sites)
    verifications: int = 0
    bound: int = 0
    seconds: float = 0.0
    model_name: str = ""
    pipeline: str = ""
    device: str = ""
    culprit: Step | None = field(default=None, repr=False)
    site_lines: list[tuple[str, str, str]] = field(default_factory=list)
    checks: list[tuple[str, bool]] = field(default_factory=list)
    note: str = ""

    def text(self) -> str:
        """What ``python -m fxlab.bisect`` prints."""
        lines = [f"bisect {self.model_name} on {self.device}: {self.pipeline}"]
        lines += [f"  check {i}: {what}: {'ok' if ok else 'FAIL'}" for i, (what, ok) in enumerate(self.checks, 1)]
        count = f"{self.verifications} verifications (bound {self.bound}), {self.seconds:.1f}s"
        if self.ok:
            lines.append(f"ok: the whole pipeline ({self.steps} steps) holds its contract; nothing to bisect ({count})")
            return "\n".join(lines)
        lines.append(f"culprit: step {self.step} (0-based; step {self.step + 1} of {self.steps}): {self.pass_text}")
        if self.culprit is not None:
            lines.append(f"  alone: {self.culprit.verdict}")
        if self.site is not None:
            lines.append(f"  site: {self.site} (rewrite {self.site_index} of {self.sites})")
            for change, before, after in self.site_lines:
                lines.append(f"    {change}")
                lines.append(f"      before: {before or '(none)'}")
                lines.append(f"      after:  {after or '(none)'}")
        else:
            lines.append(f"  site: none ({self.note})")
        lines.append(count)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data."""
        return {"ok": self.ok, "steps": self.steps, "step": self.step, "pass": self.pass_text, "site": self.site,
                "site_index": self.site_index, "sites": self.sites, "verifications": self.verifications,
                "bound": self.bound, "seconds": self.seconds, "model": self.model_name, "pipeline": self.pipeline,
                "checks": [[w, ok] for w, ok in self.checks], "note": self.note,
                "culprit": self.culprit.to_dict() if self.culprit is not None else None}


@dataclass
class _Prefix(Pass):
    """The first passes of a pipeline, checked as one step (kind: the weakest of theirs)."""

    passes: list[Pass] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kind = max((p.kind for p in self.passes), key=_rank, default="exact")  # type: ignore[misc]
        budgets = [declared_budget(p) for p in self.passes if p.kind == "approximate"]
        self.budget = sum(b for b in budgets if b is not None) if any(b is not None for b in budgets) else None  # type: ignore[misc]
        self.calibrates = any(_calibrates(p) for p in self.passes)  # type: ignore[misc]

    def label(self) -> str:
        return f"steps 1-{len(self.passes)}"

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)


def _rank(kind: str) -> int:
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def bisect(
    model: nn.Module | str,
    passes: str | Pass | Iterable[Pass],
    *,
    data: Any = None,
    retrain_epochs: float = 1,
    device: str | torch.device | None = None,
    tolerance: float = 1e-4,
    floor: float = 1.0,
    nodes: bool = True,
    **kwargs: Any,
) -> BisectResult:
    """Find the first pass of ``passes`` that breaks its contract on ``model``, and its first bad rewrite.

    Arguments as :func:`fxlab.verify`'s. Returns a :class:`BisectResult` (``ok``, ``step``, ``pass_text``,
    ``site``, ``verifications``); it runs at most :func:`verification_bound` contract checks.
    """
    start = time.perf_counter()
    run, pipeline, name = prepare(model, passes, data=data, retrain_epochs=retrain_epochs, device=device,
                                  tolerance=tolerance, floor=floor, nodes=nodes, **kwargs)
    n = len(pipeline)
    result = BisectResult(ok=False, steps=n, model_name=name, pipeline=",".join(str(p) for p in pipeline),
                          device=str(run.device))

    def check_prefix(m: int) -> bool:
        step = _check(run, 0, _Prefix(pipeline[:m]), *_apply_all(run, run.current, pipeline[:m]))
        result.checks.append((f"steps 1-{m} against the input model", step.ok))
        return step.ok

    if check_prefix(n):
        result.ok = True
    else:
        lo, hi = 0, n  # prefix lo holds, prefix hi fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if check_prefix(mid):
                lo = mid
            else:
                hi = mid
        culprit = pipeline[hi - 1]
        result.step, result.pass_text = hi - 1, str(culprit)
        before, _ = _apply_all(run, run.current, pipeline[: hi - 1])
        local = _rebase(run, before, observed=any(_calibrates(p) for p in pipeline[: hi - 1]))
        new, record = _apply_one(local, culprit, None)
        result.culprit = _check(local, hi, culprit, new, record)
        result.checks.append((f"step {hi} alone against the model before it", result.culprit.ok))
        if record.rewritten is not None:
            result.sites = len(record.rewritten)
        if result.culprit.ok:
            result.note = (f"step {hi} holds alone: the error built up over earlier steps crosses the contract here")
        elif record.rewritten is None:
            result.note = "the pass reports no site records (its sites are unknown)"
        elif not record.rewritten:
            result.note = "the pass rewrote no site"
        else:
            lo, hi_k = 0, len(record.rewritten)  # limit=0 rewrites nothing: it holds
            bad = record
            while hi_k - lo > 1:
                mid = (lo + hi_k) // 2
                new_k, record_k = _apply_one(local, culprit, mid)
                ok = _check(local, hi, culprit, new_k, record_k).ok
                result.checks.append((f"step {hi} with its first {mid} rewrites", ok))
                if ok:
                    lo = mid
                else:
                    hi_k, bad = mid, record_k
            result.site_index = hi_k
            result.site = record.rewritten[hi_k - 1]
            result.site_lines = _site_lines(bad, result.site)
    result.verifications = len(result.checks)
    result.bound = verification_bound(n, result.sites or 1)
    result.seconds = time.perf_counter() - start
    return result


def _check(run: _Run, index: int, p: Pass, new: fx.GraphModule, record: PassRecord) -> Step:
    step, _, _ = run.check(index, p, new, record)
    return step


def _apply_one(run: _Run, p: Pass, limit: int | None) -> tuple[fx.GraphModule, PassRecord]:
    return run._apply(p, limit)


def _apply_all(run: _Run, model: fx.GraphModule, passes: list[Pass]) -> tuple[fx.GraphModule, PassRecord]:
    """``model`` after ``passes`` (calibrated where a pass asks), and one record for them all."""
    t0 = time.perf_counter()
    gm = model
    for p in passes:
        p = with_data(with_calibration(p, run.calibration), run.mnist)
        gm = apply(gm, [p])
        gm.to(run.device).eval()
        if _calibrates(p):
            calibrate(gm, run.calibration())
    if gm is model:
        gm = copy.deepcopy(model)
    mine = records(gm)[len(records(model)):]
    rewritten = None if any(r.rewritten is None for r in mine) else [s for r in mine for s in r.rewritten or []]
    skipped = None if rewritten is None else [s for r in mine for s in r.skipped or []]
    diff = diff_graphs(model, gm)
    record = PassRecord("prefix", "", time.perf_counter() - t0, len(diff.before), len(diff.after), len(diff.added),
                        len(diff.removed), len(diff.changed), "", len(diff.replaced), diff, rewritten, skipped)
    return gm, record


def _rebase(run: _Run, model: fx.GraphModule, *, observed: bool) -> _Run:
    """A run that starts from ``model``: its outputs on the check images and its test accuracy (the
    reference of an ``approximate`` contract); the same data, settings and baseline."""
    from ..train import evaluate
    from .run import _outputs

    probe = copy.deepcopy(model) if observed else model
    local = copy.copy(run)
    local.current, local._observed = model, observed
    local.outputs = _outputs(probe, run.images)
    local.reference = evaluate(probe, run.mnist, device=run.device).accuracy
    return local


def _site_lines(record: PassRecord, site: str) -> list[tuple[str, str, str]]:
    """(change, before, after): the site's printout line before and after the rewrite (from the graph
    diff ``apply`` recorded), and any node that replaced it."""
    diff = record.diff
    if diff is None:
        return []
    found = []
    if site in diff.before or site in diff.after:
        change = ("changed" if site in diff.changed else "removed" if site in diff.removed
                  else "unchanged printout (its parameters or attributes changed)" if site in diff.after else "")
        found.append((f"{site}: {change}".rstrip(": "), diff.before.get(site, ""), diff.after.get(site, "")))
    for new, olds in diff.replaced.items():
        if site in olds:
            found.append((f"replaced {', '.join(olds)} → {new}", " / ".join(diff.before[o] for o in olds),
                          diff.after[new]))
    return found
