"""The inference suite: every seed model before and after fxlab's pipelines, with anchors.

Variants: the float32 original, fxlab's fusion pipeline, a GEMMs-only floor, fusion then each
quantization mode (for a CNN, each mode also with its convs quantized: ``bf16+conv``, ...),
torch.ao ``quantize_dynamic`` and ``torch.compile`` of the original; at each
batch size: median latency, throughput, speed-up vs float32, peak tensor memory, state-dict size.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .harness import Timing, compare, describe, ratio
from .memory import peak_tensor_bytes, state_dict_bytes
from .targets import QUANT_MODES, inference_targets

if TYPE_CHECKING:
    from . import Config

log = logging.getLogger("fxlab.bench")

METHOD = (
    "Built-in models (seed MLPs, CNNs) with random weights (seeded), eval mode, under torch.no_grad(). Latency: seconds per "
    "forward of the whole batch, median over interleaved rounds; spread = IQR / median. "
    "Throughput: images per second. speedup = median over rounds of float32 time / variant time in the same round "
    "(>1 is faster). "
    "Peak tensor memory: bytes of tensors allocated and alive at once during one forward "
    "(CPU: replay of torch.profiler's allocation and free events; CUDA: max_memory_allocated), "
    "weights and input excluded. state_dict_bytes: size of torch.save(state_dict)."
)


@dataclass
class Variant:
    """One way of running a model: a label, what it is, and the module (or why there is none)."""

    label: str
    what: str
    module: Any = None
    error: str | None = None
    pipeline: str = ""
    build_s: float | None = None


def mnist_images(root: str | None, count: int) -> tuple[torch.Tensor, str]:
    """``count`` normalised MNIST test images (N, 1, 28, 28), or random ones when MNIST is absent."""
    from .. import data as fxdata

    try:
        images = fxdata.load(fxdata.resolve_root(root), download=False).test.images  # never fetched here
        reps = math.ceil(count / images.shape[0])
        images = images.repeat(reps, 1, 1, 1)[:count] if reps > 1 else images[:count]
        return images.contiguous(), "MNIST test images"
    except Exception as exc:  # the inference figures do not depend on pixel values
        log.warning("bench: MNIST unavailable (%s); timing on random inputs", describe(exc))
        gen = torch.Generator().manual_seed(0)
        return torch.randn(count, 1, 28, 28, generator=gen), "random normal inputs (MNIST unavailable)"


def _has(model: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def fusion_passes(model: nn.Module) -> list[Any]:
    """fxlab's standard fusion pipeline for ``model``: the passes whose pattern occurs in it."""
    import fxlab

    names = []
    if _has(model, nn.modules.batchnorm._BatchNorm):
        names.append("fold-batchnorm")
    if _has(model, nn.Dropout):
        names.append("remove-dropout")
    names.append("fuse-linear-relu")
    if _has(model, nn.modules.conv._ConvNd):
        names += ["fuse-conv-relu", "swap-max-pool"]
    return [fxlab.get_pass(n)() for n in names]


def is_cnn(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution (the bench runs it at the conv batch sizes, and quantizes
    its convs too in extra variants)."""
    return _has(model, nn.modules.conv._ConvNd)


def model_batches(model: nn.Module, cfg: Config) -> tuple[int, ...]:
    """The batch sizes ``model`` runs at: ``cfg.batches``, for a CNN only those in ``cfg.conv_batches``."""
    return tuple(b for b in cfg.batches if b in cfg.conv_batches) if is_cnn(model) else tuple(cfg.batches)


def quantize_passes(model: nn.Module, mode: str, calibration: list[torch.Tensor], *, convs: bool = False) -> list[Any]:
    """fxlab's fusion pipeline for ``model``, then ``quantize-linear{mode}`` (static: calibrated on
    ``calibration``); with ``convs``, then ``quantize-conv{mode}`` too (every mode but static)."""
    import fxlab

    options: dict[str, Any] = {"mode": mode}
    if mode == "static":
        options["calibration"] = calibration
    passes = [*fusion_passes(model), fxlab.get_pass("quantize-linear")(**options)]
    if convs:
        passes.append(fxlab.get_pass("quantize-conv")(mode=mode))
    return passes


def _build(label: str, what: str, make: Callable[[], Any], pipeline: str = "") -> Variant:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = make()
    except Exception as exc:
        return Variant(label, what, error=f"not built: {describe(exc)}", pipeline=pipeline)
    return Variant(label, what, module=module, pipeline=pipeline, build_s=time.perf_counter() - start)


class GemmFloor:
    """Runs only the Linears of an MLP-shaped module, in graph order: ``F.linear`` after ``F.linear``."""

    def __init__(self, gm: Any) -> None:
        modules = dict(gm.named_modules())
        self.layers = [
            (m.weight, m.bias)
            for node in gm.graph.nodes
            if node.op == "call_module" and isinstance(m := modules[str(node.target)], nn.Linear)
        ]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for weight, bias in self.layers:
            x = F.linear(x, weight, bias)
        return x

    def state_dict(self) -> dict[str, Any]:
        """The Linears' weights and biases (what ``state_dict_bytes`` measures)."""
        return {f"{i}.{name}": t for i, (w, b) in enumerate(self.layers) for name, t in (("weight", w), ("bias", b))
                if t is not None}


