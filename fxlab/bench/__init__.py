"""Benchmarks: where fxlab stands against torch.fx, torch.ao and the seeds' own loops.

    python -m fxlab.bench [--suite inference|passes|training] [--quick] [--json out.json]

Three suites, each timed side by side in one run (these machines are shared and noisy, so the
figures that matter are ratios measured together):

- ``inference``: every seed model before and after fxlab's standard pipelines (fusion; fusion then
  each quantization mode), with torch.ao ``quantize_dynamic`` and ``torch.compile`` of the original
  as anchors, at batch 1, 256 and 10 000: median latency, throughput, speed-up vs the float32
  original, peak tensor memory of one forward and state-dict size.
- ``passes``: time to apply a change to deep MLPs (100, 1 000, 4 000 Linear+ReLU blocks) with
  ``fxlab.apply`` vs a hand-written torch.fx transform of the same change, and torch.ao's
  ``fuse_fx`` for fusion; growth with depth.
- ``training``: one epoch and one evaluation with ``fxlab.train`` vs the seeds' loop
  (torchvision ToTensor + Normalize through a DataLoader of batch 64, Adam), test accuracy reached.

Every timing: warm-up calls, then several rounds in which the candidates take turns (the order
rotates each round); each round times enough calls to last a few tens of milliseconds; the table
shows the median over rounds and the spread (interquartile range / median). The device (CUDA when
available), torch version, CPU and thread count are recorded. Targets from the issues are listed
with met / missed; nothing here is tuned to them.

``--quick`` (for CI, well under 2 minutes on 2 cores) runs smaller sizes and fewer rounds: its
figures only show that every path works.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import gc
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

SUITES = ("inference", "passes", "training")


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class Config:
    """What a run measures; ``quick()`` is the CI smoke configuration."""

    quick: bool = False
    device: str = "auto"
    data: str | None = None
    # inference
    models: tuple[str, ...] = ("mymodule", "neuralnetwork", "simplenn", "mymnist", "linear-relu-stack")
    batches: tuple[int, ...] = (1, 256, 10_000)
    rounds: int = 7
    round_time: float = 0.1  # seconds of calls per candidate per round
    compile_models: tuple[str, ...] | None = None  # None: all models
    compile_batches: tuple[int, ...] | None = None  # None: all batches
    # passes
    depths: tuple[int, ...] = (100, 1000, 4000)
    pass_rounds: int = 5
    width: int = 8
    # training
    train_limit: int | None = None  # images of the training set per epoch (None: all 60 000)
    test_limit: int | None = None
    train_rounds: int = 3
    recipe: bool = True  # also train mymodule with fxlab's default recipe and report accuracy
    memory_probe: bool = True  # peak RSS of a training subprocess
    probe_steps: int | None = None  # optimizer steps of that subprocess (None: one full epoch)

    @classmethod
    def quick_config(cls, **kw: Any) -> Config:
        return cls(
            quick=True,
            batches=(1, 256),
            rounds=3,
            round_time=0.02,
            compile_models=("mymodule",),
            compile_batches=(256,),
            models=("mymodule", "simplenn"),
            depths=(10, 40, 160),
            pass_rounds=3,
            train_limit=2_000,
            test_limit=1_000,
            train_rounds=2,
            probe_steps=20,
            recipe=False,
            **kw,
        )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# timing


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

    @classmethod
    def of(cls, samples: list[float], calls: int, first: float | None) -> Timing:
        s = sorted(samples)
        if len(s) >= 2:
            q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
        else:
            q1 = q3 = s[0]
        return cls(statistics.median(s), q1, q3, s[0], s[-1], len(s), calls, first)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    def to_json(self) -> dict[str, float | int]:
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
        }


def _sync(device: Any) -> None:
    import torch

    if device is not None and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:240]


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
    compilation; ``warmup=0`` when the caller has already run each candidate), then ``rounds`` rounds run every candidate in turn, the order rotating (and
    reversing every other round) so that no candidate always follows the same neighbour. A round
    times as many calls as fill ``round_time`` seconds (one call when ``round_time`` is 0). The
    garbage collector is paused while timing, as ``timeit`` does.
    """
    results: dict[str, Timing | str] = {}
    live: dict[str, tuple[Callable[[], Any], int, float | None]] = {}
    for name, fn in candidates.items():
        try:
            first = None
            if warmup > 0:
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                first = time.perf_counter() - start
            for _ in range(max(0, warmup - 1)):
                fn()
            calls = 1
            if round_time > 0:  # calibrate: how many calls fill a round
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                one = time.perf_counter() - start
                calls = max(1, min(100_000, round(round_time / max(one, 1e-7))))
        except Exception as exc:  # a benchmark reports failures, it does not stop on them
            results[name] = f"failed: {_first_line(exc)}"
            continue
        live[name] = (fn, calls, first)
    samples: dict[str, list[float]] = {name: [] for name in live}
    names = list(live)
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            k = r % max(1, len(names))
            order = names[k:] + names[:k]
            if r % 2:
                order.reverse()
            gc.collect()
            gc.disable()
            for name in order:
                if name in results:
                    continue
                fn, calls, _ = live[name]
                try:
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    _sync(device)
                except Exception as exc:
                    results[name] = f"failed: {_first_line(exc)}"
                    continue
                samples[name].append((time.perf_counter() - start) / calls)
            if gc_was_enabled:
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    for name in names:
        if name not in results:
            fn, calls, first = live[name]
            results[name] = Timing.of(samples[name], calls, first)
    # keep the caller's order
    return {name: results[name] for name in candidates}


