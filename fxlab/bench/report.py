"""The report: tables (terminal or Markdown) of a run's result, and the JSON it is saved as."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabulate import tabulate

from .._util import first_line, write_atomic
from ..errors import UsageError
from .explain import explain_tables
from .kernels import kernels_tables
from .lowbit import lowbit_tables
from .targets import TARGET_HEADERS, Target
from .torchao import torchao_tables


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (non-finite floats as null)."""
    write_atomic(path, json.dumps(obj, indent=1, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)


#: The fields every saved run has (the suites' sections are there when they ran).
RUN_FIELDS = ("environment", "config", "targets", "seconds")


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A run saved with ``--json`` that the report can render; ``UsageError`` when it cannot be read or is
    not such a run."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    problem = _not_a_run(result)
    if problem:
        raise UsageError(f"{path} is not a saved benchmark run ({problem}; python -m fxlab.bench --json OUT "
                         "writes one)")
    return result


def _not_a_run(result: Any) -> str:
    """Why ``result`` is no run the report can render ('' when it is one): each section is rendered
    once, in both formats, so a missing or malformed field shows here and not as a traceback later."""
    if not isinstance(result, dict):
        return f"it holds a JSON {'array' if isinstance(result, list) else type(result).__name__}, not an object"
    missing = [k for k in RUN_FIELDS if k not in result]
    if missing:
        return f"no {', '.join(missing)}"
    for fmt in ("simple", "github"):
        for name, render in _sections(result, fmt):
            try:
                render()
            except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
                return f"its {name} cannot be read: {_render_error(exc)}"
    return ""


def _render_error(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no field {exc.args[0]!r}" if exc.args else "a field is missing"
    return f"{type(exc).__name__}: {first_line(exc)}"


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


def passes_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    """Apply-time per change, depth and implementation, and growth with depth."""
    impls = ["fxlab.apply", "hand-written torch.fx", "torch.ao fuse_fx", "trace only"]
    table = []
    for ratio in result["ratios"]:
        cells = [ratio["change"], ratio["depth"]]
        for impl in impls:
            r = next((r for r in result["rows"] if r["change"] == ratio["change"] and r["depth"] == ratio["depth"]
                      and r["implementation"] == impl), None)
            if r is None:
                cells.append("")
            elif r.get("status") == "ok" and "cpu_s" in r:
                cells.append(f"{_ms(r['cpu_s'])} ±{r['cpu_spread'] * 100:.0f}% ({_ms(r['time_s'])})")
            elif r.get("status") == "ok":  # a run saved before CPU times were recorded
                cells.append(f"{_ms(r['time_s'])} ±{r['spread'] * 100:.0f}%")
            else:
                cells.append(r["status"][:40])
        cpu = (ratio.get("paired_hand") or {}).get("cpu")
        cells.append("—" if ratio["fxlab_over_hand"] is None else f"{ratio['fxlab_over_hand']:.2f}×"
                     + (f" ({cpu['min']:.2f}–{cpu['max']:.2f})" if cpu else ""))
        wall = ratio.get("fxlab_over_hand_wall")
        cells.append("—" if wall is None else f"{wall:.2f}×")
        table.append(cells)
    headers = ["change", "layers", *[f"{i} ms" for i in impls], "fxlab / hand", "wall"]
    what = ("CPU ms per call, median ± IQR/median (wall ms); fxlab / hand: median of per-round CPU-time ratios "
            "(range)" if any("cpu_s" in r for r in result["rows"]) else "ms per call, median ± IQR/median")
    text = f"pass application ({what}):\n\n" + tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True)
    if result["growth"]:
        g = [[x["change"], x["implementation"], f"{x['depths'][0]}→{x['depths'][1]}",
              f"{x['time_ratio']:.2f}×" + (f" ({x['cpu']['min']:.2f}–{x['cpu']['max']:.2f})" if "cpu" in x else ""),
              f"{x['wall_ratio']:.2f}×" if "wall_ratio" in x else "—"]
             for x in result["growth"]]
        text += "\n\ngrowth with depth:\n\n" + tabulate(
            g, headers=["change", "implementation", "layers", "time ratio (range)", "wall"], tablefmt=fmt,
            disable_numparse=True)
    if result.get("load_average"):
        text += "\n\nload average (1, 5, 15 min) at start and end: " + " → ".join(
            "/".join(f"{x:.1f}" for x in load) for load in result["load_average"])
    return text


def training_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    """Epoch and evaluation times, accuracies, and the recipe, memory and data-loading notes."""
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
        rec = r.get("recipe", {})
        epochs = rec.get("epochs", "?")
        for run in r.get("runs") or [r]:  # results saved before the per-seed runs hold one run
            seed = run.get("seed", rec.get("seed", "?"))
            more = (f" ({run['seeds_epochs']:.2f} epochs of the seeds' loop timed next to it)"
                    if "seeds_epochs" in run else "")
            notes.append(f"fxlab's default recipe ({epochs} epochs, batch {rec.get('batch_size', '?')}), seed {seed}: "
                         f"{run['accuracy']:.2f}% test accuracy in {run['seconds']:.1f} s{more}")
    if result.get("memory", {}).get("peak_rss_bytes"):
        notes.append(f"peak memory training mymodule on CPU: {result['memory']['peak_rss_bytes'] / 2**20:.0f} MB "
                     f"({result['memory'].get('what', '')})")
    notes.append("data loading, timed apart: " + ", ".join(f"{k} {v:.2f} s" for k, v in result["data_load_s"].items()))
    return text + "\n\n" + "\n".join(("- " if fmt != "simple" else "") + n for n in notes)


def targets_table(targets: list[dict[str, Any]], fmt: str = "simple") -> str:
    """Every target with its verdict."""
    rows = [Target(**t).row() for t in targets]
    return "targets:\n\n" + tabulate(rows, headers=TARGET_HEADERS, tablefmt=fmt, disable_numparse=True)


def machine(result: dict[str, Any]) -> str:
    """One line naming what the run measured on (and a warning when other work shared the CPU)."""
    env = result["environment"]
    gpu = f" ({env['gpu']})" if env.get("gpu") else ""
    flags = env.get("cpu_flags")
    isa = (f" ({env['cpu_isa']}" + (f"; {' '.join(flags)}" if flags else "") + ")") if env.get("cpu_isa") else ""
    line = (f"fxlab {env['fxlab']} · torch {env['torch']} · {env['device']}{gpu} · {env['cpu']}{isa}, "
            f"{env['cpu_count']} cores, {env['torch_threads']} torch threads · Python {env['python']} · "
            f"{env['date']}" + (" · QUICK (indicative only)" if result["config"]["quick"] else ""))
    loads = [x[0] for x in (env.get("load_average_at_start"), env.get("load_average_at_end")) if x]
    if loads and env.get("cpu_count") and max(loads) > env["cpu_count"]:
        line += (f"\nnote: the machine was busy with other work (1-minute load average up to {max(loads):.1f} on "
                 f"{env['cpu_count']} cores): absolute times are inflated and noisy; ratios measured side by side "
                 "hold better")
    return line


def _sections(result: dict[str, Any], fmt: str) -> list[tuple[str, Callable[[], str]]]:
    """The report's parts in order, each as (what it shows, a function rendering it)."""
    sections: list[tuple[str, Callable[[], str]]] = [("environment", lambda: machine(result))]
    for suite, tables in (("inference", inference_tables), ("passes", passes_tables), ("training", training_tables),
                          ("explain", explain_tables), ("kernels", kernels_tables), ("lowbit", lowbit_tables),
                          ("torchao", torchao_tables)):
        if suite in result:
            if fmt != "simple":
                sections.append((suite, lambda suite=suite: f"**{suite}** — {result[suite].get('method', '')}"))
            sections.append((suite, lambda suite=suite, tables=tables: tables(result[suite], fmt)))
    if result["targets"]:
        sections.append(("targets", lambda: targets_table(result["targets"], fmt)))
    sections.append(("total", lambda: f"total {result['seconds']:.0f} s · reproduce: `{result['command']}`"))
    return sections


def report(result: dict[str, Any], fmt: str = "simple") -> str:
    """The report: the machine, each suite's tables, the targets (``fmt="github"``: Markdown)."""
    return "\n\n".join(render() for _, render in _sections(result, fmt))
