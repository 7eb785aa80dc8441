"""The training suite: one epoch and one evaluation, fxlab.train vs the seeds' loop, side by side."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .harness import Timing, compare, ratio, timing_fields
from .memory import training_rss
from .seeds import seed_epoch, seed_evaluate, seed_loaders
from .targets import Target, at_least

if TYPE_CHECKING:
    from . import Config

log = logging.getLogger("fxlab.bench")

SEED = "seeds' loop (DataLoader, batch 64)"
FX64 = "fxlab.train.fit, batch 64"
# the seeds' loop runs on torch's intra-op threads (every core); this row (no target) gives fxlab the
# same cores, next to the recipe's one thread
FX64_CORES = "fxlab.train.fit, batch 64, torch's threads"
EPOCH_SPEEDUP = 12.0  # an fxlab.train epoch vs the seeds' loop, at least
SEED_EVAL, FX_EVAL = "seeds' evaluation loop (DataLoader, batch 64)", "fxlab.train.evaluate"

METHOD = (
    "Each epoch candidate trains a fresh, identically seeded mymodule for one epoch over the same "
    "training images (Adam, cross-entropy); the candidates take turns over rounds (median shown). "
    "The seeds' loop is seed 001's: torchvision MNIST with ToTensor + Normalize(0.1307, 0.3081) through "
    "DataLoader(batch 64, shuffle=True, num_workers=0), Adam lr 1e-3. fxlab.train.fit (tensors held on the "
    "device, batches by indexing, its one-cycle schedule) runs at batch 64, the seeds' batch, and at its "
    "default batch, on the default recipe's one intra-op thread; at batch 64 also on torch's threads "
    "(threads=None), the cores the seeds' loop runs on (shown, no target: the targets use the recipe's "
    "one thread). Loading the data (read + check the files; fxlab also verifies their MD5s) is timed apart "
    "(data_load_s). Accuracy: test accuracy after that "
    "one epoch (fxlab.train.evaluate). Evaluation: the test set with the fxlab-trained model, the seeds' "
    "loop vs fxlab.train.evaluate. Recipe: mymodule from random weights with fxlab's default recipe, once per "
    "seed, each run timed next to one epoch of the seeds' loop on a fresh model (alternating which goes "
    "first), so that its wall time can also be read in seeds' epochs on a loaded machine."
)


def _fxdef() -> str:
    from .. import train as fxtrain

    return f"fxlab.train.fit, default batch {fxtrain.DEFAULT_RECIPE.batch_size}"


def limit(data: Any, train_limit: int | None, test_limit: int | None) -> Any:
    """fxlab's in-memory MNIST cut to its first images (quick mode)."""
    if not train_limit and not test_limit:
        return data
    from ..data import MNIST, Split

    def cut(split: Split, n: int | None) -> Split:
        return Split(split.pixels[:n], split.labels[:n]) if n else split

    return MNIST(train=cut(data.train, train_limit), test=cut(data.test, test_limit), root=data.root,
                 device=data.device)


def _load(root: str, cfg: Config, device: torch.device) -> tuple[Any, tuple[Any, Any], dict[str, float]]:
    """fxlab's MNIST (cold: its cache cleared) and the seeds' loaders, each load timed."""
    from .. import data as fxdata

    cache = getattr(fxdata, "_CACHE", None)
    if isinstance(cache, dict):  # time a cold load: the inference suite may have loaded MNIST already
        cache.clear()
    start = time.perf_counter()
    data = fxdata.load(root, device=device)
    fx_load_s = time.perf_counter() - start
    start = time.perf_counter()
    loaders = seed_loaders(root, 64, cfg.train_limit, cfg.test_limit)
    seed_load_s = time.perf_counter() - start
    seconds = {"fxlab.data.load": fx_load_s, "seeds' torchvision MNIST objects": seed_load_s}
    return limit(data, cfg.train_limit, cfg.test_limit), loaders, seconds


def _fresh(device: torch.device) -> nn.Module:
    from .. import models as seed_models

    torch.manual_seed(0)
    return seed_models.build("mymodule").to(device)


def _epochs(data: Any, seed_train: Any, cfg: Config, device: torch.device) -> tuple[dict[str, Timing | str],
                                                                                     dict[str, nn.Module]]:
    """One epoch of each candidate on a fresh model, side by side; the timings and the trained models."""
    from .. import train as fxtrain

    def fx_fit(model: nn.Module, batch_size: int, **kwargs: Any) -> None:
        fxtrain.fit(model, data, epochs=1, batch_size=batch_size, device=device, seed=0, progress=False,
                    evaluate_each_epoch=False, **kwargs)

    steps: dict[str, Callable[[nn.Module], None]] = {
        SEED: lambda m: seed_epoch(m, seed_train, device),
        FX64: lambda m: fx_fit(m, 64),
        FX64_CORES: lambda m: fx_fit(m, 64, threads=None),
        _fxdef(): lambda m: fx_fit(m, fxtrain.DEFAULT_RECIPE.batch_size),
    }
    trained: dict[str, nn.Module] = {}

    def candidate(label: str) -> Callable[[], None]:
        def go() -> None:
            model = _fresh(device)
            steps[label](model)
            trained[label] = model

        return go

    log.info("bench training: one epoch each")
    timings = compare({label: candidate(label) for label in steps}, rounds=cfg.train_rounds, round_time=0.0,
                      warmup=1, device=device)
    return timings, trained