# --------------------------------------------------------------------------------------------
# memory


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++ writes to fd 2 (the profiler's own log lines) for the duration."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def peak_tensor_bytes(fn: Callable[[], Any], device: Any) -> int:
    """Peak bytes of tensors allocated and alive at once while ``fn()`` runs, beyond what existed.

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset. On CPU: replays torch.profiler's
    record of every allocation and free of the CPU tensor allocator, in order. Both count tensor
    storage only: weights and inputs that already exist are excluded; scratch memory that
    libraries allocate outside torch's allocator (e.g. oneDNN's) is not seen.
    """
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
        del out
        try:  # every allocation and free of the CPU allocator, in order (inside compiled code too)
            raw = prof.profiler.kineto_results.events()
            events = sorted((e.start_ns(), e.nbytes()) for e in raw if e.name() == "[memory]")
        except AttributeError:  # older torch: allocations attributed to operators instead
            events = sorted(
                (e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage
            )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return int(peak)


def state_dict_bytes(module: Any) -> int:
    """Size of ``torch.save(module.state_dict())``: weights as stored (int8 weights and scales included)."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(module.state_dict(), buffer)
    return buffer.tell()


# --------------------------------------------------------------------------------------------
# environment


def environment(device: Any) -> dict[str, Any]:
    """The machine and software a run measured."""
    import torch

    import fxlab

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "fxlab": fxlab.__version__,
        "threading_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                          if k in os.environ},
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    if getattr(device, "type", "cpu") == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0:
            env["commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------------------------
# targets


@dataclass
class Target:
    """A performance target from the issues, and whether this run met it."""

    target: str
    where: str
    measured: float | None
    required: str
    met: bool | None  # None: could not be measured
    note: str = ""

    def row(self) -> list[Any]:
        verdict = "n/a" if self.met is None else ("met" if self.met else "MISSED")
        measured = "—" if self.measured is None else f"{self.measured:.2f}"
        return [self.target, self.where, measured, self.required, verdict, self.note]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "where": self.where,
            "measured": self.measured,
            "required": self.required,
            "met": self.met,
            "note": self.note,
        }


TARGET_HEADERS = ["target", "where", "measured", "required", "verdict", "note"]


# --------------------------------------------------------------------------------------------
# inference suite

QUANT_MODES = ("dynamic", "weight-only", "bf16", "fp16", "static")


@dataclass
class Variant:
    """One way of running a model: a label, what it is, and the module (or why there is none)."""

    label: str
    what: str
    module: Any = None
    error: str | None = None
    pipeline: str = ""
    build_s: float | None = None


def _mnist_images(cfg: Config, count: int) -> tuple[Any, str]:
    """``count`` normalised MNIST test images (N, 1, 28, 28), or random ones when MNIST is absent."""
    import torch

    try:
        images = _mnist_test_tensor(cfg.data)
        reps = math.ceil(count / images.shape[0])
        images = images.repeat(reps, 1, 1, 1)[:count] if reps > 1 else images[:count]
        return images.contiguous(), "MNIST test images"
    except Exception as exc:  # the inference figures do not depend on pixel values
        _log(f"bench: MNIST unavailable ({_first_line(exc)}); timing on random inputs")
        gen = torch.Generator().manual_seed(0)
        return torch.randn(count, 1, 28, 28, generator=gen), "random normal inputs (MNIST unavailable)"


def _mnist_test_tensor(root: str | None) -> Any:
    """The 10 000 MNIST test images, normalised as the seeds do, from fxlab.data (never fetched here)."""
    from .. import data as fxdata

    return fxdata.load(_data_root(root), download=False).test.images


def _has(model: Any, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def fusion_passes(model: Any) -> list[Any]:
    """fxlab's standard fusion pipeline for ``model``: the passes whose pattern occurs in it."""
    import fxlab
    from torch import nn

    names = []
    if _has(model, nn.modules.batchnorm._BatchNorm):
        names.append("fold-batchnorm")
    if _has(model, nn.Dropout):
        names.append("remove-dropout")
    names.append("fuse-linear-relu")
    return [fxlab.get_pass(n)() for n in names]


def _build(label: str, what: str, make: Callable[[], Any]) -> Variant:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = make()
    except Exception as exc:
        return Variant(label, what, error=f"not built: {_first_line(exc)}")
    return Variant(label, what, module=module, build_s=time.perf_counter() - start)


class GemmFloor:
    """Runs only the Linears of an MLP-shaped module, in graph order: ``F.linear`` after ``F.linear``."""

    def __init__(self, gm: Any) -> None:
        from torch import nn

        modules = dict(gm.named_modules())
        self.layers = [
            (m.weight, m.bias)
            for node in gm.graph.nodes
            if node.op == "call_module" and isinstance(m := modules[str(node.target)], nn.Linear)
        ]

    def __call__(self, x: Any) -> Any:
        import torch.nn.functional as F

        x = x.reshape(x.shape[0], -1)
        for weight, bias in self.layers:
            x = F.linear(x, weight, bias)
        return x

    def state_dict(self) -> dict[str, Any]:
        return {f"{i}.{name}": t for i, (w, b) in enumerate(self.layers) for name, t in (("weight", w), ("bias", b))
                if t is not None}


def inference_variants(model: Any, device: Any, calibration: list[Any], *, compile_: bool) -> list[Variant]:
    """The float32 original, fxlab's pipelines on it, and the anchors, ready to run on ``device``."""
    import torch
    from torch import nn

    import fxlab

    model = model.to(device).eval()
    variants = [Variant("float32", "the original nn.Module, eager", module=model)]

    def fused() -> Any:
        return fxlab.apply(model, fusion_passes(model)).eval()

    fusion_text = ""
    try:
        fusion_text = fxlab.format_pipeline(fusion_passes(model))
    except Exception as exc:
        fusion_text = f"(fusion passes missing: {_first_line(exc)})"
    variants.append(_build("fused", f"fxlab: {fusion_text}", fused))
    variants[-1].pipeline = fusion_text
    fused_module = variants[-1].module
    if fused_module is not None:
        variants.append(
            _build(
                "GEMMs only",
                "floor: the fused model's float32 Linears alone, back to back (no activation, no other op); "
                "no exact float32 rewrite of the model can run faster",
                lambda: GemmFloor(fused_module),
            )
        )
    for mode in QUANT_MODES:

        def quantized(mode: str = mode) -> Any:
            options: dict[str, Any] = {"mode": mode}
            if mode == "static":
                options["calibration"] = calibration
            quantize = fxlab.get_pass("quantize-linear")(**options)
            return fxlab.apply(model, [*fusion_passes(model), quantize]).eval()

        v = _build(mode, f"fxlab: fusion, then quantize-linear{{mode={mode}}}", quantized)
        v.pipeline = f"{fusion_text},quantize-linear{{mode={mode}}}"
        variants.append(v)
    if device.type == "cpu":

        def ao_dynamic() -> Any:
            from torch.ao.quantization import quantize_dynamic

            return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)

        variants.append(_build("torch.ao dynamic", "anchor: torch.ao quantize_dynamic(original, {Linear}, qint8)", ao_dynamic))
    else:
        variants.append(Variant("torch.ao dynamic", "anchor: torch.ao quantize_dynamic", error="n/a: CPU-only"))
    if compile_:
        variants.append(
            _build(
                "torch.compile",
                "anchor: torch.compile(original, dynamic=False); compile time is the first call",
                lambda: torch.compile(copy.deepcopy(model), dynamic=False),
            )
        )
    else:
        variants.append(Variant("torch.compile", "anchor: torch.compile(original)", error="skipped (--quick)"))
    return variants


@contextlib.contextmanager
def _cold_inductor_cache() -> Iterator[None]:
    """torch.compile with an empty on-disk cache, so that its first call shows the real compile cost."""
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="fxlab-bench-inductor-") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


