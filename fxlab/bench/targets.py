"""Performance targets from the issues, and whether a run met them (nothing is tuned to them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .harness import latency_ratio

QUANT_MODES = ("dynamic", "weight-only", "bf16", "fp16", "static")
INT8_MODES = ("dynamic", "weight-only", "static")
TARGET_HEADERS = ["target", "where", "measured", "required", "verdict", "note"]


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
        """The target as a table row (``TARGET_HEADERS``)."""
        verdict = "n/a" if self.met is None else ("met" if self.met else "MISSED")
        measured = "—" if self.measured is None else f"{self.measured:.2f}"
        return [self.target, self.where, measured, self.required, verdict, self.note]

    def to_json(self) -> dict[str, Any]:
        """The target as the JSON report stores it."""
        return {"target": self.target, "where": self.where, "measured": self.measured, "required": self.required,
                "met": self.met, "note": self.note}


def at_least(target: str, where: str, measured: float | None, minimum: float, note: str = "", *,
             strict: bool = False) -> Target:
    """A target ``measured ≥ minimum`` (``> minimum`` when ``strict``); n/a when not measured."""
    required = f"{'>' if strict else '≥'} {minimum:.2f}×"
    met = None if measured is None else (measured > minimum if strict else measured >= minimum)
    return Target(target, where, measured, required, met, note)


# --------------------------------------------------------------------------------------------
# inference


def _latency(rows: list[dict[str, Any]], model: str, variant: str, batch: int) -> dict[str, Any] | None:
    for r in rows:
        if r["model"] == model and r["variant"] == variant and r["batch"] == batch:
            return r["latency"] if r.get("status") == "ok" else None
    return None


def _speedup(rows: list[dict[str, Any]], model: str, slow: str, fast: str, batch: int) -> float | None:
    """How many times faster variant ``fast`` ran than ``slow`` (same model and batch, timed in the same
    rounds): the median of the per-round ratios (:func:`fxlab.bench.harness.latency_ratio`)."""
    return latency_ratio(_latency(rows, model, slow, batch), _latency(rows, model, fast, batch))


def _quantized(rows: list[dict[str, Any]], model: str, batch: int,
               modes: tuple[str, ...] = QUANT_MODES) -> list[str]:
    """The quantized ``modes`` that were timed on ``model`` at ``batch``."""
    return [mode for mode in modes if _latency(rows, model, mode, batch)]


def _fused_simplenn(rows: list[dict[str, Any]]) -> Target:
    f, g = (_speedup(rows, "simplenn", "float32", v, 256) for v in ("fused", "GEMMs only"))
    note = "fused variant not available"
    if f:
        note = f"ceiling for exact float32 rewrites (GEMMs alone): {g:.2f}×" if g else ""
    return at_least("fused SimpleNN speed-up", "simplenn, batch 256", f, 1.3, note)


def _vs_ao(rows: list[dict[str, Any]], model: str, device: Any) -> Target:
    ao = _latency(rows, model, "torch.ao dynamic", 256)
    quant = _quantized(rows, model, 256, INT8_MODES)
    name, where = "fastest int8 mode vs torch.ao dynamic", f"{model}, batch 256"
    if not quant or not ao:
        note = "no quantized variant" if not quant else (
            "torch.ao n/a on " + str(device) if device.type != "cpu" else "torch.ao failed")
        return Target(name, where, None, "≥ 1.00×", None, note)
    over_ao = {mode: _speedup(rows, model, "torch.ao dynamic", mode, 256) or 0.0 for mode in quant}
    best = max(over_ao, key=over_ao.__getitem__)
    return at_least(name, where, over_ao[best], 1.0, f"fastest: {best}")


def _slowest_at_batch_1(rows: list[dict[str, Any]], model: str) -> Target:
    t = _latency(rows, model, "float32", 1)
    quant = _quantized(rows, model, 1)
    name, where, required = "slowest quantized mode vs float32", f"{model}, batch 1", "≤ 1.50× slower"
    if not t or not quant:
        return Target(name, where, None, required, None, "no quantized variant")
    slowdowns = {mode: _speedup(rows, model, mode, "float32", 1) or 0.0 for mode in quant}
    worst = max(slowdowns, key=slowdowns.__getitem__)
    return Target(name, where, slowdowns[worst], required, slowdowns[worst] <= 1.5, f"slowest: {worst}")


def _native_bf16(device: Any) -> bool:
    """Whether ``device`` multiplies bf16 natively (CUDA; a CPU with AVX512-BF16 or AMX)."""
    if getattr(device, "type", "cpu") != "cpu":
        return True
    from ..nn.quantized import _native_half_on_cpu

    return _native_half_on_cpu(torch.bfloat16)


def _bf16(rows: list[dict[str, Any]], model: str, device: Any) -> Target:
    """bf16 ≥ 1.5× float32 at batch 256 where bf16 is native (n/a elsewhere)."""
    name, where = "bf16 vs float32 (native bf16 only)", f"{model}, batch 256"
    if not _native_bf16(device):
        return Target(name, where, None, "≥ 1.50×", None, "no AVX512-BF16 or AMX on this CPU")
    b = _speedup(rows, model, "float32", "bf16", 256)
    return at_least(name, where, b, 1.5, _convs_too(rows, model, "bf16") if b else "bf16 variant not available")


def _convs_too(rows: list[dict[str, Any]], model: str, mode: str) -> str:
    """For a CNN: how the variant with its convs quantized too (``<mode>+conv``) did, at batch 256."""
    c = _speedup(rows, model, "float32", f"{mode}+conv", 256)
    return f"with the convs in {mode} too: {c:.2f}×" if c else ""


def inference_targets(rows: list[dict[str, Any]], device: Any) -> list[Target]:
    """The issues' inference targets, per model where the target is per model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = {r["batch"] for r in rows}
    out: list[Target] = []
    if 256 in batches and "simplenn" in models:
        out.append(_fused_simplenn(rows))
    if 256 in batches:
        for m in models:
            d = _speedup(rows, m, "float32", "dynamic", 256)
            out.append(at_least("int8 dynamic vs float32", f"{m}, batch 256", d,
                                1.0, _convs_too(rows, m, "dynamic") if d else "dynamic variant not available"))
        out += [_vs_ao(rows, m, device) for m in models]
        out += [_bf16(rows, m, device) for m in models]
    if 1 in batches:
        out += [_slowest_at_batch_1(rows, m) for m in models]
    return out


