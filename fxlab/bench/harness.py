"""The timing harness: candidates timed side by side in interleaved rounds.

Every timing: warm-up calls, then several rounds in which the candidates take turns (the order
rotates each round, and reverses every other round), so that the machine's noise (other work on a
shared CPU, frequency changes) hits every candidate alike; each round times enough calls to last
``round_time`` seconds (one call when it is 0). A :class:`Timing` holds the median over rounds and
the spread (interquartile range / median).

Why not ``torch.utils.benchmark`` as the timing primitive
----------------------------------------------------------
Evaluated on this project's CI machine (AMD EPYC VM, 2 cores shared with other work, torch 2.14,
2 torch threads): ``Linear(784, 128)`` at batch 256, float32 vs torch.ao dynamic int8, ratio of the
medians (7 rounds, 0.02 s per round and candidate), each approach repeated, the approaches
alternating so that they share the machine's state:

====================================  =====================  =====================  ===================
approach                              ratio mean, CV (12×)   ratio mean, CV (20×)   wall s per repeat
====================================  =====================  =====================  ===================
interleaved, perf_counter (kept)      3.52×, 25.9 %          3.27×, 28.4 %          0.97 / 0.98
interleaved, ``Timer.timeit(n)``      3.67×, 24.7 %          3.16×, 26.7 %          0.30 / 0.36
interleaved, ``blocked_autorange``    3.65×, 24.5 %          3.14×, 29.6 %          2.00 / 1.44
sequential ``blocked_autorange``      3.80×, 21.7 %          3.10×, 30.2 %          0.56 / 0.47
====================================  =====================  =====================  ===================

Every approach saw ratios from about 2.2× to 4.4×: the spread of the ratio is the same for each.
It is dominated by the machine's state (the ratio is bimodal, about 2.4× or 4.3×, most likely as
other work holds one of the two cores or not while a 2-thread float32 GEMM runs), which no timing
primitive removes; interleaving is what
makes both variants see the same state within one run. ``Timer`` brings nothing measurable for
the ratios and costs elsewhere:

- ``Timer.timeit(n)`` runs ``max(n // 100, 2)`` warm-up calls before every sample. The passes and
  training suites time one call per round (an ``fxlab.apply`` on 4 000 layers, a training epoch):
  that would triple their run time. ``blocked_autorange`` re-calibrates every round (4–7× the
  wall time of ``Timer.timeit`` above). (This harness's own extra wall time is its ``gc.collect()``
  before each round and the warm-up, outside the timed calls.)
- ``Timer`` defaults to one thread (``num_threads=1``), unlike the models' real use; passing the
  thread count is possible but is one more way to get the figures wrong.
- CUDA synchronisation and pausing the garbage collector (what ``timeit`` does) are three lines
  here.

So the primitive stays ``time.perf_counter`` around ``calls`` calls, with a CUDA synchronise on
either side; the interleaved rounds are the harness.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._util import first_line


@dataclass
class Timing:
    """Seconds per call: median over rounds, quartiles and extremes."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    rounds: int
    calls: int  # calls per round
    first: float | None  # the very first call (compilation, caches); not part of the statistics
    samples: tuple[float, ...] = ()  # seconds per call in each round, in round order (for paired ratios)

    @classmethod
    def of(cls, samples: list[float], calls: int, first: float | None) -> Timing:
        """The statistics of ``samples`` (seconds per call, one per round, in round order)."""
        s = sorted(samples)
        if len(s) >= 2:
            q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
        else:
            q1 = q3 = s[0]
        return cls(statistics.median(s), q1, q3, s[0], s[-1], len(s), calls, first, tuple(samples))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    def to_json(self) -> dict[str, float | int | None]:
        """Every figure, in seconds, under the names the JSON report uses."""
        return {
            "median_s": self.median,
            "q1_s": self.q1,
            "q3_s": self.q3,
            "min_s": self.min,
            "max_s": self.max,
            "spread": self.spread,
            "rounds": self.rounds,
            "calls_per_round": self.calls,
            "first_call_s": self.first,
            "samples_s": list(self.samples),
        }


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` (the type alone when there is no message), at most 240 characters."""
    return (f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__)[:240]


def failed(exc: BaseException) -> str:
    """A candidate's status when it raised: ``failed: Type: first line``."""
    return f"failed: {describe(exc)}"


def ratio(slow: Timing | str | None, fast: Timing | str | None) -> float | None:
    """How many times faster ``fast`` is than ``slow`` (``None`` unless both are timings):
    :func:`paired_ratio` of their rounds."""
    if isinstance(slow, Timing) and isinstance(fast, Timing):
        return paired_ratio(slow.samples, fast.samples, slow.median, fast.median)
    return None


def paired_ratio(slow: Sequence[float], fast: Sequence[float], slow_median: float,
                 fast_median: float) -> float | None:
    """The median over rounds of ``slow[r] / fast[r]``, for two candidates timed in the same rounds of
    one :func:`compare`; without such rounds (figures saved before they were kept), the ratio of the
    medians. Pairing by round cancels what the machine's state does to both within a round; measured
    here (``mymodule`` at batch 256, float32 against bf16 and against dynamic, 12 runs of 7 rounds each,
    three times), the run-to-run variation of the paired estimate was 0.5–5.8 points lower than that
    of the ratio of medians in all six cases (coefficients of variation 3.9–12.6 % against 4.7–13.5 %).

    >>> paired_ratio([2.0, 4.0, 2.2], [1.0, 2.0, 1.0], 2.2, 1.0)
    2.0
    >>> paired_ratio([], [], 3.0, 1.5)
    2.0
    """
    ratios = round_ratios(slow, fast)
    if ratios:
        return statistics.median(ratios)
    return slow_median / fast_median if fast_median > 0 else None


def round_ratios(top: Sequence[float] | None, bottom: Sequence[float] | None) -> list[float] | None:
    """``top[r] / bottom[r]`` for every round ``r`` of two candidates timed in the same rounds; None
    unless both have the same, non-zero number of rounds and every ``bottom`` time is positive.

    >>> round_ratios([2.0, 3.0], [1.0, 2.0]), round_ratios([1.0], []), round_ratios([1.0], [0.0])
    ([2.0, 1.5], None, None)
    """
    if not top or not bottom or len(top) != len(bottom) or min(bottom) <= 0:
        return None
    return [a / b for a, b in zip(top, bottom)]


def latency_ratio(slow: dict[str, Any] | None, fast: dict[str, Any] | None) -> float | None:
    """:func:`paired_ratio` of two timings as the JSON report stores them (``Timing.to_json``)."""
    if not slow or not fast or slow.get("median_s") is None or fast.get("median_s") is None:
        return None
    return paired_ratio(slow.get("samples_s") or [], fast.get("samples_s") or [], slow["median_s"], fast["median_s"])


def timing_fields(timing: Timing | str | None) -> dict[str, Any]:
    """A report row's timing fields: ``status="ok"``, the figures; or the status a failure left."""
    if isinstance(timing, Timing):
        return {"status": "ok", "time": timing.to_json(), "time_s": timing.median, "spread": timing.spread}
    return {"status": timing or "not run"}


def _sync(device: Any) -> None:
    if device is not None and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(fn: Callable[[], Any], calls: int, device: Any) -> float:
    """Seconds per call over ``calls`` calls of ``fn`` (the device synchronised on either side)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / calls


def _prepare(fn: Callable[[], Any], warmup: int, round_time: float, device: Any) -> tuple[int, float | None]:
    """Warm ``fn`` up; returns (calls that fill ``round_time``, seconds of the very first call)."""
    first = _time_calls(fn, 1, device) if warmup > 0 else None
    for _ in range(max(0, warmup - 1)):
        fn()
    if round_time <= 0:
        return 1, first
    one = _time_calls(fn, 1, device)
    return max(1, min(100_000, round(round_time / max(one, 1e-7)))), first


def _order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order: rotated by ``r``, reversed every other round."""
    k = r % max(1, len(names))
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def compare(
    candidates: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    round_time: float,
    warmup: int = 2,
    device: Any = None,
) -> dict[str, Timing | str]:
    """Time the candidates side by side; a candidate that raises gets its error text instead.

    Each candidate is called ``warmup`` times (the first call is recorded apart: it holds
    compilation; ``warmup=0`` when the caller has already run each candidate), then ``rounds``
    rounds run every candidate in turn, the order rotating (and reversing every other round) so
    that no candidate always follows the same neighbour. A round times as many calls as fill
    ``round_time`` seconds (one call when ``round_time`` is 0). The garbage collector is paused
    while a round runs, as ``timeit`` does. Results keep the order of ``candidates``.
    """
    results: dict[str, Timing | str] = {}
    live: dict[str, tuple[int, float | None]] = {}
    for name, fn in candidates.items():
        try:
            live[name] = _prepare(fn, warmup, round_time, device)
        except Exception as exc:  # a benchmark reports failures, it does not stop on them
            results[name] = failed(exc)
    samples: dict[str, list[float]] = {name: [] for name in live}
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            gc.collect()
            gc.disable()
            for name in _order(list(live), r):
                if name in results:
                    continue
                try:
                    samples[name].append(_time_calls(candidates[name], live[name][0], device))
                except Exception as exc:
                    results[name] = failed(exc)
            if gc_was_enabled:
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    for name, (calls, first) in live.items():
        results.setdefault(name, Timing.of(samples[name], calls, first))
    return {name: results[name] for name in candidates}
