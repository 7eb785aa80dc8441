"""The passes suite: time to apply a change to deep MLPs, fxlab.apply vs hand-written torch.fx.

Three changes (insert-relu after every Linear, after the middle one; fuse-linear-relu, where
torch.ao's ``fuse_fx`` joins as an anchor) at three depths; every implementation at every depth
takes turns in the same rounds, so that growth with depth is measured side by side too.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .harness import compare, failed, timing_fields
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


def _measure_change(change: str, make: Callable[[int], dict[str, Transform]], cfg: Config) -> list[dict[str, Any]]:
    """One change at every depth, every implementation timed side by side; one row per (depth, implementation)."""
    timed: dict[str, Callable[[], Any]] = {}
    cases: list[dict[str, Any]] = []
    for depth in cfg.depths:
        torch.manual_seed(0)
        model = deep_mlp(depth, cfg.width)
        candidates = make(depth)
        outputs, errors, untouched = _check(model, candidates, cfg.width)
        reference = outputs.get("hand-written torch.fx")
        for label, fn in candidates.items():
            case = {"change": change, "depth": depth, "implementation": label, "input_untouched": untouched,
                    "error": errors.get(label)}
            if reference is not None and label in outputs and label != "trace only":
                case["max_abs_diff_vs_hand"] = float((outputs[label] - reference).abs().max())
            cases.append(case)
            if label not in errors:
                timed[f"{label} @ {depth}"] = lambda fn=fn, model=model: fn(model)
    log.info("bench passes: %s, depths %s", change, ", ".join(map(str, cfg.depths)))
    timings = compare(timed, rounds=cfg.pass_rounds, round_time=0.0, warmup=0)  # the check call warmed up
    rows = []
    for case in cases:
        error, diff = case.pop("error"), case.pop("max_abs_diff_vs_hand", None)
        timing = timings.get(f"{case['implementation']} @ {case['depth']}", error)
        fields = timing_fields(timing)
        rows.append({**case, **fields, **({"max_abs_diff_vs_hand": diff}
                                          if diff is not None and fields["status"] == "ok" else {})})
    return rows


def _ratios(rows: list[dict[str, Any]], names: list[str], depths: tuple[int, ...]) -> list[dict[str, Any]]:
    """fxlab's time over each other implementation's, per change and depth."""
    out = []
    for change in names:
        for depth in depths:
            get = {r["implementation"]: r.get("time_s") for r in rows if r["change"] == change and r["depth"] == depth}
            fx_t = get.get("fxlab.apply")

            def over(impl: str) -> float | None:
                return fx_t / get[impl] if fx_t and get.get(impl) else None

            out.append({"change": change, "depth": depth, "fxlab_over_hand": over("hand-written torch.fx"),
                        "fxlab_over_fuse_fx": over("torch.ao fuse_fx"), "fxlab_over_trace_only": over("trace only")})
    return out


def _growth(rows: list[dict[str, Any]], names: list[str], small: int, big: int) -> list[dict[str, Any]]:
    """Time at depth ``big`` over time at depth ``small``, per change and implementation."""
    out = []
    for change in names:
        for impl in IMPLEMENTATIONS:
            t = {r["depth"]: r.get("time_s") for r in rows if r["change"] == change and r["implementation"] == impl}
            if t.get(small) and t.get(big):
                out.append({"change": change, "implementation": impl, "depths": [small, big],
                            "depth_ratio": big / small, "time_ratio": t[big] / t[small]})
    return out


def _method(width: int) -> str:
    return (
        f"Model: depth × (Linear({width}, {width}) → nn.ReLU) in a ModuleList. Every timed call starts "
        "from the same nn.Module and returns a new GraphModule without mutating it: fxlab.apply(model, passes) "
        "(deep copy, trace, pass, lint + recompile, records) vs a hand-written transform doing deepcopy + "
        "torch.fx.symbolic_trace + the same graph change + lint + recompile; 'trace only' is deepcopy + trace + "
        "lint + recompile with no change (the floor); torch.ao fuse_fx runs on a deep copy. Median over "
        "interleaved rounds of one call each, after one warm-up call (the one whose output is checked). "
        "max_abs_diff_vs_hand compares outputs with the hand-written result on a random input."
    )


def passes_suite(cfg: Config) -> dict[str, Any]:
    """Apply-time of three changes to deep MLPs: fxlab.apply vs hand-written torch.fx (vs fuse_fx)."""
    all_changes = changes()
    names = list(all_changes)
    rows: list[dict[str, Any]] = []
    for change, make in all_changes.items():
        rows += _measure_change(change, make, cfg)
    ratios = _ratios(rows, names, cfg.depths)
    small, big = cfg.depths[-2], cfg.depths[-1]
    growth = _growth(rows, names, small, big)
    targets = passes_targets(rows, ratios, growth, names, (small, big))
    return {"depths": list(cfg.depths), "width": cfg.width, "method": _method(cfg.width), "rows": rows,
            "ratios": ratios, "growth": growth, "targets": [t.to_json() for t in targets]}
