"""Sweeps: many ``verify`` runs from one TOML file, one process or sharded over torch.distributed ranks.

A sweep file is a list of runs, each with ``verify``'s options (the keyword arguments of
``fxlab.verify``; the command line's flags with ``_`` for ``-``), and an optional ``[defaults]``
table of options common to every run::

    [defaults]
    retrain_epochs = 0
    device = "cpu"

    [[run]]
    model = "mymodule"
    passes = "fuse-linear-relu,quantize-linear{mode=dynamic}"

    [[run]]
    model = "runs/model_state_dict.pth"     # relative paths are relative to the sweep file
    passes = "insert-relu{after=layer3}"
    retrain_epochs = 0.1

``load_sweep(path)`` reads and checks the whole file before anything runs (an unknown option names
the run and the closest option; a pipeline that does not parse, a model that does not exist, a bad
value or device are said the same way). ``run_sweep(runs)`` verifies every run and returns a
``SweepReport``: one row per run (``model``, ``passes``, ``ok``, ``rank``, the run's ``Report`` as
plain data, or the ``error`` that kept it from running), in file order.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the runs are sharded over the ranks:
rank ``r`` of ``N`` runs entries ``r``, ``r + N``, … on its own (each rank verifies on
``cuda:LOCAL_RANK`` with CUDA, unless its run names a device); then a process group (gloo on CPU,
NCCL with CUDA) gathers the rows so that every rank returns the same merged report (the command
prints and writes it on rank 0 only), and is destroyed. The group is made only after the runs: under
one, ``fxlab.train.fit`` would retrain as DistributedDataParallel across ranks that hold different
models. A run that raises becomes a row with its error, so one bad run never keeps the other ranks
waiting.

>>> from fxlab.verification.sweep import parse_sweep
>>> runs = parse_sweep('''
... [defaults]
... retrain_epochs = 0
... [[run]]
... model = "mymodule"
... passes = "fuse-linear-relu"
... [[run]]
... model = "simplenn"
... passes = "fold-batchnorm,remove-dropout"
... ''')
>>> [(r.index, r.model, r.passes, r.options["retrain_epochs"]) for r in runs]
[(1, 'mymodule', 'fuse-linear-relu', 0), (2, 'simplenn', 'fold-batchnorm,remove-dropout', 0)]
>>> parse_sweep('[[run]]\\nmodel = "mymodule"\\npasses = "dce"\\nretrain_epoch = 0')
Traceback (most recent call last):
...
fxlab.errors.VerifyError: <sweep>: run 1: unknown option 'retrain_epoch' (closest: retrain_epochs)
"""

from __future__ import annotations

import datetime
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._util import first_line, write_atomic
from ..errors import FxlabError, UsageError, VerifyError, did_you_mean
from .retrain import RETRAIN_LR
from .run import _device, _settings, verify

try:  # Python ≥ 3.11
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (a dependency there)
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TIMEOUT", "SWEEP_FORMAT", "Ranks", "SweepReport", "SweepRow", "SweepRun", "load_sweep",
           "options", "parse_sweep", "ranks_from_env", "run_one", "run_sweep"]

#: The ``format`` field of the sweep's JSON report.
SWEEP_FORMAT = "fxlab.sweep/1"

#: How long a rank waits for the others to finish their runs before the results are gathered (a
#: rank that finishes its share early waits in the gather; torch's default, 30 minutes for gloo,
#: is shorter than many sweeps).
DEFAULT_TIMEOUT = datetime.timedelta(hours=24)

#: ``verify``'s keyword arguments a sweep file does not set: they are about the terminal, not the run.
_NOT_OPTIONS = frozenset({"progress"})

#: The type of each option's value in the file (an int is accepted for a float, a bool never for a number).
_TYPES: dict[str, type] = {
    "model": str, "passes": str, "data": str, "device": str, "architecture": str, "name": str,
    "retrain_epochs": float, "tolerance": float, "floor": float, "retrain_lr": float,
    "check_images": int, "seed": int, "trust": bool, "nodes": bool, "qat_epochs": float,
}

_TABLE_HEADERS = ["run", "model", "passes", "rank", "baseline", "final", "worst step", "ok"]


