"""The kernels suite: which implementation each quantized Linear and conv chose on this machine, and why.

Every seed model is fused, and quantized in every mode (a CNN's convs too, in the modes
``quantize-conv`` has), and run once at each batch size under policy
``auto`` with the decisions measured afresh (:func:`fxlab.nn.kernels.choice.remeasured`; the
user cache is updated with them). The table lists each op and shape bucket once: the candidates'
best times, the one chosen, and the candidates left out (not available here, or not the mode's
numbers). The CPU model and the ISA flags the decisions depend on head the report.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch

from .harness import describe
from .targets import QUANT_MODES

if TYPE_CHECKING:
    from . import Config

log = logging.getLogger("fxlab.bench")

METHOD = (
    "Each seed model (random weights, seeded) is fused (LinearReLU, ConvReLU, MeasuredMaxPool2d) and quantized in "
    "each mode (fusion, "
    "then quantize-linear, and for a CNN quantize-conv in the modes it has) and run "
    "once per batch size under torch.no_grad() with FXLAB_KERNELS=auto, every shape bucket measured afresh: "
    "each available candidate runs once as a warm-up and to check its output against the reference "
    "(int8 codes equal, floats within the mode's rounding), then the candidates take turns for 3-15 rounds "
    "(about 3 ms each at most; a kernel of a few µs timed over several calls a round), and the median of each "
    "is kept; the fastest median is chosen. Times are medians, µs per call on the first input of that bucket. "
    "A decision measured while the machine was busy is marked * and not cached. A Linear's bucket is "
    "rows×K×N (rows rounded up to a power of two); a conv's is batch×C×H×W×(output channels, kernel, "
    "then stride s, padding p, dilation d where not the default); a max-pool's is batch×C×H×W×max(k kernel, "
    "s stride, d dilation where not 1); a channels-last input's ends in /nhwc."
)


def kernels_suite(cfg: Config, device: torch.device) -> dict[str, Any]:
    """Quantize every model in every mode, run each batch size once, and report every decision."""
    import fxlab
    from .. import models as seed_models
    from ..nn import kernels
    from ..nn.kernels import choice
    from ..passes.quantize import CONV_MODES
    from .inference import is_cnn, fusion_passes, mnist_images, model_batches, quantize_passes

    if device.type != "cpu":
        return {"status": f"n/a on {device}: kernels are chosen for CPU inference", "rows": [], "targets": []}
    images, source = mnist_images(cfg.data, max(cfg.batches))
    calibration = [images[i : i + 256] for i in range(0, min(1024, images.shape[0]), 256)]
    failures: list[str] = []
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    choice.reset()  # this process's earlier decisions (another suite's) are not listed, nor reused
    # what policy auto chooses, whatever FXLAB_KERNELS says for this process
    with kernels.enabled(), choice.remeasured(), choice.forced("auto"), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in cfg.models:
            torch.manual_seed(0)
            model = seed_models.build(name).eval()
            cnn = is_cnn(model)
            for mode in ("fused", *QUANT_MODES):
                log.info("bench kernels: %s %s", name, mode)
                try:
                    passes = (fusion_passes(model) if mode == "fused" else
                              quantize_passes(model, mode, calibration, convs=cnn and mode in CONV_MODES))
                    gm = fxlab.apply(model, passes)
                    gm.eval()
                    for batch in model_batches(model, cfg):
                        before = {(d.op, d.bucket): d for d in choice.decisions()}
                        gm(images[:batch])
                        # new decisions, and any taken again (one measured on a busy machine, rechecked)
                        for d in [d for d in choice.decisions() if before.get((d.op, d.bucket)) is not d]:
                            entry = seen.setdefault((d.op, d.bucket), {"models": []})
                            entry.update(d.to_json(), source=d.source, busy=d.busy)  # the latest decision
                            if name not in entry["models"]:
                                entry["models"].append(name)
                except Exception as exc:  # a benchmark reports failures, it does not stop on them
                    failures.append(f"{name} {mode}: {describe(exc)}")
    rows = sorted(seen.values(), key=lambda r: (r["op"], _rows_of(r["bucket"]), r["bucket"]))
    return {"device": str(device), "inputs": source, "batches": list(cfg.batches), "method": METHOD,
            "machine": choice.machine(), "cache": str(choice.cache_path()), "rows": rows, "failures": failures,
            "targets": []}


def _rows_of(bucket: str) -> int:
    return int(bucket.split("x", 1)[0])


def kernels_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    """The decisions: op, shape bucket, chosen, every candidate's time, what was left out and why."""
    from tabulate import tabulate

    if not result.get("rows"):
        return f"kernels: {result.get('status', 'no decisions')}"
    table = []
    for r in result["rows"]:
        timed = {n: t for n, t in r["times_us"].items() if t is not None}
        best = min(timed.values()) if timed else None
        times = ", ".join(f"{n} {t:.1f}" + (f" ({t / best:.1f}×)" if best and n != r["chosen"] else "")
                          for n, t in sorted(timed.items(), key=lambda kv: kv[1]))
        left_out = "; ".join(f"{n}: {why}" for n, why in r["rejected"].items())
        chosen = r["chosen"] + (" *" if r.get("busy") else "")
        table.append([r["op"], r["bucket"], chosen, times, left_out, ", ".join(r["models"])])
    m = result["machine"]
    head = (f"kernel choices on {m['cpu']} (torch capability {m['torch_capability']}; ISA flags "
            f"{' '.join(m['isa_flags']) or 'none found'}; torch {m['torch']}, numba {m['numba']}, "
            f"{m['threads']} threads), cache {result['cache']}:\n\n")
    text = head + tabulate(table, headers=["op", "shape bucket", "chosen", "candidates, µs per call (vs chosen)",
                                           "left out", "models"], tablefmt=fmt, disable_numparse=True)
    if any(r.get("busy") for r in result["rows"]):
        text += ("\n\n* measured while the machine was busy (load average above the CPU count, or torch's "
                 "thread pool starved by other work): used in that run, not cached, measured again later")
    if result.get("failures"):
        text += "\n\nfailed: " + "; ".join(result["failures"])
    return text