def _fxlab_variants(model: nn.Module, calibration: list[torch.Tensor]) -> list[Variant]:
    """fxlab's fusion pipeline, the GEMMs-only floor of its result, and fusion then each quantization mode."""
    import fxlab

    try:
        fusion_text = fxlab.format_pipeline(fusion_passes(model))
    except Exception as exc:
        fusion_text = f"(fusion passes missing: {describe(exc)})"
    fused = _build("fused", f"fxlab: {fusion_text}", lambda: fxlab.apply(model, fusion_passes(model)).eval(),
                   fusion_text)
    out = [fused]
    if fused.module is not None and not is_cnn(model):  # a CNN's GEMMs are no floor
        out.append(_build("GEMMs only", "floor: the fused model's float32 Linears alone, back to back (no activation, "
                          "no other op); no exact float32 rewrite of the model can run faster",
                          lambda: GemmFloor(fused.module)))
    from ..passes.quantize import CONV_MODES

    cnn = is_cnn(model)
    for mode, convs in [(m, False) for m in QUANT_MODES] + [(m, True) for m in QUANT_MODES if cnn and m in CONV_MODES]:

        def quantized(mode: str = mode, convs: bool = convs) -> Any:
            return fxlab.apply(model, quantize_passes(model, mode, calibration, convs=convs)).eval()

        pipeline = f"{fusion_text},quantize-linear{{mode={mode}}}" + (f",quantize-conv{{mode={mode}}}" if convs else "")
        what = f"fxlab: fusion, then quantize-linear{{mode={mode}}}" + (
            f" and quantize-conv{{mode={mode}}} (every layer in {mode})" if convs else "")
        out.append(_build(f"{mode}+conv" if convs else mode, what, quantized, pipeline))
    return out


def _anchors(model: nn.Module, device: torch.device, compile_: bool) -> list[Variant]:
    """torch.ao's quantize_dynamic (CPU only) and torch.compile of the original."""
    if device.type == "cpu":

        def ao_dynamic() -> Any:
            from torch.ao.quantization import quantize_dynamic

            return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)

        out = [_build("torch.ao dynamic", "anchor: torch.ao quantize_dynamic(original, {Linear}, qint8)", ao_dynamic)]
    else:
        out = [Variant("torch.ao dynamic", "anchor: torch.ao quantize_dynamic", error="n/a: CPU-only")]
    if compile_:
        out.append(_build("torch.compile", "anchor: torch.compile(original, dynamic=False); compile time is the first "
                          "call", lambda: torch.compile(copy.deepcopy(model), dynamic=False)))
    else:
        out.append(Variant("torch.compile", "anchor: torch.compile(original)", error="skipped (--quick)"))
    return out


def inference_variants(model: nn.Module, device: torch.device, calibration: list[torch.Tensor], *,
                       compile_: bool) -> list[Variant]:
    """The float32 original, fxlab's pipelines on it, and the anchors, ready to run on ``device``."""
    model = model.to(device).eval()
    return [Variant("float32", "the original nn.Module, eager", module=model), *_fxlab_variants(model, calibration),
            *_anchors(model, device, compile_)]


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