def inference_suite(cfg: Config, device: Any) -> dict[str, Any]:
    """Every seed model × variant × batch size: latency, throughput, speed-up, memory."""
    with _cold_inductor_cache():
        return _inference_suite(cfg, device)


def _inference_suite(cfg: Config, device: Any) -> dict[str, Any]:
    import torch

    from .. import models as seed_models

    # torch.compile on a CPU-only machine logs that it found no CUDA runtime: not news here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    images, source = _mnist_images(cfg, max(cfg.batches))
    images = images.to(device)
    calibration = [images[i : i + 256] for i in range(0, min(1024, images.shape[0]), 256)]
    rows: list[dict[str, Any]] = []
    for name in cfg.models:
        torch.manual_seed(0)
        model = seed_models.build(name)
        compile_model = cfg.compile_models is None or name in cfg.compile_models
        variants = inference_variants(model, device, calibration, compile_=compile_model)
        sizes = {v.label: state_dict_bytes(v.module) for v in variants if v.module is not None}
        for batch in cfg.batches:
            x = images[:batch]
            candidates = {}
            skipped: dict[str, str] = {}
            for v in variants:
                if v.module is None:
                    skipped[v.label] = v.error or "not built"
                elif v.label == "torch.compile" and cfg.compile_batches is not None and batch not in cfg.compile_batches:
                    skipped[v.label] = "skipped (--quick)"
                else:
                    candidates[v.label] = (lambda m=v.module, x=x: m(x))
            _log(f"bench inference: {name} batch {batch}: {len(candidates)} variants")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                timings = compare(candidates, rounds=cfg.rounds, round_time=cfg.round_time, device=device)
                peaks = {}
                for label, timing in timings.items():
                    if isinstance(timing, Timing):
                        peaks[label] = peak_tensor_bytes(candidates[label], device)
            base = timings.get("float32")
            for v in variants:
                timing = timings.get(v.label)
                row: dict[str, Any] = {
                    "model": name,
                    "variant": v.label,
                    "what": v.what,
                    "pipeline": v.pipeline,
                    "batch": batch,
                    "state_dict_bytes": sizes.get(v.label),
                    "build_s": v.build_s,
                }
                if isinstance(timing, Timing):
                    row.update(
                        status="ok",
                        latency=timing.to_json(),
                        latency_ms=timing.median * 1e3,
                        spread=timing.spread,
                        throughput=batch / timing.median,
                        speedup=(base.median / timing.median) if isinstance(base, Timing) else None,
                        peak_tensor_bytes=peaks.get(v.label),
                    )
                else:
                    row.update(status=timing if timing is not None else skipped.get(v.label, "not run"))
                rows.append(row)
        del variants
        with contextlib.suppress(Exception):
            torch._dynamo.reset()
    targets = inference_targets(rows, device)
    return {
        "device": str(device),
        "inputs": source,
        "batches": list(cfg.batches),
        "method": (
            "Seed models with random weights (seeded), eval mode, under torch.no_grad(). Latency: seconds per "
            "forward of the whole batch, median over interleaved rounds; spread = IQR / median. "
            "Throughput: images per second. speedup = float32 median / variant median (>1 is faster). "
            "Peak tensor memory: bytes of tensors allocated and alive at once during one forward "
            "(CPU: replay of torch.profiler's allocation and free events; CUDA: max_memory_allocated), "
            "weights and input excluded. state_dict_bytes: size of torch.save(state_dict)."
        ),
        "rows": rows,
        "targets": [t.to_json() for t in targets],
    }


def _find(rows: list[dict[str, Any]], model: str, variant: str, batch: int) -> dict[str, Any] | None:
    for r in rows:
        if r["model"] == model and r["variant"] == variant and r["batch"] == batch:
            return r
    return None


def _median(row: dict[str, Any] | None) -> float | None:
    if row is None or row.get("status") != "ok":
        return None
    return row["latency"]["median_s"]