# --------------------------------------------------------------------------------------------
# passes


def _range(summary: dict[str, Any] | None) -> str:
    return f"rounds {summary['min']:.2f}–{summary['max']:.2f}×" if summary else ""


def passes_targets(rows: list[dict[str, Any]], ratios: list[dict[str, Any]], growth: list[dict[str, Any]],
                   changes: list[str], depths: tuple[int, int]) -> list[Target]:
    """Linear growth with depth (between ``depths``: ≤ 1.125× the depth ratio, 4.5× for 4×), fxlab within
    1.5× of hand-written torch.fx at the deepest depth and within 2× at every depth. Ratios are medians of
    per-round CPU-time ratios (see ``passes.py``); notes give their range and the wall-clock ratio."""
    out = []
    for g in growth:
        if g["implementation"] != "fxlab.apply":
            continue
        floor = next((x["time_ratio"] for x in growth
                      if x["change"] == g["change"] and x["implementation"] == "trace only"), None)
        limit = 1.125 * g["depth_ratio"]
        wall = f"wall {g['wall_ratio']:.2f}×" if g.get("wall_ratio") else ""
        note = "; ".join(t for t in (_range(g.get("cpu")), wall, f"trace only grows {floor:.2f}×" if floor else "") if t)
        out.append(Target("pass application grows linearly", f"{g['change']}, {depths[0]}→{depths[1]} layers",
                          g["time_ratio"], f"≤ {limit:.2f}× time for {g['depth_ratio']:.0f}× layers",
                          g["time_ratio"] <= limit, note))
    for change in changes:
        missing = not any(r["change"] == change and r["implementation"] == "fxlab.apply" and r.get("status") == "ok"
                          for r in rows)
        deepest = next((r for r in ratios if r["change"] == change and r["depth"] == depths[1]
                        and r["fxlab_over_hand"]), None)
        name = "fxlab within 1.5× of hand-written torch.fx"
        if deepest is None:
            out.append(Target(name, f"{change}, {depths[1]} layers", None, "≤ 1.50×", None,
                              "fxlab pass not available" if missing else "not measured"))
        else:
            wall = deepest.get("fxlab_over_hand_wall")
            note = "; ".join(t for t in (_range((deepest.get("paired_hand") or {}).get("cpu")),
                                         f"wall {wall:.2f}×" if wall else "") if t)
            out.append(Target(name, f"{change}, {depths[1]} layers", deepest["fxlab_over_hand"], "≤ 1.50×",
                              deepest["fxlab_over_hand"] <= 1.5, note))
        worst = max((r for r in ratios if r["change"] == change and r["fxlab_over_hand"]),
                    key=lambda r: r["fxlab_over_hand"], default=None)
        name = "fxlab within 2× of hand-written torch.fx"
        if worst is None:
            out.append(Target(name, change, None, "≤ 2.00×", None,
                              "fxlab pass not available" if missing else "not measured"))
            continue
        out.append(Target(name, f"{change} (worst depth: {worst['depth']})", worst["fxlab_over_hand"], "≤ 2.00×",
                          worst["fxlab_over_hand"] <= 2.0))
    return out
