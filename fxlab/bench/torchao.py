"""The torchao suite: each fxlab quantization mode next to torchao's nearest config.

For every seed model, trained (``fxlab.train.pretrained``, cached) and each pair in :data:`PAIRS`:

- the fxlab side: fxlab's standard pipeline, fusion then ``quantize-linear{mode=...}`` (what the
  inference suite measures); a mode this fxlab lacks is reported as ``not in this fxlab``;
- the torchao side: ``torchao.quantization.quantize_(copy of the model, Config())`` on the model's
  Linears; a config that raises while quantizing or on its first call is reported as
  ``not supported on cpu (<its error>)``;
- test accuracy on the 10 000 real MNIST test images (as ``fxlab.train.evaluate`` counts it), and the paired
  comparison on those images: how many only fxlab's model classifies right, how many only torchao's,
  and McNemar's exact test of that split (:func:`mcnemar_p`); state-dict bytes
  (``memory.state_dict_bytes``), latency at batch 1 and 256: the float32 model and both sides of
  every pair timed side by side in the same interleaved rounds (``harness.compare``) under
  ``torch.inference_mode``, on CPU, and on CUDA as well when the run's device is CUDA.

torchao is optional (``pip install 'fxlab[bench]'``): without it the suite reports that it was
not run and why; the other suites are unaffected. Nothing here imports torchao at module level.

>>> [(p.label, p.mode) for p in PAIRS][:2]
[('dynamic', 'dynamic'), ('weight-only', 'weight-only')]
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .harness import Timing, compare, describe, ratio
from .memory import state_dict_bytes
from .targets import Target, at_least

if TYPE_CHECKING:
    from . import Config

log = logging.getLogger("fxlab.bench")

BATCHES = (1, 256)
#: Group size of torchao's grouped int4 configs when fxlab's int4 mode names none.
DEFAULT_GROUP_SIZE = 32
QAT_EPOCHS = 1
#: Where fxlab trails torchao on the test set, the accuracy target is still met while McNemar's exact test
#: of the images only one side gets right gives at least this p (the difference is within chance).
SIGNIFICANCE = 0.05

METHOD = (
    "Seed models trained with fxlab's default recipe (cached checkpoints; --quick: one model, one epoch). fxlab: "
    "fusion then quantize-linear{mode}; torchao: quantize_(model, Config()) on the Linears. Accuracy: the 10 000 "
    "MNIST test images (counted as fxlab.train.evaluate does); paired: test images only fxlab's model gets right / only torchao's, and "
    "the two-sided p of McNemar's exact test (a small p: the two differ beyond chance). state dict: bytes of torch.save(state_dict). Latency: ms per forward "
    "of the whole batch under torch.inference_mode, median over rounds in which float32, fxlab and torchao take "
    "turns; fxlab speed-up = median over rounds of torchao time / fxlab time in the same round (>1: fxlab faster)."
)


@dataclass(frozen=True)
class Attempt:
    """One torchao config to try: its text (``{g}``: the group size), how to build it for a group size
    (``make(torchao.quantization, g)``), the dtype the model must be in (None: float32)."""

    text: str
    make: Callable[[ModuleType, int], Any]
    dtype: torch.dtype | None = None


@dataclass(frozen=True)
class Pair:
    """An fxlab mode and torchao's nearest config(s), tried in order until one runs.

    ``grouped``: the configs take a group size (per Linear, see :func:`torchao_group_sizes`);
    ``qat``: both sides fine-tune (fxlab ``qat_epochs``,
    torchao ``QATConfig`` prepare / fit / convert); ``latency_target``: the int8 / int4 speed target
    applies.
    """

    label: str
    mode: str
    configs: tuple[Attempt, ...]
    grouped: bool = False
    qat: bool = False
    latency_target: bool = False


class MissingConfig(Exception):
    """This torchao has no config of that name (it was renamed or removed)."""


def _config(q: ModuleType, name: str, **kwargs: Any) -> Any:
    """``q.<name>(**kwargs)``, with ``set_inductor_config=False`` where the config has it (torchao would
    otherwise change torch._inductor's global settings for the rest of the process)."""
    cls = getattr(q, name, None)
    if cls is None:
        raise MissingConfig(f"this torchao has no {name}")
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if "set_inductor_config" in fields:
        kwargs.setdefault("set_inductor_config", False)
    return cls(**kwargs)


def _int8_intx(q: ModuleType, group_size: int) -> Any:
    from torchao.quantization.granularity import PerGroup

    return _config(q, "Int8DynamicActivationIntxWeightConfig", weight_dtype=torch.int4,
                   weight_granularity=PerGroup(group_size))


def _intx(dtype: torch.dtype) -> Callable[[ModuleType, int], Any]:
    """torchao's ``IntxWeightOnlyConfig`` (group-wise, symmetric, any device) at ``dtype``."""
    def make(q: ModuleType, group_size: int) -> Any:
        from torchao.quantization.granularity import PerGroup

        return _config(q, "IntxWeightOnlyConfig", weight_dtype=dtype, granularity=PerGroup(group_size))

    return make


INT4_ATTEMPTS = (
    Attempt("Int4WeightOnlyConfig(group_size={g})", lambda q, g: _config(q, "Int4WeightOnlyConfig", group_size=g)),
    # torchao's CUDA int4 layout (tinygemm) takes bf16 weights
    Attempt("Int4WeightOnlyConfig(group_size={g}, int4_packing_format='tile_packed_to_4d'), bf16 model",
            lambda q, g: _config(q, "Int4WeightOnlyConfig", group_size=g, int4_packing_format="tile_packed_to_4d"),
            torch.bfloat16),
    # torchao ≥ 0.15 has no CPU layout for Int4WeightOnlyConfig; its int4 weight-only on CPU is this one
    Attempt("IntxWeightOnlyConfig(weight_dtype=torch.int4, group_size={g})", _intx(torch.int4)),
)
#: ``Int8DynamicActivationInt4WeightConfig`` where torchao still has it, else its successor (torchao 0.18 has only
#: this one) ``Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4)``.
INT8_INT4_ATTEMPTS = (
    Attempt("Int8DynamicActivationInt4WeightConfig(group_size={g})",
            lambda q, g: _config(q, "Int8DynamicActivationInt4WeightConfig", group_size=g)),
    Attempt("Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, group_size={g})", _int8_intx),
)


#: fxlab mode ↔ torchao's nearest config. A mode missing from this fxlab's ``MODES`` is reported as
#: "not in this fxlab"; the pair is measured as soon as the mode exists.
PAIRS: tuple[Pair, ...] = (
    Pair("dynamic", "dynamic", (Attempt("Int8DynamicActivationInt8WeightConfig()",
                                        lambda q, g: _config(q, "Int8DynamicActivationInt8WeightConfig")),),
         latency_target=True),
    Pair("weight-only", "weight-only", (Attempt("Int8WeightOnlyConfig()",
                                                lambda q, g: _config(q, "Int8WeightOnlyConfig")),),
         latency_target=True),
    Pair("int4", "int4", INT4_ATTEMPTS, grouped=True, latency_target=True),
    Pair("int8-int4", "int8-int4", INT8_INT4_ATTEMPTS, grouped=True, latency_target=True),
    Pair("fp8", "fp8", (Attempt("Float8WeightOnlyConfig()", lambda q, g: _config(q, "Float8WeightOnlyConfig")),)),
    Pair("int2", "int2", (Attempt("IntxWeightOnlyConfig(weight_dtype=torch.int2, group_size={g})", _intx(torch.int2)),),
         grouped=True),
    Pair("int8-int4 + QAT", "int8-int4", INT8_INT4_ATTEMPTS, grouped=True, qat=True),
)


# --------------------------------------------------------------------------------------------
# torchao


@contextmanager
def _quiet() -> Iterator[None]:
    """Warnings off, and torch's pytree notice (logged while torchao registers its types) silenced."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pytree.setLevel(level)


def import_torchao(package: str = "torchao") -> tuple[ModuleType | None, str]:
    """``(torchao.quantization, version)``, or ``(None, why not)`` when torchao is missing or broken."""
    try:
        with _quiet():
            ao = importlib.import_module(package)
            quantization = importlib.import_module(f"{package}.quantization")
    except ImportError as exc:
        return None, f"{package} is not installed ({describe(exc)}); pip install 'fxlab[bench]' to compare"
    except Exception as exc:  # an install that does not match this torch
        return None, f"{package} failed to import ({describe(exc)})"
    return quantization, str(getattr(ao, "__version__", "?"))


class _CastIO(nn.Module):
    """Runs ``inner`` (kept in ``dtype``) on float32 inputs: casts the input in, the output back to float32."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype)).float()


def _left_float(model: nn.Module) -> int:
    """Linears whose weight torchao left a plain tensor (it skips shapes a config cannot take, silently)."""
    return sum(type(m.weight) in (torch.Tensor, nn.Parameter) for m in model.modules() if isinstance(m, nn.Linear))


def _quantize(q: ModuleType, model: nn.Module, configs: list[tuple[Any, set[str] | None]], wrap: Any = None) -> None:
    """``quantize_`` each config on its Linears (``None``: every Linear); ``wrap``: QAT's ``QATConfig`` step."""
    for config, names in configs:
        if wrap is not None:
            config = wrap(config)
        if names is None:
            q.quantize_(model, config)
        else:
            q.quantize_(model, config, filter_fn=lambda m, fqn, names=names: isinstance(m, nn.Linear) and fqn in names)


def _torchao_qat(q: ModuleType, model: nn.Module, configs: list[tuple[Any, set[str] | None]], data: Any,
                 device: torch.device, epochs: int) -> nn.Module:
    """torchao's QAT: ``QATConfig(config, step="prepare")``, ``epochs`` of fxlab.train.fit (a tenth of the default
    recipe's peak learning rate, cosine schedule), then ``step="convert"``."""
    from torchao.quantization.qat import QATConfig

    from ..train import DEFAULT_RECIPE as recipe
    from ..train import fit

    _quantize(q, model, configs, lambda c: QATConfig(c, step="prepare"))
    fit(model, data, epochs=epochs, lr=recipe.lr / 10, batch_size=recipe.batch_size, schedule="cosine",
        seed=recipe.seed, device=device, progress=False, evaluate_each_epoch=False)
    _quantize(q, model, configs, lambda c: QATConfig(c, step="convert"))
    return model.eval()


def _torchao_side(q: ModuleType, pair: Pair, model: nn.Module, groups: dict[str, int] | None, data: Any,
                  device: torch.device, probe: torch.Tensor) -> dict[str, Any]:
    """Quantize a copy of ``model`` with the pair's first config that builds and runs on ``device``;
    ``groups``: each Linear's group size (grouped configs), one ``quantize_`` per distinct size."""
    by_size = {g: {n for n, s in groups.items() if s == g} for g in dict.fromkeys(groups.values())} if groups else {}
    sizes = "/".join(str(g) for g in (groups or {}).values())
    errors = []
    for attempt in pair.configs:
        text = attempt.text.format(g=sizes)
        text = f"QATConfig({text})" if pair.qat else text
        start = time.perf_counter()
        try:
            with _quiet():
                configs = ([(attempt.make(q, g), names) for g, names in by_size.items()] if by_size
                           else [(attempt.make(q, 0), None)])
                m = copy.deepcopy(model).to(device)
                if attempt.dtype is not None:
                    m = m.to(attempt.dtype)
                if pair.qat:
                    m = _torchao_qat(q, m, configs, data, device, QAT_EPOCHS)
                else:
                    _quantize(q, m, configs)
                left = _left_float(m)
                module = _CastIO(m, attempt.dtype).eval() if attempt.dtype is not None else m.eval()
                with torch.inference_mode():
                    module(probe)
        except Exception as exc:
            errors.append((attempt.text, describe(exc), isinstance(exc, MissingConfig)))
            continue
        return {"status": "ok", "config": text, "module": module, "left_float": left,
                "build_s": time.perf_counter() - start}
    # the first config this torchao has, and its error (a config that is not there says only that)
    text, error, _ = next((e for e in errors if not e[2]), errors[0])
    text = text.format(g=sizes)
    return {"status": f"not supported on {device.type} ({error})", "config": text,
            "tried": [f"{t}: {e}" for t, e, _ in errors]}


# --------------------------------------------------------------------------------------------
# fxlab


def _fxlab_side(pair: Pair, model: nn.Module, data: Any, device: torch.device,
                probe: torch.Tensor) -> tuple[dict[str, Any], int]:
    """fxlab's pipeline for the pair's mode (fusion, then quantize-linear), and the group size it uses."""
    import fxlab
    from ..passes.quantize.configs import MODES
    from .inference import fusion_passes

    if pair.mode not in MODES:
        return {"status": "not in this fxlab", "pipeline": f"quantize-linear{{mode={pair.mode}}}"}, DEFAULT_GROUP_SIZE
    cls = fxlab.get_pass("quantize-linear")
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    options: dict[str, Any] = {"mode": pair.mode}
    if pair.qat:
        if "qat_epochs" not in fields:
            return ({"status": "not in this fxlab (no qat_epochs option)",
                     "pipeline": f"quantize-linear{{mode={pair.mode} qat_epochs={QAT_EPOCHS}}}"}, DEFAULT_GROUP_SIZE)
        options["qat_epochs"] = QAT_EPOCHS
        if "data" in fields:
            options["data"] = data
    group_size = DEFAULT_GROUP_SIZE
    start = time.perf_counter()
    try:
        with _quiet():
            quantize = cls(**options)
            group_size = int(getattr(quantize, "group_size", None) or getattr(MODES[pair.mode], "group_size", None)
                             or DEFAULT_GROUP_SIZE)
            passes = [*fusion_passes(model), quantize]
            pipeline = fxlab.format_pipeline(passes)
            module = fxlab.apply(model, passes).eval()
            with torch.inference_mode():
                module(probe)
    except Exception as exc:
        return {"status": f"failed: {describe(exc)}", "pipeline": f"quantize-linear{{mode={pair.mode}}}"}, group_size
    return {"status": "ok", "pipeline": pipeline, "module": module, "build_s": time.perf_counter() - start}, group_size


def torchao_group_sizes(model: nn.Module, wanted: int) -> dict[str, int]:
    """Each Linear's group size for torchao: the largest divisor of its in-features ≤ ``wanted`` (torchao's
    grouped configs need whole groups: 784 inputs take 28, not 32; its int4 config skips such a Linear
    silently, its intx configs refuse it).

    >>> torchao_group_sizes(nn.Sequential(nn.Linear(784, 128), nn.Linear(128, 50), nn.Linear(50, 10)), 32)
    {'0': 28, '1': 32, '2': 25}
    """
    return {name: max(g for g in range(1, min(wanted, m.in_features) + 1) if m.in_features % g == 0)
            for name, m in model.named_modules() if isinstance(m, nn.Linear)}


# --------------------------------------------------------------------------------------------
# measuring


def _correct(module: Any, data: Any, device: torch.device) -> torch.Tensor:
    """Per MNIST test image, whether ``module`` gets it right (``fxlab.train.correct_images``)."""
    from ..train import correct_images

    with _quiet():
        return correct_images(module, data, device=device)


def _side_figures(side: dict[str, Any], data: Any, device: torch.device) -> None:
    """Accuracy, which test images it gets right, and state-dict bytes of a built side, in place
    (``status`` becomes the failure if any raises)."""
    if side.get("status") != "ok":
        return
    try:
        correct = side["correct"] = _correct(side["module"], data, device)
        side["accuracy"] = 100.0 * int(correct.sum()) / correct.numel()
        side["state_dict_bytes"] = state_dict_bytes(side["module"])
    except Exception as exc:
        side["status"] = f"failed: {describe(exc)}"


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test: of the ``only_a + only_b`` test items on which two
    classifiers disagree about being right, ``only_a`` went to the first; under "equally accurate"
    each such item is a fair coin, so ``p = min(1, 2 · P(X ≤ min))`` with ``X ~ Binomial(n, 1/2)``.

    >>> round(mcnemar_p(12, 18), 3), mcnemar_p(0, 10), mcnemar_p(5, 5)
    (0.362, 0.001953125, 1.0)
    """
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired(fx: dict[str, Any], ao: dict[str, Any]) -> dict[str, Any] | None:
    """The paired comparison of two measured sides on the same test images: images only fxlab's model
    gets right, only torchao's, and :func:`mcnemar_p` of that split (None unless both were measured)."""
    a, b = fx.get("correct"), ao.get("correct")
    if a is None or b is None:
        return None
    only_fx, only_ao = int((a & ~b).sum()), int((b & ~a).sum())
    return {"fxlab_only": only_fx, "torchao_only": only_ao, "p": mcnemar_p(only_fx, only_ao)}


def _latency(candidates: dict[str, Any], images: torch.Tensor, cfg: Config, device: torch.device,
             batches: tuple[int, ...]) -> dict[int, dict[str, Timing | str]]:
    out = {}
    for batch in batches:
        x = images[:batch].to(device)
        calls = {name: (lambda m=m, x=x: m(x)) for name, m in candidates.items()}
        with torch.inference_mode(), _quiet():
            out[batch] = compare(calls, rounds=cfg.rounds, round_time=cfg.round_time, device=device)
    return out


def _public(side: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in side.items() if k not in ("module", "correct")}


def _measure_model(q: ModuleType, name: str, data: Any, images: torch.Tensor, cfg: Config, device: torch.device,
                   quick: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One trained seed model on one device: the float32 baseline and every pair."""
    from ..train import pretrained, recipe_for

    recipe = recipe_for(name)
    if quick:
        recipe = dataclasses.replace(recipe, epochs=1)
    with _quiet():
        trained = pretrained(name, data=data, recipe=recipe, device="cpu", progress=False)
    model = copy.deepcopy(trained).to(device).eval()
    probe = images[:1].to(device)
    base: dict[str, Any] = {"model": name, "device": str(device), "recipe_epochs": recipe.epochs, "status": "ok",
                            "module": model}
    _side_figures(base, data, device)
    rows, candidates = [], {"float32": model}
    for pair in PAIRS:
        log.info("bench torchao: %s on %s: %s", name, device, pair.label)
        torch.manual_seed(0)
        fx_side, wanted = _fxlab_side(pair, model, data, device, probe)
        groups = torchao_group_sizes(model, wanted) if pair.grouped else None
        ao_side = _torchao_side(q, pair, model, groups, data, device, probe)
        for side in (fx_side, ao_side):
            _side_figures(side, data, device)
        row = {"model": name, "device": str(device), "pair": pair.label, "mode": pair.mode, "qat": pair.qat,
               "fxlab": fx_side, "torchao": ao_side, "paired": paired(fx_side, ao_side), "group_sizes": groups,
               "fxlab_group_size": wanted if pair.grouped else None}
        if fx_side.get("status") == "ok":
            candidates[f"fxlab {pair.label}"] = fx_side["module"]
        if ao_side.get("status") == "ok":
            candidates[f"torchao {pair.label}"] = ao_side["module"]
        rows.append(row)
    timings = _latency(candidates, images, cfg, device, BATCHES)
    base["latency"] = {str(b): _timing(t.get("float32")) for b, t in timings.items()}
    for row in rows:
        row["latency"] = {}
        for b, t in timings.items():
            fx_t, ao_t = t.get(f"fxlab {row['pair']}"), t.get(f"torchao {row['pair']}")
            row["latency"][str(b)] = {"fxlab": _timing(fx_t), "torchao": _timing(ao_t),
                                      "fxlab_speedup": ratio(ao_t, fx_t)}
        row["fxlab"], row["torchao"] = _public(row["fxlab"]), _public(row["torchao"])
    return _public(base), rows


def _timing(t: Timing | str | None) -> dict[str, Any] | None:
    if isinstance(t, Timing):
        return {"status": "ok", **t.to_json()}
    return None if t is None else {"status": t}


def _devices(device: torch.device) -> list[torch.device]:
    return [torch.device("cpu")] + ([device] if device.type != "cpu" else [])


def not_run(why: str) -> dict[str, Any]:
    """The suite's result when it could not run: why, and its targets as n/a."""
    log.warning("bench torchao: not run: %s", why)
    return {"status": f"not run: {why}", "rows": [], "baselines": [], "method": METHOD,
            "targets": [Target("fxlab modes vs torchao", "all", None, "—", None, f"not run: {why}").to_json()]}


def torchao_suite(cfg: Config, device: torch.device, *, package: str = "torchao") -> dict[str, Any]:
    """Every fxlab mode next to torchao's nearest config on the trained seed models (``PAIRS``).

    ``package``: the import name of torchao (another name, or torchao missing, makes the suite report
    that it was not run and why). ``--quick``: the first seed model of ``cfg.models``, trained one epoch.
    """
    from .. import data as fxdata
    from ..models import SEED_MODELS
    from .inference import mnist_images

    q, version = import_torchao(package)
    if q is None:
        return not_run(version)
    models = [m for m in cfg.models if m in SEED_MODELS] or list(SEED_MODELS)
    if cfg.quick:
        models = models[:1]
    try:
        data = fxdata.load(fxdata.resolve_root(cfg.data), download=False)
    except Exception as exc:
        return not_run(f"MNIST is needed for the accuracies ({describe(exc)})")
    images, _ = mnist_images(cfg.data, max(BATCHES))
    baselines, rows = [], []
    for dev in _devices(device):
        for name in models:
            base, model_rows = _measure_model(q, name, data, images, cfg, dev, cfg.quick)
            baselines.append(base)
            rows += model_rows
    return {"status": "ok", "torchao": version, "devices": [str(d) for d in _devices(device)], "models": models,
            "batches": list(BATCHES), "method": METHOD, "baselines": baselines, "rows": rows,
            "targets": [t.to_json() for t in torchao_targets(rows)]}


# --------------------------------------------------------------------------------------------
# targets and tables


def _ok(side: dict[str, Any]) -> bool:
    return side.get("status") == "ok"


def torchao_targets(rows: list[dict[str, Any]]) -> list[Target]:
    """Per pair (and device): fxlab at least as accurate as torchao (worst model), and for int8 / int4 modes
    at batch 256 on CPU, fxlab's latency ≥ 1.00× torchao's (worst model).

    "At least as accurate" is judged on the paired test images: met where fxlab's accuracy is not lower,
    or where it is lower by a split of the disagreeing images that chance explains (McNemar's exact test,
    p ≥ :data:`SIGNIFICANCE`). Two quantized copies of one model disagree on a few dozen of the 10 000
    images; a difference of one to six images among those is a coin's, not a method's. The measured
    figure stays the plain difference in points."""
    out = []
    pairs = {p.label: p for p in PAIRS}
    for label, dev in dict.fromkeys((r["pair"], r["device"]) for r in rows):
        these = [r for r in rows if r["pair"] == label and r["device"] == dev]
        both = [r for r in these if _ok(r["fxlab"]) and _ok(r["torchao"])]
        name = f"{label} accuracy vs torchao"
        if not both:
            out.append(Target(name, dev, None, "≥ torchao", None, _why_not(these)))
        else:
            worst = min(both, key=lambda r: r["fxlab"]["accuracy"] - r["torchao"]["accuracy"])
            delta = worst["fxlab"]["accuracy"] - worst["torchao"]["accuracy"]
            trailing = [r for r in both if r["fxlab"]["accuracy"] < r["torchao"]["accuracy"]]
            met = all(r.get("paired") and r["paired"]["p"] >= SIGNIFICANCE for r in trailing)
            out.append(Target(name, f"{dev}, worst: {worst['model']}", delta,
                              f"≥ 0.00 points or McNemar p ≥ {SIGNIFICANCE}", met,
                              f"fxlab {worst['fxlab']['accuracy']:.2f}% vs {worst['torchao']['accuracy']:.2f}% "
                              f"({len(both)} model{'s' if len(both) > 1 else ''}){_paired_note(worst.get('paired'))}"))
        if pairs[label].latency_target and dev == "cpu":
            timed = [r for r in both if r["latency"].get("256", {}).get("fxlab_speedup")]
            lname = f"{label} latency vs torchao"
            if not timed:
                out.append(Target(lname, "cpu, batch 256", None, "≥ 1.00×", None, _why_not(these)))
                continue
            worst = min(timed, key=lambda r: r["latency"]["256"]["fxlab_speedup"])
            out.append(at_least(lname, f"cpu, batch 256, worst: {worst['model']}",
                                worst["latency"]["256"]["fxlab_speedup"], 1.0, f"{len(timed)} model(s)"))
    return out


def _paired_note(p: dict[str, Any] | None) -> str:
    """``; right only fxlab/torchao 12/18, McNemar p 0.36`` (nothing without a paired comparison)."""
    return f"; {_paired_text(p)}" if p else ""


def _paired_text(p: dict[str, Any] | None) -> str:
    if not p:
        return "—"
    v = p["p"]
    pv = f"{v:.2f}" if v >= 0.01 else (f"{v:.1g}" if v >= 1e-4 else "< 0.0001")
    return f"right only fxlab/torchao {p['fxlab_only']}/{p['torchao_only']}, McNemar p {pv}"


def _why_not(rows: list[dict[str, Any]]) -> str:
    r = rows[0]
    why = [f"{side}: {r[side]['status']}" for side in ("fxlab", "torchao") if not _ok(r[side])]
    return "; ".join(why)[:160]


def _bytes(n: int | None) -> str:
    from .report import _bytes as fmt

    return fmt(n)


def _ms(t: dict[str, Any] | None) -> str:
    return "—" if not t or t.get("status") != "ok" else f"{t['median_s'] * 1e3:.3f}"


def _acc(side: dict[str, Any]) -> str:
    return f"{side['accuracy']:.2f}" if side.get("accuracy") is not None else "—"


def torchao_tables(result: dict[str, Any], fmt: str = "simple") -> str:
    """One table per device: each pair's accuracy, state-dict bytes and latency, fxlab | torchao."""
    from tabulate import tabulate

    if result.get("status") != "ok":
        return f"torchao comparison: {result.get('status', 'not run')}"
    headers = ["model", "fxlab mode", "torchao config", "accuracy % fxlab / torchao", "paired (test images)",
               "state dict fxlab / torchao",
               *[h for b in result["batches"] for h in (f"batch {b}: ms fxlab / torchao", "fxlab speed-up")]]
    parts, notes = [], {}
    for dev in result["devices"]:
        table = []
        for base in (b for b in result["baselines"] if b["device"] == dev):
            table.append([base["model"], "float32", "", _acc(base), "", _bytes(base.get("state_dict_bytes")),
                          *[c for b in result["batches"] for c in (_ms(base["latency"].get(str(b))), "")]])
            for r in (r for r in result["rows"] if r["device"] == dev and r["model"] == base["model"]):
                fx, ao = r["fxlab"], r["torchao"]
                cells = [r["model"], r["pair"], ao["config"]]
                if not _ok(fx) or not _ok(ao):
                    why = f"fxlab: {fx['status']}" if not _ok(fx) else ""
                    why += ("; " if why and not _ok(ao) else "") + (f"torchao: {ao['status']}" if not _ok(ao) else "")
                    notes[(r["pair"], why)] = None
                cells += [f"{_acc(fx)} / {_acc(ao)}", _paired_text(r.get("paired")),
                          f"{_bytes(fx.get('state_dict_bytes'))} / {_bytes(ao.get('state_dict_bytes'))}"]
                for b in result["batches"]:
                    lat = r["latency"][str(b)]
                    s = lat["fxlab_speedup"]
                    cells += [f"{_ms(lat['fxlab'])} / {_ms(lat['torchao'])}", "—" if s is None else f"{s:.2f}×"]
                table.append(cells)
        parts.append(f"fxlab vs torchao {result['torchao']} on {dev}:\n\n"
                     + tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True))
    lines = [f"{pair}: {why}" for pair, why in notes]
    left = {(r["pair"], r["torchao"]["config"], r["torchao"]["left_float"]) for r in result["rows"]
            if r["torchao"].get("left_float")}
    lines += [f"{pair}: torchao {cfg} left {n} Linear(s) in float32" for pair, cfg, n in sorted(left)]
    if lines:
        parts.append("\n".join(("- " if fmt != "simple" else "") + line for line in lines))
    return "\n\n".join(parts)