def inference_targets(rows: list[dict[str, Any]], device: Any) -> list[Target]:
    """The issues' inference targets, per model where the target is per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = {r["batch"] for r in rows}
    out: list[Target] = []
    if 256 in batches and "simplenn" in models:
        t = _median(_find(rows, "simplenn", "float32", 256))
        f = _median(_find(rows, "simplenn", "fused", 256))
        g = _median(_find(rows, "simplenn", "GEMMs only", 256))
        note = "fused variant not available"
        if t and f:
            note = f"ceiling for exact float32 rewrites (GEMMs alone): {t / g:.2f}×" if g else ""
        out.append(
            Target("fused SimpleNN speed-up", "simplenn, batch 256", t / f if t and f else None, "≥ 1.30×",
                   (t / f >= 1.3) if t and f else None, note)
        )
    if 256 in batches:
        for m in models:
            t = _median(_find(rows, m, "float32", 256))
            d = _median(_find(rows, m, "dynamic", 256))
            out.append(
                Target("int8 dynamic faster than float32", f"{m}, batch 256", t / d if t and d else None, "> 1.00×",
                       (t / d > 1.0) if t and d else None, "" if d else "dynamic variant not available")
            )
        for m in models:
            ao = _median(_find(rows, m, "torch.ao dynamic", 256))
            quant = {mode: _median(_find(rows, m, mode, 256)) for mode in QUANT_MODES}
            quant = {k: v for k, v in quant.items() if v}
            if not quant or not ao:
                note = "no quantized variant" if not quant else ("torch.ao n/a on " + str(device) if device.type != "cpu" else "torch.ao failed")
                out.append(Target("fastest quantized mode vs torch.ao dynamic", f"{m}, batch 256", None, "≥ 1.00×", None, note))
                continue
            best = min(quant, key=quant.get)
            out.append(
                Target("fastest quantized mode vs torch.ao dynamic", f"{m}, batch 256", ao / quant[best], "≥ 1.00×",
                       ao / quant[best] >= 1.0, f"fastest: {best}")
            )
    if 1 in batches:
        for m in models:
            t = _median(_find(rows, m, "float32", 1))
            quant = {mode: _median(_find(rows, m, mode, 1)) for mode in QUANT_MODES}
            quant = {k: v for k, v in quant.items() if v}
            if not t or not quant:
                out.append(Target("slowest quantized mode vs float32", f"{m}, batch 1", None, "≤ 1.50× slower", None,
                                  "no quantized variant"))
                continue
            worst = max(quant, key=quant.get)
            slowdown = quant[worst] / t
            out.append(
                Target("slowest quantized mode vs float32", f"{m}, batch 1", slowdown, "≤ 1.50× slower",
                       slowdown <= 1.5, f"slowest: {worst}")
            )
    return out


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.0f} kB"
    return f"{n} B"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _clip(text: str, width: int = 44) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def inference_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    """One table per batch size (terminal), or one compact table of all batch sizes (markdown)."""
    compiled = [f"{r['model']} batch {r['batch']:,}: {r['latency']['first_call_s']:.1f} s" for r in result["rows"]
                if r["variant"] == "torch.compile" and r.get("status") == "ok"]
    note = ("\n\ntorch.compile's first call (compilation, from an empty cache; not in the medians): "
            + "; ".join(compiled)) if compiled else ""
    if fmt != "simple":
        return _inference_compact(result, fmt) + note
    return _inference_per_batch(result, fmt) + note


def _inference_per_batch(result: dict[str, Any], fmt: str) -> str:
    from tabulate import tabulate

    out = []
    headers = ["model", "variant", "latency ms", "spread", "images/s", "speed-up", "peak tensors", "state dict"]
    for batch in result["batches"]:
        table = []
        for r in result["rows"]:
            if r["batch"] != batch:
                continue
            if r.get("status") == "ok":
                speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
                table.append([r["model"], r["variant"], _ms(r["latency"]["median_s"]), f"±{r['spread'] * 100:.0f}%",
                              f"{r['throughput']:,.0f}", speed, _bytes(r.get("peak_tensor_bytes")),
                              _bytes(r.get("state_dict_bytes"))])
            else:
                table.append([r["model"], r["variant"], _clip(r["status"]), "", "", "", "",
                              _bytes(r.get("state_dict_bytes"))])
        out.append(f"inference, batch {batch} ({result['device']}):\n" + tabulate(table, headers=headers, tablefmt=fmt))
    return "\n\n".join(out)


def _inference_compact(result: dict[str, Any], fmt: str) -> str:
    from tabulate import tabulate

    batches = result["batches"]
    top = max(batches)
    headers = ["model", "variant"]
    for b in batches:
        headers += [f"batch {b:,}: ms (±IQR)", "speed-up"]
    headers += [f"peak tensors (batch {top:,})", "state dict"]
    table = []
    pairs = list(dict.fromkeys((r["model"], r["variant"]) for r in result["rows"]))
    for model, variant in pairs:
        row = [model, variant]
        rows = {r["batch"]: r for r in result["rows"] if r["model"] == model and r["variant"] == variant}
        for b in batches:
            r = rows.get(b)
            if r is None:
                row += ["", ""]
            elif r.get("status") == "ok":
                row += [f"{_ms(r['latency']['median_s'])} (±{r['spread'] * 100:.0f}%)",
                        "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"]
            else:
                row += [_clip(r["status"], 36), ""]
        last = rows.get(top) or {}
        row += [_bytes(last.get("peak_tensor_bytes")), _bytes(last.get("state_dict_bytes"))]
        table.append(row)
    return tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True)


# --------------------------------------------------------------------------------------------
# passes suite


def deep_mlp(depth: int, width: int = 8) -> Any:
    """``depth`` blocks of Linear(width, width) → nn.ReLU, in a ModuleList (paths ``layers.0``, ...)."""
    from torch import nn

    class DeepMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList()
            for _ in range(depth):
                self.layers.append(nn.Linear(width, width))
                self.layers.append(nn.ReLU())

        def forward(self, x: Any) -> Any:
            for layer in self.layers:
                x = layer(x)
            return x

    return DeepMLP().eval()


def hand_trace(model: Any) -> Any:
    """The floor every transform pays: copy the model, trace it, recompile."""
    import torch.fx as fx

    gm = fx.symbolic_trace(copy.deepcopy(model))
    gm.graph.lint()
    gm.recompile()
    return gm


def hand_insert_relu(model: Any, targets: set[str] | None) -> Any:
    """Hand-written torch.fx: ``torch.relu`` after every Linear (``targets=None``) or after the named ones."""
    import torch
    import torch.fx as fx
    from torch import nn

    gm = fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        if targets is None and not isinstance(modules[node.target], nn.Linear):
            continue
        if targets is not None and node.target not in targets:
            continue
        with gm.graph.inserting_after(node):
            relu = gm.graph.call_function(torch.relu, (node,))
        node.replace_all_uses_with(relu, delete_user_cb=lambda user, relu=relu: user is not relu)
    gm.graph.lint()
    gm.recompile()
    return gm


def hand_fuse_linear_relu(model: Any) -> Any:
    """Hand-written torch.fx: each Linear whose only user is a ReLU becomes one fused module."""
    import torch
    import torch.fx as fx
    import torch.nn.functional as F
    from torch import nn

    from ..nn import LinearReLU

    gm = fx.symbolic_trace(copy.deepcopy(model))
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_relu = (node.op == "call_module" and isinstance(modules.get(node.target), nn.ReLU)) or (
            node.op == "call_function" and node.target in (torch.relu, F.relu)
        )
        if not is_relu:
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        linear = modules[prev.target]
        if type(linear) is not nn.Linear:
            continue
        fused = LinearReLU(linear.in_features, linear.out_features, bias=linear.bias is not None)
        fused.weight = linear.weight
        fused.bias = linear.bias
        parent, _, attr = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def ao_fuse_fx(model: Any) -> Any:
    """torch.ao's fuse_fx on a copy (it fuses Linear+ReLU into torch.ao.nn.intrinsic.LinearReLU)."""
    from torch.ao.quantization.quantize_fx import fuse_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fuse_fx(copy.deepcopy(model))


