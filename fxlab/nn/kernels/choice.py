"""Kernel choice by measurement: each quantized module's implementations timed once per shape, the
fastest kept and cached on disk.

A quantized or fused module offers several implementations of one arithmetic (an :class:`Op`):
torch ops (the reference), ``torch._int_mm``, oneDNN, the Numba kernels of :mod:`fxlab.nn.kernels`,
native half GEMMs. Which is fastest depends on the CPU (AVX512-VNNI, AVX512-BF16, AMX), the
libraries and the shape, so no constant picks it. The first call of an op on a *shape bucket*
(rows rounded up to a power of two × in-features × out-features; for a conv, batch rounded up ×
C×H×W × output channels and geometry) times every candidate that is
exact for the mode on that very input (a warm-up call, then 3-15 interleaved rounds within about
3 ms each, each candidate's median over the rounds compared), checks each one's output against the
reference's (int8 codes equal, floats within the mode's rounding), and keeps the fastest. Decisions are cached in memory and in a JSON
file under the user cache (``<cache>/fxlab/kernels/``, written atomically), named by a key of the
CPU model, its ISA flags, torch's thread count, the torch, numba and fxlab versions and a hash of
the code in ``fxlab/nn``, like Inductor's autotune cache: another machine, another torch or changed
kernels measure afresh. A decision measured while the machine is busy
(its 1-minute load average above its CPU count, or torch's thread pool starved by other work:
other work then weighs on the times, on torch's multi-threaded ops most) is used but not written to disk, and measured again after ``RECHECK_S``
seconds once the machine is no longer busy.

``FXLAB_KERNELS`` (read at import) sets the policy:

- ``auto`` (default): measured choice as above;
- ``torch``: the reference torch ops everywhere, nothing timed (the test suite's setting);
- a candidate's name (``numba``, ``numba+int_mm``, ``int_mm``, ``native``, ``onednn``, ...): that
  candidate wherever an op has it, the reference elsewhere.

Nothing is timed on the autograd path, under ``torch.compile``, ``torch.export``, FX or TorchScript
tracing, for CUDA tensors, or for non-contiguous inputs (a 4-D channels-last input excepted):
:func:`choose` returns None there and the module runs its reference path.
``python -m fxlab.bench --suite kernels`` prints every decision with its candidates' times.

>>> from fxlab.nn.kernels import choice
>>> choice.bucket(200, 784, 128)
'256x784x128'
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import outside_inference_mode

log = logging.getLogger(__name__)

__all__ = ["CHANNELS_LAST", "Candidate", "Decision", "Op", "bucket", "cache_path", "choose", "decisions", "eligible",
           "forced", "machine", "machine_key", "mismatch", "ops", "policy", "remeasured", "reset"]

#: Seconds of timed calls per candidate after which measuring stops (once ``MIN_ROUNDS`` have run).
TIME_BUDGET = 3e-3
#: Rounds at least and at most: each candidate's median over the rounds decides.
MIN_ROUNDS = 3
MAX_ROUNDS = 15
#: One timed sample is this many seconds of back-to-back calls at least (up to ``MAX_REPEAT`` calls):
#: a kernel of a few µs is timed over several calls, so the timer and one stray interrupt weigh less.
SAMPLE_TIME = 50e-6
MAX_REPEAT = 16
#: A candidate this many times slower than the fastest after two rounds is not timed further.
DROP_FACTOR = 8.0
#: Seconds after which a decision measured on a busy machine is measured again (once it is not busy).
RECHECK_S = 10.0

_POLICY = os.environ.get("FXLAB_KERNELS", "auto").strip().lower() or "auto"
_LOCK = threading.RLock()


@dataclass(frozen=True)
class Candidate:
    """One implementation of an op: ``fn(module, x, *args)`` returns the output; ``available()``
    says whether it can run on this machine and build (a missing library, no native bf16, ...)."""

    name: str
    fn: Callable[..., Tensor]
    available: Callable[[], bool] = lambda: True
    note: str = ""


@dataclass
class Op:
    """An arithmetic with interchangeable implementations, the first of ``candidates`` being the
    reference (torch ops). ``exact``: outputs must equal the reference's. Otherwise integer outputs
    (requantized codes) may differ by one where a rounding tie fell the other way (in at most 0.1 %
    of them), and float outputs by at most ``bound(module, x, *args)`` (elementwise; the mode's
    rounding) when given, else by ``rtol`` relative to each value plus ``rtol`` × the largest."""

    name: str
    candidates: list[Candidate]
    exact: bool = False
    rtol: float = 1e-5
    bound: Callable[..., Tensor] | None = None
    _memo: dict[tuple[int, int | str, int | str], Candidate] = field(default_factory=dict, repr=False)

    @property
    def reference(self) -> Candidate:
        return self.candidates[0]

    def candidate(self, name: str) -> Candidate | None:
        return next((c for c in self.candidates if c.name == name), None)

    def __post_init__(self) -> None:
        _OPS[self.name] = self


@dataclass
class Decision:
    """What was chosen for one op and shape bucket, and why."""

    op: str
    bucket: str
    chosen: str
    reason: str  # "fastest exact", "forced by FXLAB_KERNELS", "only candidate", "cached"
    times_us: dict[str, float | None] = field(default_factory=dict)  # None: not run (unavailable)
    rejected: dict[str, str] = field(default_factory=dict)  # candidate → why it was left out
    source: str = "measured"  # "measured" (this process), "disk" (the cache file), "forced"
    load: float | None = None  # the 1-minute load average per CPU while it was measured (None: unknown)
    busy: bool = False  # measured while other work wanted more CPUs than there are: not cached on disk

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "bucket": self.bucket, "chosen": self.chosen, "reason": self.reason,
                "times_us": self.times_us, "rejected": self.rejected, "load": self.load}


_OPS: dict[str, Op] = {}
_READ_DISK = True
_DECISIONS: dict[tuple[str, str], Decision] = {}
_DISK: dict[str, Any] | None = None
#: (op name, memo key) → (candidate, when to measure again): decisions measured on a busy machine
_PROVISIONAL: dict[tuple[str, tuple[int, int | str, int | str]], tuple[Candidate, float]] = {}


def policy() -> str:
    """The current policy: ``auto``, ``torch`` or a candidate's name (``FXLAB_KERNELS``)."""
    return _POLICY