def options() -> list[str]:
    """The options a run may set: ``fxlab.verify``'s parameters (``model``, ``passes``, ``retrain_epochs``, …)."""
    from . import run

    return [name for name in inspect.signature(run.verify).parameters if name not in _NOT_OPTIONS]


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its 1-based place in the file, the model and pipeline as written, and
    ``options``: the keyword arguments of ``fxlab.verify`` (``[defaults]`` merged in, paths resolved)."""

    index: int
    model: str
    passes: str
    options: dict[str, Any] = field(hash=False)


def load_sweep(path: str | os.PathLike[str]) -> list[SweepRun]:
    """The runs of the sweep file at ``path``, every one checked (see :func:`parse_sweep`).

    Relative paths in the file (``model``, ``data``, ``architecture``'s ``file.py``) are relative to
    the file's folder. Raises ``VerifyError`` (one line) for a file that cannot be read or is wrong.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VerifyError(f"no such sweep file: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VerifyError(f"cannot read sweep file {p}: {getattr(exc, 'strerror', None) or first_line(exc)}") from exc
    return parse_sweep(text, source=str(p), base=p.resolve().parent)


def parse_sweep(text: str, *, source: str = "<sweep>", base: str | os.PathLike[str] | None = None) -> list[SweepRun]:
    """The runs of sweep-file ``text`` (TOML: ``[[run]]`` tables and an optional ``[defaults]``), every one checked.

    Each run's options are those of ``fxlab.verify`` (:func:`options`); ``model`` and ``passes`` are
    required, in the run or in ``[defaults]``. Checked before anything runs: unknown keys (named with
    the run and the closest option), value types, the values ``verify`` would refuse, the device, the
    pipeline text (it must parse), and the model (a built-in name or an existing file). Relative paths
    are taken from ``base`` (default: the current folder). Raises ``VerifyError`` naming ``source``
    and the run.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise VerifyError(f"{source}: not valid TOML: {first_line(exc)}") from exc
    unknown = [k for k in doc if k not in ("run", "defaults")]
    if unknown:
        raise VerifyError(f"{source}: unknown table {unknown[0]!r}{did_you_mean(unknown[0], ['run', 'defaults'])}; "
                          "a sweep file holds [[run]] tables and an optional [defaults] table")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise VerifyError(f"{source}: defaults must be a table ([defaults] with one option a line)")
    entries = doc.get("run")
    if isinstance(entries, dict) or (entries is not None and not isinstance(entries, list)):
        raise VerifyError(f"{source}: write each run as a [[run]] table (double brackets: a list of runs)")
    if not entries:
        raise VerifyError(f"{source}: no runs: add [[run]] tables, each with model = ... and passes = ...")
    folder = Path(base) if base is not None else Path.cwd()
    valid = options()
    _check_keys(defaults, valid, f"{source}: [defaults]")
    runs = []
    for index, entry in enumerate(entries, 1):
        where = f"{source}: run {index}"
        if not isinstance(entry, dict):
            raise VerifyError(f"{where}: each run is a table of options ([[run]] then key = value lines)")
        _check_keys(entry, valid, where)
        merged = {**defaults, **entry}
        try:
            runs.append(_checked_run(index, merged, folder))
        except FxlabError as exc:
            raise VerifyError(f"{where}: {first_line(exc)}") from exc
    return runs


def _check_keys(table: dict[str, Any], valid: Sequence[str], where: str) -> None:
    for key in table:
        if key not in valid:
            raise VerifyError(f"{where}: unknown option {key!r}{did_you_mean(key, valid, n=1)}")


def _checked_run(index: int, opts: dict[str, Any], folder: Path) -> SweepRun:
    """The run ``opts`` describe, once every value is one ``verify`` accepts (else an ``FxlabError``)."""
    from ..models import names
    from ..pipeline import as_passes

    for key in ("model", "passes"):
        if key not in opts:
            raise VerifyError(f"no {key}: give {key} = ... in the run or in [defaults]")
    for key, value in opts.items():
        want = _TYPES.get(key)
        if want is not None and not _is_a(value, want):
            what = {str: "a string", float: "a number", int: "an integer", bool: "true or false"}[want]
            raise VerifyError(f"{key} must be {what}, got {value!r}")
    _settings(opts.get("tolerance", 1e-4), opts.get("floor", 1.0), opts.get("retrain_epochs", 1),
              opts.get("retrain_lr", RETRAIN_LR), opts.get("seed", 0), False)
    if opts.get("retrain_lr", RETRAIN_LR) <= 0:
        raise VerifyError(f"retrain_lr must be > 0, got {opts['retrain_lr']}")
    if opts.get("check_images", 1) < 1:
        raise VerifyError(f"check_images must be ≥ 1, got {opts['check_images']}")
    if opts.get("device") is not None:
        _device(opts["device"])
    if not as_passes(opts["passes"]):
        raise VerifyError("empty pipeline: name at least one pass")
    model, resolved = opts["model"], dict(opts)
    if model not in names():
        path = folder / model
        if not path.exists():
            raise VerifyError(f"no model {model!r}: not a file ({path}), nor a built-in model name"
                              f"{did_you_mean(model, names())}; built-in models: {', '.join(names())}")
        resolved["model"] = str(path)
    if "data" in opts:
        resolved["data"] = str(folder / opts["data"])
    arch = opts.get("architecture")
    if arch and ":" in arch and arch.split(":", 1)[0].endswith(".py"):
        file, cls = arch.rsplit(":", 1)
        resolved["architecture"] = f"{folder / file}:{cls}"
    resolved.setdefault("name", model)
    return SweepRun(index=index, model=model, passes=opts["passes"], options=resolved)


def _is_a(value: Any, want: type) -> bool:
    """``value`` is of the option type ``want`` (an int is a number; a bool is not; NaN and inf are not)."""
    if want is bool or isinstance(value, bool):
        return want is bool and isinstance(value, bool)
    if want is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, want)


# -- the runs --------------------------------------------------------------------------------------------


@dataclass
class SweepRow:
    """The outcome of one run: ``report`` is its ``Report.to_dict()``, or None when the run could not
    be verified (``error`` says why, in one line). ``rank`` is the process that ran it."""

    index: int
    model: str
    passes: str
    ok: bool
    rank: int
    seconds: float
    report: dict[str, Any] | None = None
    error: str | None = None

    @property
    def baseline_accuracy(self) -> float | None:
        """The input model's test accuracy (percent)."""
        return self.report["baseline"]["accuracy"] if self.report else None

    @property
    def final_accuracy(self) -> float | None:
        """The accuracy after the last step (retrained when it retrained)."""
        if not self.report or not self.report["steps"]:
            return None
        return _final(self.report["steps"][-1])

    @property
    def worst_step(self) -> str:
        """The first failing step and why; else the step that lost the most accuracy on its own; or the error."""
        if self.error is not None:
            return f"error: {self.error}"
        steps = (self.report or {}).get("steps") or []
        if not steps:
            return ""
        failed = [s for s in steps if not s["ok"]]
        if failed:
            s = failed[0]
            return f"{s['index']} {s['pass']}: {s['reason']}"
        s = min(steps, key=lambda s: _own_change(s))
        return f"{s['index']} {s['pass']} ({_own_change(s):+.2f})"

    def to_dict(self) -> dict[str, Any]:
        """The row as plain data (the ``runs`` entries of the sweep's JSON)."""
        return {"index": self.index, "model": self.model, "passes": self.passes, "ok": self.ok, "rank": self.rank,
                "seconds": self.seconds, "error": self.error, "report": self.report}


def _final(step: dict[str, Any]) -> float | None:
    return step["retrained_accuracy"] if step["retrained_accuracy"] is not None else step["accuracy"]


def _own_change(step: dict[str, Any]) -> float:
    """A step's accuracy change against the model it started from (NaN-safe: unknown sorts last)."""
    final, ref = _final(step), step["reference_accuracy"]
    return final - ref if final is not None and ref is not None else math.inf


def run_one(run: SweepRun, *, rank: int = 0, device: str | None = None, progress: bool = False) -> SweepRow:
    """Verify one run; whatever it raises becomes a row with the error's first line (logged with its traceback).

    ``device`` is used when the run names none (``cuda:LOCAL_RANK`` under torchrun with CUDA).
    """
    opts = dict(run.options)
    if device is not None and opts.get("device") is None:
        opts["device"] = device
    model, passes = opts.pop("model"), opts.pop("passes")
    start = time.perf_counter()
    try:
        report = verify(model, passes, progress=progress, **opts)
    except Exception as exc:  # noqa: BLE001 - a run that cannot run is a row, not the end of the sweep
        log.debug("run %d (%s: %s) failed", run.index, run.model, run.passes, exc_info=True)
        error = first_line(exc) if isinstance(exc, FxlabError) else f"{type(exc).__name__}: {first_line(exc)}"
        return SweepRow(run.index, run.model, run.passes, ok=False, rank=rank, seconds=time.perf_counter() - start,
                        error=error)
    log.info("run %d (%s: %s) on rank %d: %s", run.index, run.model, run.passes, rank, "ok" if report.ok else "FAIL")
    return SweepRow(run.index, run.model, run.passes, ok=report.ok, rank=rank, seconds=time.perf_counter() - start,
                    report=report.to_dict())


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among torchrun's: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env(env: Any = None) -> Ranks:
    """The ranks torchrun gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process without them."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise UsageError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({first_line(exc)})") from exc
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return Ranks(rank, world, local)


def _rank_device(ranks: Ranks) -> str | None:
    """The device this rank's runs default to: ``cuda:LOCAL_RANK`` under torchrun with CUDA (made
    current, as NCCL needs), else None (``verify``'s default)."""
    if not ranks.distributed or not torch.cuda.is_available():
        return None
    index = ranks.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def _gather(rows: list[SweepRow], ranks: Ranks, timeout: datetime.timedelta) -> list[SweepRow]:
    """Every rank's rows on every rank, in file order: a process group (gloo on CPU, NCCL with CUDA)
    made for this gather alone, then destroyed."""
    if ranks.distributed:
        import torch.distributed as dist

        if not dist.is_available():
            raise VerifyError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timeout)
        log.info("rank %d of %d: gathering the rows (%s)", ranks.rank, ranks.world_size, backend)
        try:
            gathered: list[Any] = [None] * ranks.world_size
            dist.all_gather_object(gathered, [r.to_dict() for r in rows])
        finally:
            dist.destroy_process_group()
        rows = [SweepRow(**d) for part in gathered for d in part]
    return sorted(rows, key=lambda r: r.index)