def passes_suite(cfg: Config) -> dict[str, Any]:
    """Apply-time of three changes to deep MLPs: fxlab.apply vs hand-written torch.fx (vs fuse_fx)."""
    import torch

    import fxlab
    from torch import nn

    def fx_every_linear(m: Any) -> Any:
        return fxlab.apply(m, [fxlab.get_pass("insert-relu")(after=nn.Linear)])

    changes: list[tuple[str, Callable[[Any, int], dict[str, Callable[[Any], Any]]]]] = []

    def every(depth: int) -> dict[str, Callable[[Any], Any]]:
        return {
            "fxlab.apply": fx_every_linear,
            "hand-written torch.fx": lambda m: hand_insert_relu(m, None),
            "trace only": hand_trace,
        }

    def one(depth: int) -> dict[str, Callable[[Any], Any]]:
        target = f"layers.{2 * (depth // 2)}"
        return {
            "fxlab.apply": lambda m: fxlab.apply(m, [fxlab.get_pass("insert-relu")(after=target)]),
            "hand-written torch.fx": lambda m: hand_insert_relu(m, {target}),
            "trace only": hand_trace,
        }

    def fuse(depth: int) -> dict[str, Callable[[Any], Any]]:
        return {
            "fxlab.apply": lambda m: fxlab.apply(m, [fxlab.get_pass("fuse-linear-relu")()]),
            "hand-written torch.fx": hand_fuse_linear_relu,
            "torch.ao fuse_fx": ao_fuse_fx,
            "trace only": hand_trace,
        }

    changes = [
        ("insert-relu after every Linear", every),
        ("insert-relu after the middle Linear", one),
        ("fuse-linear-relu", fuse),
    ]
    rows: list[dict[str, Any]] = []
    for change, make in changes:
        # every implementation at every depth takes turns in the same rounds, so that growth with depth
        # is measured side by side too
        timed: dict[str, Callable[[], Any]] = {}
        cases: list[tuple[int, str, str | None, Any, bool]] = []
        for depth in cfg.depths:
            torch.manual_seed(0)
            model = deep_mlp(depth, cfg.width)
            before = copy.deepcopy(model.state_dict())
            candidates = make(depth)
            x = torch.randn(4, cfg.width)
            outputs: dict[str, Any] = {}
            errors: dict[str, str] = {}
            for label, fn in candidates.items():  # same function? checked once, outside the timing
                try:
                    with warnings.catch_warnings(), torch.no_grad():
                        warnings.simplefilter("ignore")
                        outputs[label] = fn(model)(x)
                except Exception as exc:
                    errors[label] = f"failed: {_first_line(exc)}"
            after = model.state_dict()
            untouched = before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
            reference = outputs.get("hand-written torch.fx")
            for label, fn in candidates.items():
                key = f"{label} @ {depth}"
                diff = None
                if reference is not None and label in outputs and label != "trace only":
                    diff = float((outputs[label] - reference).abs().max())
                cases.append((depth, label, errors.get(label), diff, untouched))
                if label not in errors:
                    timed[key] = lambda fn=fn, model=model: fn(model)
        _log(f"bench passes: {change}, depths {', '.join(map(str, cfg.depths))}")
        timings = compare(timed, rounds=cfg.pass_rounds, round_time=0.0, warmup=0)  # the check call warmed up
        for depth, label, error, diff, untouched in cases:
            timing = timings.get(f"{label} @ {depth}", error)
            row: dict[str, Any] = {"change": change, "depth": depth, "implementation": label,
                                   "input_untouched": untouched}
            if isinstance(timing, Timing):
                row.update(status="ok", time=timing.to_json(), time_s=timing.median, spread=timing.spread)
                if diff is not None:
                    row["max_abs_diff_vs_hand"] = diff
            else:
                row["status"] = timing or "not run"
            rows.append(row)
    # ratios
    ratios = []
    for change, _ in changes:
        for depth in cfg.depths:
            get = {r["implementation"]: r.get("time_s") for r in rows if r["change"] == change and r["depth"] == depth}
            fx_t, hand_t = get.get("fxlab.apply"), get.get("hand-written torch.fx")
            ratios.append({"change": change, "depth": depth,
                           "fxlab_over_hand": fx_t / hand_t if fx_t and hand_t else None,
                           "fxlab_over_fuse_fx": fx_t / get["torch.ao fuse_fx"] if fx_t and get.get("torch.ao fuse_fx") else None,
                           "fxlab_over_trace_only": fx_t / get["trace only"] if fx_t and get.get("trace only") else None})
    growth = []
    d_small, d_big = cfg.depths[-2], cfg.depths[-1]
    for change, _ in changes:
        for impl in ("fxlab.apply", "hand-written torch.fx", "torch.ao fuse_fx", "trace only"):
            t = {r["depth"]: r.get("time_s") for r in rows if r["change"] == change and r["implementation"] == impl}
            if t.get(d_small) and t.get(d_big):
                growth.append({"change": change, "implementation": impl, "depths": [d_small, d_big],
                               "depth_ratio": d_big / d_small, "time_ratio": t[d_big] / t[d_small]})
    targets = []
    for g in growth:
        if g["implementation"] == "fxlab.apply":
            floor = next((x["time_ratio"] for x in growth
                          if x["change"] == g["change"] and x["implementation"] == "trace only"), None)
            targets.append(Target("pass application grows linearly", f"{g['change']}, {d_small}→{d_big} layers",
                                  g["time_ratio"], f"≤ {1.25 * g['depth_ratio']:.2f}× time for {g['depth_ratio']:.0f}× layers",
                                  g["time_ratio"] <= 1.25 * g["depth_ratio"],
                                  f"trace only grows {floor:.2f}×" if floor else ""))
    for change, _ in changes:
        missing = not any(r["change"] == change and r["implementation"] == "fxlab.apply" and r.get("status") == "ok" for r in rows)
        worst = max((r for r in ratios if r["change"] == change and r["fxlab_over_hand"]), key=lambda r: r["fxlab_over_hand"], default=None)
        if worst is None:
            targets.append(Target("fxlab within 2× of hand-written torch.fx", change, None, "≤ 2.00×", None,
                                  "fxlab pass not available" if missing else "not measured"))
            continue
        targets.append(Target("fxlab within 2× of hand-written torch.fx", f"{change} (worst depth: {worst['depth']})",
                              worst["fxlab_over_hand"], "≤ 2.00×", worst["fxlab_over_hand"] <= 2.0))
    return {
        "depths": list(cfg.depths),
        "width": cfg.width,
        "method": (
            f"Model: depth × (Linear({cfg.width}, {cfg.width}) → nn.ReLU) in a ModuleList. Every timed call starts "
            "from the same nn.Module and returns a new GraphModule without mutating it: fxlab.apply(model, passes) "
            "(deep copy, trace, pass, lint + recompile, records) vs a hand-written transform doing deepcopy + "
            "torch.fx.symbolic_trace + the same graph change + lint + recompile; 'trace only' is deepcopy + trace + "
            "lint + recompile with no change (the floor); torch.ao fuse_fx runs on a deep copy. Median over "
            "interleaved rounds of one call each, after one warm-up call (the one whose output is checked). "
            "max_abs_diff_vs_hand compares outputs with the hand-written result on a random input."
        ),
        "rows": rows,
        "ratios": ratios,
        "growth": growth,
        "targets": [t.to_json() for t in targets],
    }


