"""The passes suite: time to apply a change to deep MLPs, fxlab.apply vs hand-written torch.fx.

Three changes (insert-relu after every Linear, after the middle one; fuse-linear-relu, where
torch.ao's ``fuse_fx`` joins as an anchor) at three depths; every implementation at every depth
takes turns in the same rounds, so that growth with depth is measured side by side too.

What made these figures move between runs, and how the suite holds them still
-------------------------------------------------------------------------------
Measured on the 2-core shared machine (load average 4–9 from other work), per call:
``time.perf_counter``, ``time.process_time``, ``gc.callbacks``, page faults:

- The machine's load. Under a load average of 7–9 a 4 000-layer call takes about 3× its CPU
  time in wall time, and the load changes within seconds. The old suite compared medians of
  calls made up to ten candidates apart (each a few seconds), so two sides of a ratio met
  different loads. Now every call also records its CPU time (``process_time``: these transforms
  are single-threaded Python, and waiting for a core is not their cost), the implementations of
  one depth run back to back, and the ratios are the median of *per-round* ratios (fxlab over
  hand-written from the same round; depth 4 000 over 1 000 from the same round), with their
  range. The verdicts use CPU time; the wall-clock ratios are reported next to them.
- The garbage collector. With it on, a 4 000-layer transform (either side) triggers 2 or 3
  full collections, 20–30 % of its CPU time, and whether a call gets 2 or 3 depends on what ran
  before it (``fxlab.apply`` now pauses it, see ``pipeline/execute.py``). The suite used to pause
  it for a whole round of calls, so garbage piled up through the round (about 50 MB and 20 000
  page faults per 4 000-layer call, 3–5 % system time) and the calls late in a round paid for
  fresh memory. Now each call starts from ``gc.collect()`` with the collector
  paused during the call and its result freed after the clock stops, the same for every side.
- CPU time itself still varies by ±15 % between identical calls on a loaded machine (caches and
  memory bandwidth are shared); adjacent pairs cancel most of it, the reported range shows the rest.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .harness import Timing, _order, failed, round_ratios, timing_fields
from .targets import passes_targets

if TYPE_CHECKING:
    from . import Config

log = logging.getLogger("fxlab.bench")

IMPLEMENTATIONS = ("fxlab.apply", "hand-written torch.fx", "torch.ao fuse_fx", "trace only")
Transform = Callable[[nn.Module], Any]


def deep_mlp(depth: int, width: int = 8) -> nn.Module:
    """``depth`` blocks of Linear(width, width) → nn.ReLU, in a ModuleList (paths ``layers.0``, ...)."""

    class DeepMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList()
            for _ in range(depth):
                self.layers.append(nn.Linear(width, width))
                self.layers.append(nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    return DeepMLP().eval()


def hand_trace(model: nn.Module) -> fx.GraphModule:
    """The floor every transform pays: copy the model, trace it, recompile."""
    gm = fx.symbolic_trace(copy.deepcopy(model))
    gm.graph.lint()
    gm.recompile()
    return gm


def hand_insert_relu(model: nn.Module, targets: set[str] | None) -> fx.GraphModule:
    """Hand-written torch.fx: ``torch.relu`` after every Linear (``targets=None``) or after the named ones."""
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


def hand_fuse_linear_relu(model: nn.Module) -> fx.GraphModule:
    """Hand-written torch.fx: each Linear whose only user is a ReLU becomes one fused module."""
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


def ao_fuse_fx(model: nn.Module) -> Any:
    """torch.ao's fuse_fx on a copy (it fuses Linear+ReLU into torch.ao.nn.intrinsic.LinearReLU)."""
    from torch.ao.quantization.quantize_fx import fuse_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fuse_fx(copy.deepcopy(model))


def _fxlab(*passes: tuple[str, dict[str, Any]]) -> Transform:
    import fxlab

    return lambda m: fxlab.apply(m, [fxlab.get_pass(name)(**options) for name, options in passes])


def changes() -> dict[str, Callable[[int], dict[str, Transform]]]:
    """Each change: for a depth, its implementations by label."""

    def every(depth: int) -> dict[str, Transform]:
        return {"fxlab.apply": _fxlab(("insert-relu", {"after": nn.Linear})),
                "hand-written torch.fx": lambda m: hand_insert_relu(m, None), "trace only": hand_trace}

    def middle(depth: int) -> dict[str, Transform]:
        target = f"layers.{2 * (depth // 2)}"
        return {"fxlab.apply": _fxlab(("insert-relu", {"after": target})),
                "hand-written torch.fx": lambda m: hand_insert_relu(m, {target}), "trace only": hand_trace}

    def fuse(depth: int) -> dict[str, Transform]:
        return {"fxlab.apply": _fxlab(("fuse-linear-relu", {})), "hand-written torch.fx": hand_fuse_linear_relu,
                "torch.ao fuse_fx": ao_fuse_fx, "trace only": hand_trace}

    return {"insert-relu after every Linear": every, "insert-relu after the middle Linear": middle,
            "fuse-linear-relu": fuse}