@contextlib.contextmanager
def forced(name: str) -> Iterator[None]:
    """Run with policy ``name`` (``auto``, ``torch`` or a candidate's name) within this block;
    in-memory decisions are kept apart and restored afterwards (for tests and comparisons).

    >>> with forced("torch"):
    ...     policy()
    'torch'
    """
    with _setting("_POLICY", name.strip().lower(), keep_decisions=True):
        yield


@contextlib.contextmanager
def _setting(name: str, value: Any, *, keep_decisions: bool) -> Iterator[None]:
    """This module's global ``name`` set to ``value`` within the block, in-memory decisions cleared
    on entry; on exit the global is restored and the decisions made before the block come back
    (``keep_decisions``) or are forgotten (read again from the cache file)."""
    g = globals()
    with _LOCK:
        saved, saved_memo = g[name], {op_name: dict(op._memo) for op_name, op in _OPS.items()}
        g[name] = value
        saved_provisional = dict(_PROVISIONAL)
        _PROVISIONAL.clear()
        for op in _OPS.values():
            op._memo.clear()
    try:
        yield
    finally:
        with _LOCK:
            g[name] = saved
            _PROVISIONAL.clear()
            if keep_decisions:
                _PROVISIONAL.update(saved_provisional)
            for op_name, op in _OPS.items():
                op._memo.clear()
                if keep_decisions:
                    op._memo.update(saved_memo.get(op_name, {}))


def bucket(rows: int, k: int, n: int) -> str:
    """The shape bucket of a (rows, k) input times a (n, k) weight: rows rounded up to a power of two."""
    return f"{1 << max(0, rows - 1).bit_length()}x{k}x{n}"


