"""Benchmarks: where fxlab stands against torch.fx, torch.ao and the seeds' own loops.

    python -m fxlab.bench [--suite inference|passes|training|explain|kernels|lowbit|torchao] [--quick] [--json out.json]

The suites, each timed side by side in one run (these machines are shared and noisy, so the
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
- ``kernels``: which implementation each quantized Linear chose on this machine per shape bucket,
  the candidates' times and what was left out (``kernels.py``; measured afresh, the cache updated).
- ``explain``: ``fxlab.bisect``'s verifications on pipelines of 4, 16 and 64 steps (logarithmic), and
  the overhead of per-node numerics on a verification step (``explain.py``).
- ``lowbit``: the packed int4 / int8-int4 / int2 Linears' CPU paths (fused Numba kernel, kernel-written
  float weight + ``F.linear``) against the same module's torch ops (the weight unpacked to float32,
  then ``F.linear``), at batch 1 and 256 (``lowbit.py``).
- ``torchao``: each fxlab quantization mode next to torchao's nearest config on the trained seed
  models: MNIST test accuracy, state-dict bytes, latency at batch 1 and 256 (``torchao.py``; needs
  the optional ``torchao``, ``pip install 'fxlab[bench]'``: without it the suite says it was not run).

Modules: ``harness`` (interleaved side-by-side timing), ``memory`` (peak tensor bytes, RSS,
state-dict size), ``environment``, the suites ``inference``, ``passes`` and ``training``, ``seeds``
(the seeds' own DataLoader loops), ``targets`` and ``report`` (tables, Markdown, JSON). Progress
goes to the ``fxlab.bench`` logger (INFO); the command shows it on stderr.

Every timing: warm-up calls, then several rounds in which the candidates take turns (the order
rotates each round); each round times enough calls to last a few tens of milliseconds; the table
shows the median over rounds and the spread (interquartile range / median). The device (CUDA when
available), torch version, CPU and thread count are recorded. Targets from the issues are listed
with met / missed; nothing here is tuned to them.

``--quick`` (for CI, well under 2 minutes on 2 cores) runs smaller sizes and fewer rounds: its
figures only show that every path works.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._util import resolve_device
from ..errors import UsageError
from .environment import environment
from .explain import explain_suite, explain_tables
from .harness import Timing, compare
from .kernels import kernels_suite, kernels_tables
from .inference import GemmFloor, Variant, fusion_passes, inference_suite, inference_variants
from .lowbit import lowbit_suite, lowbit_tables
from .memory import peak_tensor_bytes, state_dict_bytes, training_rss
from .passes import ao_fuse_fx, deep_mlp, hand_fuse_linear_relu, hand_insert_relu, hand_trace, passes_suite
from .report import load_result, machine, report, targets_table, write_json_atomic
from .seeds import seed_epoch, seed_evaluate, seed_loaders
from .targets import QUANT_MODES, Target
from .torchao import torchao_suite, torchao_tables
from .training import training_suite

__all__ = [
    "QUANT_MODES", "SUITES", "Config", "GemmFloor", "Target", "Timing", "Variant", "ao_fuse_fx", "compare",
    "deep_mlp", "environment", "explain_suite", "explain_tables", "fusion_passes", "hand_fuse_linear_relu", "hand_insert_relu", "hand_trace",
    "inference_suite", "inference_variants", "kernels_suite", "kernels_tables", "load_result", "lowbit_suite",
    "lowbit_tables", "machine", "passes_suite", "peak_tensor_bytes",
    "report", "run_benchmarks", "seed_epoch", "seed_evaluate", "seed_loaders", "state_dict_bytes",
    "targets_table", "training_rss", "training_suite", "write_json_atomic",
    "torchao_suite", "torchao_tables",
]

SUITES = ("inference", "passes", "training", "explain", "kernels", "lowbit", "torchao")


@dataclass
class Config:
    """What a run measures; ``quick()`` is the CI smoke configuration."""

    quick: bool = False
    device: str = "auto"
    data: str | None = None
    # inference
    models: tuple[str, ...] = ("mymodule", "neuralnetwork", "simplenn", "mymnist", "linear-relu-stack", "lenet5",
                               "mnist-cnn")
    batches: tuple[int, ...] = (1, 256, 10_000)
    # the CNNs' batch sizes: an int8 conv on a CPU takes seconds a call at 10 000 images
    conv_batches: tuple[int, ...] = (1, 256)
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
    train_rounds: int = 5  # epochs of each candidate, side by side (the VM's slow spells last seconds)
    recipe: bool = True  # also train mymodule with fxlab's default recipe and report accuracy
    recipe_seeds: tuple[int, ...] = (0, 1, 2)  # one default-recipe run per seed
    memory_probe: bool = True  # peak RSS of a training subprocess
    probe_steps: int | None = None  # optimizer steps of that subprocess (None: one full epoch)

    @classmethod
    def quick_config(cls, **kw: Any) -> Config:
        """Small sizes and few rounds: every path runs; the figures are indicative only."""
        return cls(
            quick=True,
            batches=(1, 256),
            rounds=3,
            round_time=0.02,
            compile_models=("mymodule",),
            compile_batches=(256,),
            models=("mymodule", "simplenn", "lenet5"),
            depths=(10, 40, 160),
            pass_rounds=3,
            train_limit=2_000,
            test_limit=1_000,
            train_rounds=2,
            probe_steps=20,
            recipe=False,
            **kw,
        )


def run_benchmarks(cfg: Config, suites: Sequence[str]) -> dict[str, Any]:
    """Run the suites; returns everything measured (the ``--json`` document)."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise UsageError(f"unknown suite {unknown[0]!r}: choose from {', '.join(SUITES)}")
    device = resolve_device(cfg.device)
    result: dict[str, Any] = {
        "environment": environment(device),
        "config": {k: v for k, v in cfg.__dict__.items()},
        "command": "python -m fxlab.bench" + (" --quick" if cfg.quick else "")
                   + "".join(f" --suite {s}" for s in suites if set(suites) != set(SUITES)),
    }
    started = time.perf_counter()
    torch.set_grad_enabled(True)
    if "passes" in suites:
        result["passes"] = passes_suite(cfg)
    if "inference" in suites:
        result["inference"] = inference_suite(cfg, device)
    if "training" in suites:
        result["training"] = training_suite(cfg, device)
    if "explain" in suites:
        result["explain"] = explain_suite(cfg)
    if "kernels" in suites:
        result["kernels"] = kernels_suite(cfg, device)
    if "lowbit" in suites:
        result["lowbit"] = lowbit_suite(cfg)
    if "torchao" in suites:
        result["torchao"] = torchao_suite(cfg, device)
    result["seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        result["environment"]["load_average_at_end"] = os.getloadavg()
    result["targets"] = [t for s in SUITES if s in result for t in result[s].get("targets", [])]
    return result