def _recipe(data: Any, seed_train: Any, cfg: Config, device: torch.device) -> tuple[dict[str, Any], list[Target]]:
    """mymodule trained from random weights with fxlab's default recipe, once per seed in
    ``cfg.recipe_seeds``, each run next to one epoch of the seeds' loop (interleaved, the order
    alternating): wall seconds, test accuracy, and the time in seeds' epochs; their targets."""
    from .. import models as seed_models
    from .. import train as fxtrain

    base = fxtrain.DEFAULT_RECIPE
    runs: list[dict[str, Any]] = []
    targets: list[Target] = []

    def seeds_epoch() -> float:
        model = _fresh(device)
        start = time.perf_counter()
        seed_epoch(model, seed_train, device)
        return time.perf_counter() - start

    for i, seed in enumerate(cfg.recipe_seeds):
        r = dataclasses.replace(base, seed=seed)
        log.info("bench training: fxlab's default recipe on mymodule, seed %d (%d epochs), next to a seeds' epoch",
                 seed, r.epochs)
        seeds_before = seeds_epoch() if i % 2 == 0 else None
        torch.manual_seed(r.seed)
        model = seed_models.build("mymodule")
        start = time.perf_counter()
        fxtrain.fit_recipe(model, data, r, device=device, progress=False, evaluate_each_epoch=False)
        seconds = time.perf_counter() - start
        seeds_s = seeds_before if seeds_before is not None else seeds_epoch()
        acc = fxtrain.evaluate(model, data).accuracy
        in_epochs = seconds / seeds_s
        runs.append({"seed": seed, "seconds": seconds, "accuracy": acc, "seeds_epoch_s": seeds_s,
                     "seeds_epochs": in_epochs})
        where = f"mymodule, seed {seed}"
        targets.append(Target("default recipe test accuracy (%)", where, acc, "≥ 98.00", acc >= 98.0,
                              f"{r.epochs} epochs at batch {r.batch_size}"))
        targets.append(Target("default recipe training time (s)", where, seconds, "≤ 5.00", seconds <= 5.0,
                              f"= {in_epochs:.2f} epochs of the seeds' loop ({seeds_s:.1f} s, timed next to it)"))
    return {"model": "mymodule", "recipe": dataclasses.asdict(base), "runs": runs}, targets


def _memory(root: str, cfg: Config) -> tuple[dict[str, Any], list[Target]]:
    """Peak RSS of a training process, and its target when it was measured."""
    log.info("bench training: peak RSS of a training process")
    memory = training_rss(root, cfg.probe_steps)
    if not memory.get("peak_rss_bytes"):
        return memory, []
    mb = memory["peak_rss_bytes"] / 2**20
    return memory, [Target("peak memory training mymodule on CPU (MB)", "whole process, peak RSS", mb, "< 1024",
                           mb < 1024, "includes Python and torch themselves")]


def _train_row(phase: str, label: str, timing: Timing | str, accuracy: float | None) -> dict[str, Any]:
    return {"phase": phase, "implementation": label, "accuracy": accuracy, **timing_fields(timing)}


def training_suite(cfg: Config, device: torch.device) -> dict[str, Any]:
    """One epoch and one evaluation: fxlab.train vs the seeds' loop, side by side."""
    from .. import data as fxdata
    from .. import train as fxtrain

    root = str(fxdata.resolve_root(cfg.data))
    data, (seed_train, seed_test), load_s = _load(root, cfg, device)
    epoch_t, trained = _epochs(data, seed_train, cfg, device)
    accuracy = {label: fxtrain.evaluate(model, data).accuracy for label, model in trained.items()}
    model = trained.get(_fxdef()) or _fresh(device)
    log.info("bench training: evaluation")
    eval_t = compare({SEED_EVAL: lambda: seed_evaluate(model, seed_test, device),
                      FX_EVAL: lambda: fxtrain.evaluate(model, data)},
                     rounds=max(3, cfg.train_rounds), round_time=0.0, warmup=1, device=device)
    rows = [_train_row("epoch", label, t, accuracy.get(label)) for label, t in epoch_t.items()]
    rows += [_train_row("evaluation", label, t, None) for label, t in eval_t.items()]
    images, test_images = len(data.train), len(data.test)
    targets = [at_least("training epoch vs seeds' loop", label, ratio(epoch_t[SEED], epoch_t[label]), EPOCH_SPEEDUP,
                        f"{images} images") for label in (FX64, _fxdef())]
    targets.append(at_least("evaluation vs seeds' loop", f"mymodule, {test_images} test images",
                            ratio(eval_t[SEED_EVAL], eval_t[FX_EVAL]), 20.0))
    recipe: dict[str, Any] = {}
    if cfg.recipe:
        recipe, more = _recipe(data, seed_train, cfg, device)
        targets += more
    memory: dict[str, Any] = {}
    if cfg.memory_probe and device.type == "cpu":
        memory, more = _memory(root, cfg)
        targets += more
    return {"device": str(device), "train_images": images, "test_images": test_images, "data_load_s": load_s,
            "method": METHOD, "rows": rows, "recipe": recipe, "memory": memory,
            "targets": [t.to_json() for t in targets]}