def passes_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    from tabulate import tabulate

    impls = ["fxlab.apply", "hand-written torch.fx", "torch.ao fuse_fx", "trace only"]
    table = []
    for ratio in result["ratios"]:
        cells = [ratio["change"], ratio["depth"]]
        for impl in impls:
            r = next((r for r in result["rows"] if r["change"] == ratio["change"] and r["depth"] == ratio["depth"]
                      and r["implementation"] == impl), None)
            if r is None:
                cells.append("")
            elif r.get("status") == "ok":
                cells.append(f"{_ms(r['time_s'])} ±{r['spread'] * 100:.0f}%")
            else:
                cells.append(r["status"][:40])
        cells.append("—" if ratio["fxlab_over_hand"] is None else f"{ratio['fxlab_over_hand']:.2f}×")
        table.append(cells)
    headers = ["change", "layers", *[f"{i} ms" for i in impls], "fxlab / hand"]
    text = "pass application (ms per call, median ± IQR/median):\n\n" + tabulate(table, headers=headers, tablefmt=fmt,
                                                                                   disable_numparse=True)
    if result["growth"]:
        g = [[x["change"], x["implementation"], f"{x['depths'][0]}→{x['depths'][1]}", f"{x['time_ratio']:.2f}×"]
             for x in result["growth"]]
        text += "\n\ngrowth with depth:\n\n" + tabulate(g, headers=["change", "implementation", "layers", "time ratio"],
                                                        tablefmt=fmt, disable_numparse=True)
    return text


# --------------------------------------------------------------------------------------------
# training suite


def _seed_loaders(root: str, batch_size: int, train_limit: int | None, test_limit: int | None) -> tuple[Any, Any]:
    """The seeds' data pipeline: torchvision MNIST, ToTensor + Normalize, DataLoader(batch 64)."""
    import torch
    import torchvision
    import torchvision.transforms as transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = torchvision.datasets.MNIST(root, train=True, download=False, transform=transform)
    test = torchvision.datasets.MNIST(root, train=False, download=False, transform=transform)
    if train_limit:
        train = torch.utils.data.Subset(train, range(train_limit))
    if test_limit:
        test = torch.utils.data.Subset(test, range(test_limit))
    return (
        torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True),
        torch.utils.data.DataLoader(test, batch_size=batch_size, shuffle=False),
    )