def _candidates(variants: list[Variant], x: torch.Tensor, batch: int,
                cfg: Config) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The variants to time at this batch (one call each), and why the others are not timed."""
    candidates: dict[str, Callable[[], Any]] = {}
    skipped: dict[str, str] = {}
    for v in variants:
        if v.module is None:
            skipped[v.label] = v.error or "not built"
        elif v.label == "torch.compile" and cfg.compile_batches is not None and batch not in cfg.compile_batches:
            skipped[v.label] = "skipped (--quick)"
        else:
            candidates[v.label] = lambda m=v.module, x=x: m(x)
    return candidates, skipped


def _row(name: str, v: Variant, batch: int, timing: Timing | str | None, base: Timing | str | None,
         extra: dict[str, Any]) -> dict[str, Any]:
    """One report row: ``extra`` holds state_dict_bytes, peak bytes and (when not timed) why not."""
    row: dict[str, Any] = {"model": name, "variant": v.label, "what": v.what, "pipeline": v.pipeline, "batch": batch,
                           "state_dict_bytes": extra.get("size"), "build_s": v.build_s}
    if not isinstance(timing, Timing):
        row["status"] = timing if timing is not None else extra.get("skipped", "not run")
        return row
    row.update(status="ok", latency=timing.to_json(), latency_ms=timing.median * 1e3, spread=timing.spread,
               throughput=batch / timing.median,
               speedup=ratio(base, timing),
               peak_tensor_bytes=extra.get("peak"))
    return row


def _measure_batch(name: str, variants: list[Variant], x: torch.Tensor, cfg: Config, device: torch.device,
                   sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Every variant of one model at one batch size, timed side by side, then its peak memory."""
    batch = x.shape[0]
    candidates, skipped = _candidates(variants, x, batch, cfg)
    log.info("bench inference: %s batch %d: %d variants", name, batch, len(candidates))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings = compare(candidates, rounds=cfg.rounds, round_time=cfg.round_time, device=device)
        peaks = {label: peak_tensor_bytes(candidates[label], device)
                 for label, timing in timings.items() if isinstance(timing, Timing)}
    base = timings.get("float32")
    return [_row(name, v, batch, timings.get(v.label), base,
                 {"size": sizes.get(v.label), "peak": peaks.get(v.label), "skipped": skipped.get(v.label)})
            for v in variants]


def _measure_model(name: str, images: torch.Tensor, calibration: list[torch.Tensor], cfg: Config,
                   device: torch.device) -> list[dict[str, Any]]:
    """One seed model: build its variants once, then measure them at every batch size."""
    from .. import models as seed_models

    torch.manual_seed(0)
    model = seed_models.build(name)
    compile_model = cfg.compile_models is None or name in cfg.compile_models
    variants = inference_variants(model, device, calibration, compile_=compile_model)
    sizes = {v.label: state_dict_bytes(v.module) for v in variants if v.module is not None}
    rows = []
    for batch in model_batches(model, cfg):
        rows += _measure_batch(name, variants, images[:batch], cfg, device, sizes)
    del variants
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    return rows


def inference_suite(cfg: Config, device: torch.device) -> dict[str, Any]:
    """Every seed model × variant × batch size: latency, throughput, speed-up, memory."""
    from ..nn.kernels import choice

    # torch.compile on a CPU-only machine logs that it found no CUDA runtime: not news here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    images, source = mnist_images(cfg.data, max(cfg.batches))
    images = images.to(device)
    calibration = [images[i : i + 256] for i in range(0, min(1024, images.shape[0]), 256)]
    rows: list[dict[str, Any]] = []
    known = {(d.op, d.bucket) for d in choice.decisions()}
    with _cold_inductor_cache():
        for name in cfg.models:
            rows += _measure_model(name, images, calibration, cfg, device)
    return {
        "device": str(device),
        "inputs": source,
        "batches": list(cfg.batches),
        "method": METHOD,
        "rows": rows,
        # the implementations these figures ran (CPU: measured on first use, or read from the cache)
        "kernel_decisions": [{**d.to_json(), "source": d.source, "busy": d.busy}
                             for d in choice.decisions() if (d.op, d.bucket) not in known],
        "targets": [t.to_json() for t in inference_targets(rows, device)],
    }