_is_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling
_is_tracing = getattr(torch._C, "_is_tracing", torch.jit.is_tracing)  # without the is_scripting() wrapper
_is_fx_tracing = getattr(torch.fx._symbolic_trace, "_get_is_fx_tracing", lambda: False)
_is_exporting = torch.compiler.is_exporting


#: What a 4-D channels-last input adds to its bucket: the same shape in that layout times differently.
CHANNELS_LAST = "/nhwc"


def _layout(x: Tensor) -> str | None:
    """``""`` for a contiguous ``x``, :data:`CHANNELS_LAST` for a 4-D channels-last one (a conv's or
    a max-pool's input; the int8 reference conv and ``native-nhwc`` write that layout), None for any
    other strides."""
    if x.is_contiguous():
        return ""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return CHANNELS_LAST
    return None


def eligible(x: Tensor) -> bool:
    """Whether a choice applies to input ``x``: a plain CPU tensor, contiguous (or a 4-D one in
    channels-last layout), outside autograd, not being compiled, exported or traced."""
    return not (
        type(x) is not Tensor
        or not x.is_cpu
        or _layout(x) is None
        or (x.requires_grad and _is_grad_enabled())
        or _is_compiling()
        or _is_tracing()
        or _is_fx_tracing()
        or _is_exporting()
    )


def choose(op: Op, module: Any, x: Tensor, out_features: int | str, *args: Any) -> Candidate | None:
    """The candidate of ``op`` to run for ``x`` on ``module`` (whose further arguments are
    ``args``); None when no choice applies (see :func:`eligible`): the caller's reference path runs.
    ``x`` is 2-D for a Linear; a conv passes its 4-D input and, as ``out_features``, its output
    channels with its geometry (:meth:`~fxlab.nn.quantized_conv._ConvBase.bucket_suffix`), a
    max-pool its window (``maxk2x2s2x2``). A 4-D input in channels-last layout has buckets of its own
    (``…x64k3x3/nhwc``).

    Under policy ``auto`` the first call on a new shape bucket measures the candidates on ``x``.
    (Called on every quantized forward: the checks of :func:`eligible` inlined, one dict lookup.
    FX symbolic tracing needs no check of its own here (its thread-local flag costs 0.4 µs to read):
    it hands modules a ``Proxy``, not a Tensor, and never runs a leaf module's forward.)
    """
    if (
        type(x) is not Tensor
        or not x.is_cpu
        or (x.requires_grad and _is_grad_enabled())
        or _is_compiling()
        or _is_tracing()
        or _is_exporting()
    ):
        return None
    shape = x.shape
    if not x.is_contiguous():
        if _layout(x) is None:
            return None
        out_features = f"{out_features}{CHANNELS_LAST}"
    k = shape[1] if len(shape) == 2 else "x".join(map(str, shape[1:]))  # a conv's input: C×H×W
    key = ((shape[0] - 1).bit_length(), k, out_features)
    c = op._memo.get(key)
    if c is None:
        c = _decide(op, key, module, x, args)
    return c


def _decide(op: Op, memo_key: tuple[int, int | str, int | str], module: Any, x: Tensor, args: tuple[Any, ...]) -> Candidate:
    with _LOCK:
        c = op._memo.get(memo_key)
        if c is not None:
            return c
        held = _PROVISIONAL.get((op.name, memo_key))
        if held is not None:  # measured on a busy machine: measured again once it is not
            now = time.monotonic()
            if now < held[1]:
                return held[0]
            if _busy():
                _PROVISIONAL[(op.name, memo_key)] = (held[0], now + RECHECK_S)
                return held[0]
            del _PROVISIONAL[(op.name, memo_key)]
        bits, k, n = memo_key
        key = f"{1 << max(0, bits)}x{k}x{n}"
        pol = _POLICY
        if pol == "torch":
            decision = Decision(op.name, key, op.reference.name, "reference (FXLAB_KERNELS=torch)", source="forced")
        elif pol != "auto":
            forced_c = op.candidate(pol)
            usable = forced_c is not None and _available(forced_c)
            decision = Decision(op.name, key, pol if usable else op.reference.name,
                                f"forced by FXLAB_KERNELS={pol}" if usable else
                                f"FXLAB_KERNELS={pol}: not a candidate here, reference used", source="forced")
        else:
            decision = _from_disk(op.name, key) or _measure(op, key, module, x, args)
        c = op.candidate(decision.chosen) or op.reference
        if decision.busy:
            _PROVISIONAL[(op.name, memo_key)] = (c, time.monotonic() + RECHECK_S)
        else:
            op._memo[memo_key] = c
        _DECISIONS[(op.name, key)] = decision
        return c