def seed_epoch(model: Any, loader: Any, device: Any, lr: float = 1e-3) -> None:
    """One epoch of the seeds' loop (seed 001): Adam, cross-entropy, per-batch ``.to(device)``."""
    import torch
    from torch import nn

    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for data, labels in loader:
        data, labels = data.to(device), labels.to(device)
        scores = model(data)
        loss = criterion(scores, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def seed_evaluate(model: Any, loader: Any, device: Any) -> float:
    """The seeds' evaluation loop; returns accuracy in percent."""
    import torch

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for data, labels in loader:
            data, labels = data.to(device), labels.to(device)
            _, predictions = torch.max(model(data), dim=1)
            correct += int((predictions == labels).sum())
            total += predictions.size(0)
    model.train()
    return 100.0 * correct / total


def _data_root(root: str | None) -> str:
    """``--data``, else fxlab.data's default (``$FXLAB_DATA``, else the user cache)."""
    from .. import data as fxdata

    return str(fxdata.resolve_root(root))


def training_suite(cfg: Config, device: Any) -> dict[str, Any]:
    """One epoch and one evaluation: fxlab.train vs the seeds' loop, side by side."""
    import torch

    from .. import data as fxdata
    from .. import models as seed_models
    from .. import train as fxtrain

    root = _data_root(cfg.data)
    cache = getattr(fxdata, "_CACHE", None)
    if isinstance(cache, dict):  # time a cold load: the inference suite may have loaded MNIST already
        cache.clear()
    start = time.perf_counter()
    data = fxdata.load(root, device=device)
    fx_load_s = time.perf_counter() - start
    data = _limit(data, cfg.train_limit, cfg.test_limit)
    start = time.perf_counter()
    seed_train, seed_test = _seed_loaders(root, 64, cfg.train_limit, cfg.test_limit)
    seed_load_s = time.perf_counter() - start
    default_batch = fxtrain.DEFAULT_RECIPE.batch_size

    def fresh() -> Any:
        torch.manual_seed(0)
        return seed_models.build("mymodule").to(device)

    def fx_fit(model: Any, batch_size: int) -> None:
        fxtrain.fit(model, data, epochs=1, batch_size=batch_size, device=device, seed=0, progress=False,
                    evaluate_each_epoch=False)

    trained: dict[str, Any] = {}
    SEED, FX64, FXDEF = (
        "seeds' loop (DataLoader, batch 64)",
        "fxlab.train.fit, batch 64",
        f"fxlab.train.fit, default batch {default_batch}",
    )
    steps = {
        SEED: lambda m: seed_epoch(m, seed_train, device),
        FX64: lambda m: fx_fit(m, 64),
        FXDEF: lambda m: fx_fit(m, default_batch),
    }

    def candidate(label: str) -> Callable[[], None]:
        def go() -> None:
            model = fresh()
            steps[label](model)
            trained[label] = model

        return go

    _log("bench training: one epoch each")
    epoch_t = compare({label: candidate(label) for label in steps}, rounds=cfg.train_rounds, round_time=0.0,
                      warmup=1, device=device)
    accuracy = {label: fxtrain.evaluate(model, data).accuracy for label, model in trained.items()}
    model = trained.get(FXDEF) or fresh()
    SEED_EVAL, FX_EVAL = "seeds' evaluation loop (DataLoader, batch 64)", "fxlab.train.evaluate"
    _log("bench training: evaluation")
    eval_t = compare(
        {SEED_EVAL: lambda: seed_evaluate(model, seed_test, device), FX_EVAL: lambda: fxtrain.evaluate(model, data)},
        rounds=max(3, cfg.train_rounds), round_time=0.0, warmup=1, device=device,
    )
    rows = [_train_row("epoch", label, t, accuracy.get(label)) for label, t in epoch_t.items()]
    rows += [_train_row("evaluation", label, t, None) for label, t in eval_t.items()]
    images, test_images = len(data.train), len(data.test)
    targets = []
    for label in (FX64, FXDEF):
        ratio = _ratio(epoch_t[SEED], epoch_t[label])
        targets.append(Target("training epoch vs seeds' loop", label, ratio, "≥ 5.00×",
                              None if ratio is None else ratio >= 5, f"{images} images"))
    ratio = _ratio(eval_t[SEED_EVAL], eval_t[FX_EVAL])
    targets.append(Target("evaluation vs seeds' loop", f"mymodule, {test_images} test images", ratio, "≥ 20.00×",
                          None if ratio is None else ratio >= 20))
    recipe: dict[str, Any] = {}
    if cfg.recipe:
        r = fxtrain.DEFAULT_RECIPE
        _log(f"bench training: fxlab's default recipe on mymodule ({r.epochs} epochs)")
        torch.manual_seed(r.seed)
        model = seed_models.build("mymodule")
        start = time.perf_counter()
        fxtrain.fit_recipe(model, data, r, device=device, progress=False, evaluate_each_epoch=False)
        seconds = time.perf_counter() - start
        acc = fxtrain.evaluate(model, data).accuracy
        recipe = {"model": "mymodule", "recipe": dataclasses.asdict(r), "seconds": seconds, "accuracy": acc}
        targets.append(Target("default recipe test accuracy (%)", "mymodule", acc, "≥ 98.00", acc >= 98.0,
                              f"{r.epochs} epochs in {seconds:.0f} s"))
    memory: dict[str, Any] = {}
    if cfg.memory_probe and device.type == "cpu":
        _log("bench training: peak RSS of a training process")
        memory = _training_rss(root, cfg)
        if memory.get("peak_rss_bytes"):
            mb = memory["peak_rss_bytes"] / 2**20
            targets.append(Target("peak memory training mymodule on CPU (MB)", "whole process, peak RSS", mb,
                                  "< 1024", mb < 1024, "includes Python and torch themselves"))
    return {
        "device": str(device),
        "train_images": images,
        "test_images": test_images,
        "data_load_s": {"fxlab.data.load": fx_load_s, "seeds' torchvision MNIST objects": seed_load_s},
        "method": (
            "Each epoch candidate trains a fresh, identically seeded mymodule for one epoch over the same "
            "training images (Adam, cross-entropy); the candidates take turns over rounds (median shown). "
            "The seeds' loop is seed 001's: torchvision MNIST with ToTensor + Normalize(0.1307, 0.3081) through "
            "DataLoader(batch 64, shuffle=True, num_workers=0), Adam lr 1e-3. fxlab.train.fit (tensors held on the "
            "device, batches by indexing, its one-cycle schedule) runs at batch 64, the seeds' batch, and at its "
            "default batch. Loading the data (read + check the files; fxlab also verifies their MD5s) is timed apart "
            "(data_load_s). Accuracy: test accuracy after that "
            "one epoch (fxlab.train.evaluate). Evaluation: the test set with the fxlab-trained model, the seeds' "
            "loop vs fxlab.train.evaluate."
        ),
        "rows": rows,
        "recipe": recipe,
        "memory": memory,
        "targets": [t.to_json() for t in targets],
    }


def _ratio(slow: Timing | str, fast: Timing | str) -> float | None:
    if isinstance(slow, Timing) and isinstance(fast, Timing) and fast.median > 0:
        return slow.median / fast.median
    return None


def _limit(data: Any, train_limit: int | None, test_limit: int | None) -> Any:
    """fxlab's in-memory MNIST cut to its first images (quick mode)."""
    if not train_limit and not test_limit:
        return data
    from ..data import MNIST, Split

    def cut(split: Split, n: int | None) -> Split:
        return Split(split.pixels[:n], split.labels[:n]) if n else split

    return MNIST(train=cut(data.train, train_limit), test=cut(data.test, test_limit), root=data.root,
                 device=data.device)


def _train_row(phase: str, label: str, timing: Timing | str, accuracy: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"phase": phase, "implementation": label, "accuracy": accuracy}
    if isinstance(timing, Timing):
        row.update(status="ok", time=timing.to_json(), time_s=timing.median, spread=timing.spread)
    else:
        row["status"] = timing
    return row


def _training_rss(root: str, cfg: Config) -> dict[str, Any]:
    """Peak RSS of a fresh CPU process that loads MNIST and trains mymodule with fxlab's defaults."""
    code = (
        "import resource, sys\n"
        "from fxlab import data, models, train\n"
        "steps = None if sys.argv[2] == 'epoch' else int(sys.argv[2])\n"
        "d = data.load(sys.argv[1], download=False)\n"
        "train.fit(models.build('mymodule'), d, epochs=1, device='cpu', progress=False, max_steps=steps)\n"
        # VmHWM is this process's own peak; Linux's ru_maxrss keeps the parent's peak across fork + exec
        "try:\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "    print(int(hwm.split()[1]) * 1024)\n"
        "except (OSError, IndexError):\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024))\n"
    )
    steps = "epoch" if cfg.probe_steps is None else str(cfg.probe_steps)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code, root, steps], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    except (OSError, subprocess.SubprocessError) as exc:
        return {"status": f"failed: {_first_line(exc)}"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"status": f"failed: {tail[:200]}"}
    what = "one epoch" if cfg.probe_steps is None else f"{cfg.probe_steps} steps"
    return {"status": "ok", "peak_rss_bytes": int(proc.stdout.strip().splitlines()[-1]),
            "seconds": time.perf_counter() - start,
            "what": f"VmHWM of a fresh Python process that imports torch + fxlab, loads MNIST, trains mymodule {what}"}