def run_sweep(
    runs: Sequence[SweepRun],
    *,
    progress: bool = False,
    on_result: Callable[[SweepRow, int], None] | None = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> SweepReport:
    """Verify every run and return the merged ``SweepReport`` (rows in file order).

    One process: every run, in order, rank 0. Under torchrun (``RANK``, ``WORLD_SIZE`` > 1 in the
    environment): this rank's share (entries ``rank``, ``rank + N``, …) alone, then a process group is
    made to gather every rank's rows on every rank, and destroyed. No group exists while the runs run:
    ``fxlab.train.fit`` would otherwise retrain each run's model as DistributedDataParallel across the
    ranks, which run different models. So a process group made beforehand is refused.
    ``on_result(row, total)`` is called as each of this rank's runs ends (the command prints a progress
    line with it). ``timeout``: how long a rank waits for the others to finish their share.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise VerifyError("run_sweep makes its own process group once every rank's runs are done, but one is "
                          "already initialised (retraining would run across the ranks): call it before "
                          "init_process_group, or destroy the group first")
    start = time.perf_counter()
    ranks = ranks_from_env()
    device = _rank_device(ranks)
    rows = []
    for run in runs[ranks.rank :: ranks.world_size]:
        row = run_one(run, rank=ranks.rank, device=device, progress=progress)
        rows.append(row)
        if on_result is not None:
            on_result(row, len(runs))
    merged = _gather(rows, ranks, timeout)
    return SweepReport(rows=merged, world_size=ranks.world_size, seconds=time.perf_counter() - start)


# -- the merged report -----------------------------------------------------------------------------------


@dataclass
class SweepReport:
    """Every run's row, in file order, and how many processes ran them; ``ok`` when every run's contracts held."""

    rows: list[SweepRow]
    world_size: int = 1
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def errors(self) -> list[SweepRow]:
        """The runs that could not be verified (bad input found while running, or a crash)."""
        return [r for r in self.rows if r.error is not None]

    @property
    def failures(self) -> list[SweepRow]:
        """The runs that ran and failed a contract."""
        return [r for r in self.rows if not r.ok and r.error is None]

    def table(self, tablefmt: str = "simple") -> str:
        """One row per run: model, passes, rank, baseline and final accuracy, worst step, ok / FAIL / ERROR."""
        from tabulate import tabulate

        def pct(v: float | None) -> str:
            return f"{v:.2f}%" if v is not None else ""

        rows = [[r.index, r.model, r.passes, r.rank, pct(r.baseline_accuracy), pct(r.final_accuracy), r.worst_step,
                 "ok" if r.ok else "ERROR" if r.error is not None else "FAIL"] for r in self.rows]
        return tabulate(rows, headers=_TABLE_HEADERS, tablefmt=tablefmt, disable_numparse=True)

    def summary(self) -> str:
        """One line: every run held, or which failed and which could not run."""
        n = len(self.rows)
        where = f"{self.world_size} processes" if self.world_size > 1 else "1 process"
        if self.ok:
            return f"ok: all {n} runs hold ({where}, {self.seconds:.1f}s)"
        parts = []
        if self.failures:
            parts.append(f"{len(self.failures)} of {n} runs failed (run {', '.join(str(r.index) for r in self.failures)})")
        if self.errors:
            parts.append(f"{len(self.errors)} could not run (run {', '.join(str(r.index) for r in self.errors)})")
        return f"FAIL: {'; '.join(parts)} ({where}, {self.seconds:.1f}s)"

    def text(self) -> str:
        """What the command prints: the table, then the summary line."""
        return f"{self.table()}\n\n{self.summary()}"

    def to_dict(self) -> dict[str, Any]:
        """``{"format", "runs": [{"model", "passes", "ok", "rank", "report": {...verify's JSON...}, ...}], "ok", ...}``."""
        return {"format": SWEEP_FORMAT, "runs": [r.to_dict() for r in self.rows], "ok": self.ok,
                "world_size": self.world_size, "seconds": self.seconds, "torch_version": torch.__version__}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``to_json()`` to ``path`` atomically (a temporary file, then a rename)."""
        return write_atomic(path, self.to_json() + "\n")