def _available(c: Candidate) -> bool:
    try:
        return bool(c.available())
    except Exception:  # an availability probe that fails means: not available
        return False


def _load_per_cpu() -> float | None:
    """The 1-minute load average divided by the CPUs this process may use (None where unknown)."""
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return os.getloadavg()[0] / max(1, cpus)
    except (AttributeError, OSError):  # no load average (Windows)
        return None


#: torch's intra-op thread pool splits an elementwise op from this many elements (``at::internal::GRAIN_SIZE``)
_GRAIN = 32768
_PROBE: list[Tensor] = []


def _probe() -> Tensor:
    """The tensor :func:`_pool_contended` adds to in place, made on first use. Made outside inference
    mode even when the first use is inside it: an inference tensor could not be written in place
    by a later measurement outside."""
    if not _PROBE:
        with outside_inference_mode():
            _PROBE.append(torch.zeros(2 * _GRAIN + _GRAIN // 2))
    return _PROBE[0]


def _pool_contended() -> bool:
    """Whether torch's intra-op thread pool is starved by other work right now: an in-place add
    of two grains, which the pool splits over two threads, is compared with one of half a grain,
    which runs on the calling thread alone. Without contention the split one takes about twice as
    long (twice the elements per thread) plus a fork-join of µs; when another process holds a core
    it waits for a scheduler slice (ms, a thousand times longer, as every multi-threaded GEMM does).
    Best of three each (the split one stops at its first quick call): a spike does not count, only
    lasting contention."""
    if torch.get_num_threads() < 2:
        return False
    with torch.no_grad():
        probe = _probe()
        part, split = probe[: _GRAIN // 2], probe[_GRAIN // 2 :]
        limit = 10 * min(_once(lambda: part.add_(0.0)) for _ in range(3)) + 50e-6
        return all(_once(lambda: split.add_(0.0)) > limit for _ in range(3))  # stops at the first quick one


def _overloaded(load: float | None) -> bool:
    """Whether a load average per CPU (:func:`_load_per_cpu`) means more work than CPUs."""
    return load is not None and load > 1.0


def _busy() -> bool:
    """Whether other work weighs on the times now: the 1-minute load average above the CPU count,
    or torch's thread pool starved (:func:`_pool_contended`)."""
    return _overloaded(_load_per_cpu()) or _pool_contended()


def _once(fn: Callable[[], Tensor], repeat: int = 1) -> float:
    """Seconds per call of ``fn``, over ``repeat`` calls back to back."""
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def mismatch(op: Op, out: Tensor, ref: Tensor, module: Any, x: Tensor, *args: Any) -> str | None:
    """Why ``out`` (a candidate's) is not the mode's numbers that ``ref`` (the reference's) are;
    None when it is. (The tests hold every candidate to this too.)"""
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return f"shape/dtype {tuple(out.shape)} {out.dtype}, expected {tuple(ref.shape)} {ref.dtype}"
    if op.exact:
        return None if torch.equal(out, ref) else f"{int((out != ref).sum())} of {out.numel()} values differ"
    if not out.is_floating_point():
        diff = (out.int() - ref.int()).abs()
        off = int((diff > 0).sum())
        if int(diff.max()) > 1 or off > max(1, out.numel() // 1000):
            return f"{off} of {out.numel()} codes differ (at most {int(diff.max())})"
        return None
    diff = (out - ref).abs()
    allowed = (op.bound(module, x, *args) if op.bound is not None
               else op.rtol * (ref.abs() + ref.abs().max()))
    if not bool((diff <= allowed).all()) or bool(out.isnan().ne(ref.isnan()).any()):
        return f"max |diff| {float(diff.max()):.3g} beyond the mode's rounding"
    return None


def _measure(op: Op, key: str, module: Any, x: Tensor, args: tuple[Any, ...]) -> Decision:
    """Time the available candidates on ``x``, interleaved: round after round each one is timed
    once (a shared CPU's load then hits them alike; the order alternates), and each candidate's
    *median* over the rounds decides, so that neither one lucky call nor one spike of load does.
    A sample is one call, or several back to back for a kernel of a few µs (``SAMPLE_TIME``).
    A candidate over 4 × ``DROP_FACTOR`` × the fastest after one round, or ``DROP_FACTOR`` × after
    two, is dropped; rounds stop after ``MAX_ROUNDS``, or after ``MIN_ROUNDS`` once ``TIME_BUDGET``
    per candidate is spent. Each candidate's output is checked against the reference's first
    (:func:`mismatch`): one that is not the mode's numbers is never chosen."""
    samples: dict[str, list[float]] = {}
    load_before, contended = _load_per_cpu(), _pool_contended()
    times: dict[str, float | None] = {}
    rejected: dict[str, str] = {}
    calls: dict[str, Callable[[], Tensor]] = {}
    repeat: dict[str, int] = {}
    with torch.no_grad():
        ref = op.reference.fn(module, x, *args)
        for c in op.candidates:
            times[c.name] = None
            if not _available(c):
                rejected[c.name] = c.note or "not available here"
                continue
            try:
                out = c.fn(module, x, *args)  # also the warm-up call (JIT loading, packing, caches)
                why = None if c is op.reference else mismatch(op, out, ref, module, x, *args)
            except Exception as exc:  # a candidate that fails is left out, never fatal
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            if why is not None:
                rejected[c.name] = why
                # the reference or another candidate runs instead: worth a line with -v (and in the
                # kernels suite's table), not a warning on a user's inference
                log.info("kernel %s for %s %s left out: %s", c.name, op.name, key, why)
                continue
            calls[c.name] = functools.partial(c.fn, module, x, *args)
        spent = 0.0
        for r in range(MAX_ROUNDS):
            for name in list(calls) if r % 2 == 0 else list(calls)[::-1]:
                n = repeat.get(name, 1)
                dt = _once(calls[name], n)
                spent += dt * n
                samples.setdefault(name, []).append(dt)
                if r == 0:  # from the second round on, a sample lasts SAMPLE_TIME at least
                    repeat[name] = max(1, min(MAX_REPEAT, int(SAMPLE_TIME / max(dt, 1e-9))))
            if r <= 1:  # after one round only the hopeless go (a spike of load is rarely that large)
                typical = {n: min(v) if r == 0 else statistics.median(v) for n, v in samples.items() if n in calls}
                fastest = min(typical.values(), default=0.0)
                factor = DROP_FACTOR * (4 if r == 0 else 1)
                for name in [n for n, t in typical.items() if t > factor * fastest]:
                    del calls[name]
            if r + 1 >= MIN_ROUNDS and spent >= TIME_BUDGET * max(1, len(calls)):
                break
    best = {n: statistics.median(v) for n, v in samples.items()}
    times.update({n: t * 1e6 for n, t in best.items()})
    chosen = min(best, key=best.__getitem__) if best else op.reference.name
    rounds = max((len(v) for v in samples.values()), default=0)
    reason = ("only candidate" if len(best) <= 1
              else f"fastest of {len(best)} exact candidates (medians of up to {rounds} rounds)")
    load = max((v for v in (load_before, _load_per_cpu()) if v is not None), default=None)
    contended = contended or _pool_contended()
    busy = _overloaded(load) or contended
    if busy and len(best) > 1:
        why = "torch's thread pool starved by other work" if contended else f"load {load:.1f} per CPU"
        reason += f"; the machine was busy ({why}): not cached, measured again later"
    decision = Decision(op.name, key, chosen, reason, times, rejected, load=None if load is None else round(load, 2),
                        busy=busy and len(best) > 1)
    log.info("kernel choice %s %s: %s (%s)", op.name, key, chosen,
             ", ".join(f"{n} {t:.1f} µs" for n, t in times.items() if t is not None))
    if not decision.busy:
        _to_disk(decision)
    return decision


# --------------------------------------------------------------------------------------------
# the machine and the disk cache


@functools.cache
def machine() -> dict[str, Any]:
    """What a decision depends on besides the shape: CPU model and ISA flags, torch threads, torch,
    numba, fxlab and the code of its modules."""
    import fxlab

    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == (platform.processor() or platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split()
                               if f.startswith(("avx", "amx", "fma", "f16c", "sse4")))
    except OSError:
        pass
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        capability = ""
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = None
    return {"cpu": model, "isa_flags": flags, "torch_capability": capability, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "numba": numba_version, "fxlab": fxlab.__version__, "code": _code_hash()}


def _code_hash() -> str:
    """A hash of the modules the candidates live in (``fxlab/nn``): a changed kernel is measured
    afresh, and so is one a bug had kept out, even where fxlab's version number stayed the same."""
    digest = hashlib.sha1()
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_key() -> str:
    """A short hash of :func:`machine`: the cache file's name."""
    text = json.dumps(machine(), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cache_path() -> Path:
    """The JSON file holding this machine's decisions (``<user cache>/fxlab/kernels/<key>.json``)."""
    from ...data import cache_dir

    return cache_dir() / "kernels" / f"choices-{machine_key()}.json"


def _disk() -> dict[str, Any]:
    global _DISK
    if _DISK is None:
        _DISK = {}
        path = cache_path()
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("machine") == machine():
                _DISK = dict(doc.get("decisions", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable kernel choice cache %s: %s", path, exc)
    return _DISK


def _from_disk(op: str, key: str) -> Decision | None:
    if not _READ_DISK:
        return None
    d = _disk().get(f"{op}/{key}")
    target = _OPS.get(op)
    if not isinstance(d, dict) or target is None or target.candidate(str(d.get("chosen"))) is None:
        return None
    return Decision(op, key, d["chosen"], d.get("reason", ""), dict(d.get("times_us", {})),
                    dict(d.get("rejected", {})), source="disk", load=d.get("load"))


def _to_disk(decision: Decision) -> None:
    from ..._util import write_atomic

    disk = _disk()
    disk[f"{decision.op}/{decision.bucket}"] = decision.to_json()
    doc = {"machine": machine(), "decisions": disk}
    try:
        write_atomic(cache_path(), json.dumps(doc, indent=1, sort_keys=True), make_dirs=True)
    except Exception as exc:  # a read-only cache costs a re-measurement next time, nothing more
        log.warning("could not write the kernel choice cache %s: %s", cache_path(), exc)


@contextlib.contextmanager
def remeasured() -> Iterator[None]:
    """Within this block, under policy ``auto``, every shape bucket is measured afresh (the cache
    file is not read, and is updated with the new decisions); in-memory decisions are forgotten
    on entry. ``python -m fxlab.bench --suite kernels`` measures this way."""
    with _setting("_READ_DISK", False, keep_decisions=False):
        yield


def ops() -> dict[str, Op]:
    """Every op registered so far, by name (the quantized modules register theirs at import)."""
    return dict(_OPS)


def decisions() -> list[Decision]:
    """Every decision taken (or read from the disk cache) in this process, in order."""
    return list(_DECISIONS.values())


def reset(*, disk: bool = False) -> None:
    """Forget the decisions of this process (and with ``disk``, re-read the cache file next time)."""
    global _DISK
    with _LOCK:
        for op in _OPS.values():
            op._memo.clear()
        _PROVISIONAL.clear()
        _DECISIONS.clear()
        if disk:
            _DISK = None