def _check(model: nn.Module, candidates: dict[str, Transform], width: int) -> tuple[dict[str, Any], dict[str, str], bool]:
    """Run each implementation once (the warm-up): outputs on a random input, errors, input left untouched."""
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, width)
    outputs: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for label, fn in candidates.items():
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                outputs[label] = fn(model)(x)
        except Exception as exc:
            errors[label] = failed(exc)
    after = model.state_dict()
    untouched = before.keys() == after.keys() and all(torch.equal(v, after[k]) for k, v in before.items())
    return outputs, errors, untouched


def _timed_call(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one call of ``fn``, every side alike: from a collected heap, the
    collector paused during the call, the result freed after the clock stops."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        del out
    finally:
        if was_enabled:
            gc.enable()
    return wall, cpu


def _spread(values: list[float]) -> dict[str, Any]:
    """Median, quartiles and range of per-round ratios."""
    t = Timing.of(values, 1, None)
    return {"median": t.median, "q1": t.q1, "q3": t.q3, "min": t.min, "max": t.max, "rounds": t.rounds}


def _measure_change(change: str, make: Callable[[int], dict[str, Transform]], cfg: Config) -> list[dict[str, Any]]:
    """One change at every depth, every implementation timed side by side; one row per (depth, implementation).

    Each round runs the depths in turn (ascending, then descending the next round) and, at each
    depth, every implementation back to back (order rotating by round, see ``harness._order``).
    A row keeps the per-round samples (``samples_s``, ``samples_cpu_s``) for paired ratios.
    """
    timed: dict[int, dict[str, Callable[[], Any]]] = {}
    cases: list[dict[str, Any]] = []
    for depth in cfg.depths:
        torch.manual_seed(0)
        model = deep_mlp(depth, cfg.width)
        candidates = make(depth)
        outputs, errors, untouched = _check(model, candidates, cfg.width)  # also the warm-up call
        reference = outputs.get("hand-written torch.fx")
        for label, fn in candidates.items():
            case = {"change": change, "depth": depth, "implementation": label, "input_untouched": untouched,
                    "error": errors.get(label)}
            if reference is not None and label in outputs and label != "trace only":
                case["max_abs_diff_vs_hand"] = float((outputs[label] - reference).abs().max())
            cases.append(case)
            if label not in errors:
                timed.setdefault(depth, {})[label] = lambda fn=fn, model=model: fn(model)
    log.info("bench passes: %s, depths %s", change, ", ".join(map(str, cfg.depths)))
    walls: dict[tuple[int, str], list[float]] = {}
    cpus: dict[tuple[int, str], list[float]] = {}
    failures: dict[tuple[int, str], str] = {}
    for r in range(cfg.pass_rounds):
        for depth in (cfg.depths if r % 2 == 0 else cfg.depths[::-1]):
            live = timed.get(depth, {})
            for label in _order(list(live), r):
                key = (depth, label)
                if key in failures:
                    continue
                try:
                    wall, cpu = _timed_call(live[label])
                except Exception as exc:  # a benchmark reports failures, it does not stop on them
                    failures[key] = failed(exc)
                    continue
                walls.setdefault(key, []).append(wall)
                cpus.setdefault(key, []).append(cpu)
    rows = []
    for case in cases:
        error, diff = case.pop("error"), case.pop("max_abs_diff_vs_hand", None)
        key = (case["depth"], case["implementation"])
        timing: Timing | str | None = error or failures.get(key)
        if timing is None and walls.get(key):
            timing = Timing.of(walls[key], 1, None)
        fields = timing_fields(timing)
        if fields["status"] == "ok":
            cpu = Timing.of(cpus[key], 1, None)
            fields.update({"cpu": cpu.to_json(), "cpu_s": cpu.median, "cpu_spread": cpu.spread,
                           "samples_s": walls[key], "samples_cpu_s": cpus[key]})
        rows.append({**case, **fields, **({"max_abs_diff_vs_hand": diff}
                                          if diff is not None and fields["status"] == "ok" else {})})
    return rows


def _samples(rows: list[dict[str, Any]], change: str, depth: int, impl: str, clock: str) -> list[float] | None:
    for r in rows:
        if r["change"] == change and r["depth"] == depth and r["implementation"] == impl and r.get("status") == "ok":
            return r["samples_cpu_s" if clock == "cpu" else "samples_s"]
    return None


def _paired(top: list[float] | None, bottom: list[float] | None) -> dict[str, Any] | None:
    """Per-round ratios top[r] / bottom[r] (both measured in round r), summarised."""
    ratios = round_ratios(top, bottom)
    return _spread(ratios) if ratios else None


def _ratios(rows: list[dict[str, Any]], names: list[str], depths: tuple[int, ...]) -> list[dict[str, Any]]:
    """fxlab's time over each other implementation's, per change and depth: the median of per-round
    CPU-time ratios (``*_wall``: of wall-clock ratios); ``paired_hand`` summarises both against hand-written."""
    out = []
    for change in names:
        for depth in depths:
            entry: dict[str, Any] = {"change": change, "depth": depth}
            fxlab_times = {c: _samples(rows, change, depth, "fxlab.apply", c) for c in ("cpu", "wall")}
            for key, impl in (("hand", "hand-written torch.fx"), ("fuse_fx", "torch.ao fuse_fx"),
                              ("trace_only", "trace only")):
                paired = {c: _paired(fxlab_times[c], _samples(rows, change, depth, impl, c)) for c in ("cpu", "wall")}
                entry[f"fxlab_over_{key}"] = paired["cpu"]["median"] if paired["cpu"] else None
                entry[f"fxlab_over_{key}_wall"] = paired["wall"]["median"] if paired["wall"] else None
                if key == "hand":
                    entry["paired_hand"] = paired
            out.append(entry)
    return out


def _growth(rows: list[dict[str, Any]], names: list[str], small: int, big: int) -> list[dict[str, Any]]:
    """Time at depth ``big`` over time at depth ``small``, per change and implementation: the median of
    per-round CPU-time ratios (``time_ratio``), with their range, and of wall-clock ratios (``wall_ratio``)."""
    out = []
    for change in names:
        for impl in IMPLEMENTATIONS:
            cpu = _paired(_samples(rows, change, big, impl, "cpu"), _samples(rows, change, small, impl, "cpu"))
            wall = _paired(_samples(rows, change, big, impl, "wall"), _samples(rows, change, small, impl, "wall"))
            if cpu and wall:
                out.append({"change": change, "implementation": impl, "depths": [small, big],
                            "depth_ratio": big / small, "time_ratio": cpu["median"], "cpu": cpu,
                            "wall_ratio": wall["median"], "wall": wall})
    return out


def _method(width: int) -> str:
    return (
        f"Model: depth × (Linear({width}, {width}) → nn.ReLU) in a ModuleList. Every timed call starts "
        "from the same nn.Module and returns a new GraphModule without mutating it: fxlab.apply(model, passes) "
        "(deep copy, trace, pass, lint + recompile, records) vs a hand-written transform doing deepcopy + "
        "torch.fx.symbolic_trace + the same graph change + lint + recompile; 'trace only' is deepcopy + trace + "
        "lint + recompile with no change (the floor); torch.ao fuse_fx runs on a deep copy. One warm-up call "
        "each (the one whose output is checked), then rounds: each depth in turn, its implementations back to "
        "back in rotating order, every call after gc.collect() with the collector paused, wall and CPU "
        "(process_time) time recorded. Times: median over rounds. Ratios: median of the per-round ratios "
        "(same round), CPU time for the verdicts, wall clock alongside. max_abs_diff_vs_hand compares outputs "
        "with the hand-written result on a random input."
    )


def passes_suite(cfg: Config) -> dict[str, Any]:
    """Apply-time of three changes to deep MLPs: fxlab.apply vs hand-written torch.fx (vs fuse_fx)."""
    all_changes = changes()
    names = list(all_changes)
    load = [os.getloadavg()] if hasattr(os, "getloadavg") else []
    rows: list[dict[str, Any]] = []
    for change, make in all_changes.items():
        rows += _measure_change(change, make, cfg)
    load += [os.getloadavg()] if load else []
    ratios = _ratios(rows, names, cfg.depths)
    small, big = cfg.depths[-2], cfg.depths[-1]
    growth = _growth(rows, names, small, big)
    targets = passes_targets(rows, ratios, growth, names, (small, big))
    return {"depths": list(cfg.depths), "width": cfg.width, "method": _method(cfg.width), "rows": rows,
            "ratios": ratios, "growth": growth, "load_average": load, "targets": [t.to_json() for t in targets]}
