"""The lowbit suite: the packed int4 / int2 Linears' CPU paths against unpack + ``F.linear``.

For each packed module (int4 weight-only, int8-int4, int2; group 32) on the
seeds' widest layers (784→128 and 784→312), at batch 1 and 256, timed side by side in interleaved
rounds (:func:`fxlab.bench.harness.compare`):

- ``fxlab``: the module's forward (the path it picks for the batch: ``LOWBIT_KERNEL_MAX_ROWS``);
- ``fused kernel``: the fused unpack-and-dot Numba kernel forced, whatever the batch;
- ``kernel weight + F.linear``: the float32 weight written by the Numba kernel, then ``F.linear``;
- ``unpack + F.linear``: the baseline, the module's torch ops (kernels off): the weight unpacked to
  float32, then ``F.linear`` (int8-int4: of its activations' int8 codes, then the row scales, as the
  mode computes);
- ``float32``: ``F.linear`` on the original float weight (for scale).

Ratios are ``unpack + F.linear`` over each candidate (> 1: faster than the baseline). The targets:
fxlab's path faster than unpack + ``F.linear`` for every module at batch 1 and 256. The outputs of
the two kernel paths are compared (max relative difference: float32 summation order only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .harness import compare, ratio, timing_fields
from .targets import Target

if TYPE_CHECKING:
    from . import Config

log = logging.getLogger("fxlab.bench")

SHAPES = ((784, 128), (784, 312))
BATCHES = (1, 256)


def _forced(m: torch.nn.Module, x: torch.Tensor, max_rows: int) -> Callable[[], Any]:
    """``m(x)`` with the fused kernel's row limit set to ``max_rows`` (0: never; huge: always)."""
    from ..nn import lowbit

    def call() -> Any:
        saved = lowbit.LOWBIT_KERNEL_MAX_ROWS
        lowbit.LOWBIT_KERNEL_MAX_ROWS = max_rows
        try:
            return m(x)
        finally:
            lowbit.LOWBIT_KERNEL_MAX_ROWS = saved

    return call


def _unpack_linear(m: Any, x: torch.Tensor) -> Callable[[], Any]:
    """The baseline: the module's own arithmetic in torch ops, without the kernels: the packed weight
    unpacked to float32, then ``F.linear`` (int8-int4: of the activations' int8 codes, which torch ops
    compute first, then the row scales; a float GEMM of the unquantized activations would be another
    function, and cheaper by the very quantization the mode does)."""
    from ..nn import kernels

    def call() -> Any:
        with kernels.disabled():
            return m(x)

    return call


def lowbit_suite(cfg: Config) -> dict[str, Any]:
    """Timings of each packed module's paths at batch 1 and 256 (CPU; the kernels' target)."""
    from ..nn import kernels
    from ..nn.lowbit import Int2WeightOnlyLinear, Int4WeightOnlyLinear, Int8Int4Linear

    torch.manual_seed(0)
    modules = {"int4": (Int4WeightOnlyLinear, 32), "int8-int4": (Int8Int4Linear, 32), "int2": (Int2WeightOnlyLinear, 32)}
    shapes = SHAPES[:1] if cfg.quick else SHAPES
    rows = []
    with torch.inference_mode():
        for k, n in shapes:
            linear = torch.nn.Linear(k, n)
            for mode, (cls, group) in modules.items():
                m = cls.from_float(linear, group_size=group)
                for batch in BATCHES:
                    x = torch.randn(batch, k)
                    candidates = {
                        "fxlab": lambda m=m, x=x: m(x),
                        "fused kernel": _forced(m, x, 1 << 30),
                        "kernel weight + F.linear": _forced(m, x, 0),
                        "unpack + F.linear": _unpack_linear(m, x),
                        "float32": lambda x=x: linear(x),
                    }
                    if not kernels.available():
                        for name in ("fused kernel", "kernel weight + F.linear"):
                            candidates.pop(name)
                    # cheap calls on a shared machine: three times the rounds of the other suites
                    timings = compare(candidates, rounds=3 * cfg.rounds, round_time=cfg.round_time)
                    base = timings["unpack + F.linear"]
                    diff = None
                    if kernels.available():
                        a, b = candidates["fused kernel"](), candidates["kernel weight + F.linear"]()
                        diff = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
                    row = {"mode": mode, "shape": f"{k}→{n}", "batch": batch, "max_rel_diff_kernel_paths": diff,
                           "candidates": {name: {**timing_fields(t), "speedup_vs_unpack": ratio(base, t)}
                                          for name, t in timings.items()}}
                    rows.append(row)
                    log.info("lowbit: %s %s batch %d: fxlab %.2f× unpack+F.linear", mode, row["shape"], batch,
                             row["candidates"]["fxlab"]["speedup_vs_unpack"] or float("nan"))
    wins = [r["candidates"]["fxlab"]["speedup_vs_unpack"] for r in rows]
    ok = all(w is not None and w > 1.0 for w in wins)
    worst = min((w for w in wins if w is not None), default=None)
    targets = [Target("low-bit Linears faster than unpack + F.linear", "int4, int8-int4, int2 at batch 1 and 256",
                      worst, "> 1.00× (every row)", ok if worst is not None else None,
                      f"worst {worst:.2f}× over {len(rows)} rows" if worst is not None else "not measured")]
    return {"rows": rows, "method": "each packed module's paths timed side by side in interleaved rounds (median); "
                                    "speed-up = median over rounds of unpack + F.linear time / candidate time "
                                    "in the same round",
            "targets": [t.to_json() for t in targets]}


def lowbit_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    """One row per module × shape × batch: each candidate's time and its speed-up over unpack + F.linear."""
    from tabulate import tabulate

    names = ["fxlab", "fused kernel", "kernel weight + F.linear", "unpack + F.linear", "float32"]
    table = []
    for r in result["rows"]:
        cells = []
        for name in names:
            c = r["candidates"].get(name)
            if c is None or c.get("status") != "ok":
                cells.append("—" if c is None else c["status"])
            else:
                cells.append(f"{c['time_s'] * 1e6:.0f} µs ({c['speedup_vs_unpack']:.2f}×)")
        diff = r["max_rel_diff_kernel_paths"]
        table.append([r["mode"], r["shape"], r["batch"], *cells, "—" if diff is None else f"{diff:.1e}"])
    return "low-bit Linears on CPU (time, speed-up over unpack + F.linear):\n\n" + tabulate(
        table, headers=["mode", "shape", "batch", *names, "kernel paths Δ"], tablefmt=fmt, disable_numparse=True)