def training_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    from tabulate import tabulate

    if not result.get("rows"):
        return f"training: {result.get('status', 'not run')}"
    table = []
    for r in result["rows"]:
        if r.get("status") == "ok":
            acc = "" if r["accuracy"] is None else f"{r['accuracy']:.2f}%"
            table.append([r["phase"], r["implementation"], f"{r['time_s']:.2f}", f"±{r['spread'] * 100:.0f}%", acc])
        else:
            table.append([r["phase"], r["implementation"], r["status"], "", ""])
    text = (f"training mymodule on {result['device']} ({result['train_images']} train / {result['test_images']} test "
            "images):\n\n" + tabulate(table, headers=["phase", "implementation", "seconds", "spread", "test accuracy"],
                                      tablefmt=fmt, disable_numparse=True))
    notes = []
    if result.get("recipe"):
        r = result["recipe"]
        epochs = r.get("recipe", {}).get("epochs", "?")
        notes.append(f"fxlab's default recipe ({epochs} epochs): {r['accuracy']:.2f}% test accuracy in {r['seconds']:.0f} s")
    if result.get("memory", {}).get("peak_rss_bytes"):
        notes.append(f"peak memory training mymodule on CPU: {result['memory']['peak_rss_bytes'] / 2**20:.0f} MB "
                     f"({result['memory'].get('what', '')})")
    notes.append("data loading, timed apart: " + ", ".join(f"{k} {v:.2f} s" for k, v in result["data_load_s"].items()))
    return text + "\n\n" + "\n".join(("- " if fmt != "simple" else "") + n for n in notes)


# --------------------------------------------------------------------------------------------
# output


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    from .._util import write_atomic

    write_atomic(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


def targets_table(targets: list[dict[str, Any]], fmt: str = "simple") -> str:
    from tabulate import tabulate

    rows = [Target(**t).row() for t in targets]
    return "targets:\n\n" + tabulate(rows, headers=TARGET_HEADERS, tablefmt=fmt, disable_numparse=True)


def run_benchmarks(cfg: Config, suites: Sequence[str]) -> dict[str, Any]:
    """Run the suites; returns everything measured (the ``--json`` document)."""
    import torch

    device = _device(cfg.device)
    result: dict[str, Any] = {
        "environment": environment(device),
        "config": {k: v for k, v in cfg.__dict__.items()},
        "command": "python -m fxlab.bench" + (" --quick" if cfg.quick else ""),
    }
    started = time.perf_counter()
    torch.set_grad_enabled(True)
    if "passes" in suites:
        result["passes"] = passes_suite(cfg)
    if "inference" in suites:
        result["inference"] = inference_suite(cfg, device)
    if "training" in suites:
        result["training"] = training_suite(cfg, device)
    result["seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        result["environment"]["load_average_at_end"] = os.getloadavg()
    result["targets"] = [t for s in SUITES if s in result for t in result[s].get("targets", [])]
    return result


def machine(result: dict[str, Any]) -> str:
    """One line naming what the run measured on (and a warning when other work shared the CPU)."""
    env = result["environment"]
    gpu = f" ({env['gpu']})" if env.get("gpu") else ""
    line = (f"fxlab {env['fxlab']} · torch {env['torch']} · {env['device']}{gpu} · {env['cpu']}, "
            f"{env['cpu_count']} cores, {env['torch_threads']} torch threads · Python {env['python']} · "
            f"{env['date']}" + (" · QUICK (indicative only)" if result["config"]["quick"] else ""))
    loads = [x[0] for x in (env.get("load_average_at_start"), env.get("load_average_at_end")) if x]
    if loads and env.get("cpu_count") and max(loads) > env["cpu_count"]:
        line += (f"\nnote: the machine was busy with other work (1-minute load average up to {max(loads):.1f} on "
                 f"{env['cpu_count']} cores): absolute times are inflated and noisy; ratios measured side by side "
                 "hold better")
    return line


def report(result: dict[str, Any], fmt: str = "simple") -> str:
    """The report: the machine, each suite's tables, the targets (``fmt="github"``: Markdown)."""
    parts = [machine(result)]
    for suite, tables in (("inference", inference_tables), ("passes", passes_tables), ("training", training_tables)):
        if suite in result:
            if fmt != "simple":
                parts.append(f"**{suite}** — {result[suite].get('method', '')}")
            parts.append(tables(result[suite], fmt))
    if result["targets"]:
        parts.append(targets_table(result["targets"], fmt))
    parts.append(f"total {result['seconds']:.0f} s · reproduce: `{result['command']}`")
    return "\n\n".join(parts)
