"""``fxlab train`` / ``python -m fxlab.train``: train a model on MNIST and save a checkpoint.

``--model`` is a built-in name (trained with its own recipe, ``fxlab.train.RECIPES``, unless flags
say otherwise) or a class of your own (``package.module:Class``, ``path/to/file.py:Class``, with
``--model-args JSON``)."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import data as mnist_data
from .._util import resolve_device
from ..errors import UsageError, WriteError
from ..train import (DEFAULT_RECIPE, Recipe, evaluate, fit_recipe, init_distributed, peak_memory_mb, recipe_for,
                     save_checkpoint)
from .runner import add_model_options, add_output, finite_float, parser, seed_int


def _parser() -> argparse.ArgumentParser:
    from ..models import names

    p = parser("python -m fxlab.train", "Train a model on MNIST and save a checkpoint.")
    add_model_options(p, f"built-in model ({', '.join(names())}), package.module:Class or path/to/file.py:Class")
    d = DEFAULT_RECIPE
    p.add_argument("--epochs", type=int, help=f"epochs (default: the model's recipe; {d.epochs} for the seed MLPs)")
    p.add_argument("--lr", type=finite_float,
                   help=f"peak learning rate (default: the model's recipe; {d.lr:g} for the seed MLPs)")
    p.add_argument("--batch-size", type=int, help=f"global batch (default: the model's recipe; {d.batch_size})")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], help="default: the model's recipe")
    p.add_argument("--seed", type=seed_int, help=f"seed (default: the model's recipe; {d.seed})")
    p.add_argument("--data", help="MNIST root (default: $FXLAB_DATA, else the user cache; fetched if absent)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    add_output(p, "--out", required=True, help="checkpoint to write (rank 0 writes it)")
    return p


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.train --model SPEC [--epochs N] [--data DIR] [--device D] [--seed S] --out model.pth``."""
    from ..models import build_spec, parse_model_args
    from ..models.recognize import arch_of

    ns = _parser().parse_args(argv)
    if ns.model is None:
        raise UsageError("python -m fxlab.train: the following arguments are required: --model")
    model_args = parse_model_args(ns.model_args)
    base = recipe_for(ns.model)
    for opt in ("epochs", "lr", "batch_size", "schedule", "seed"):
        if getattr(ns, opt) is None:
            setattr(ns, opt, getattr(base, opt))
    _check_numbers(ns)
    with torch.random.fork_rng(devices=[]):
        build_spec(ns.model, model_args)  # an unknown model, a class that does not build: said now
    resolve_device(ns.device)  # a bad device: said now, not after training
    out = Path(ns.out)
    rank, world, dev = init_distributed(ns.device)
    try:
        # rank 0 fetches MNIST if it is missing; the others wait for it, then read it (or fail as it did)
        if rank != 0:
            torch.distributed.barrier()
            ds = mnist_data.load(ns.data, device=dev, download=False)
        else:
            try:
                ds = mnist_data.load(ns.data, device=dev)
            finally:
                if world > 1:
                    torch.distributed.barrier()
        torch.manual_seed(ns.seed)
        model = build_spec(ns.model, model_args)
        arch = arch_of(model)
        name = arch[0] if arch else ns.model
        extra = {"model_args": arch[1]} if arch and arch[1] else {}
        recipe = Recipe(epochs=ns.epochs, lr=ns.lr, batch_size=ns.batch_size, schedule=ns.schedule, seed=ns.seed,
                        weight_decay=base.weight_decay, label_smoothing=base.label_smoothing,
                        threads=base.threads)
        if rank == 0:
            procs = f" × {world} processes" if world > 1 else ""
            limit = f" (at most {ns.max_steps} steps)" if ns.max_steps else ""
            print(f"training {ns.model} on {dev}{procs}: {ns.epochs} epochs{limit}, batch {ns.batch_size}, "
                  f"Adam {ns.schedule} lr {ns.lr:g}, data {ds.root}", flush=True)
        report = (lambda r: _print_epoch(r, ns.epochs)) if rank == 0 else None
        history = fit_recipe(model, ds, recipe, device=dev, max_steps=ns.max_steps, on_epoch=report)
        if rank == 0:
            ev = evaluate(model, ds)
            _save(out, model, name, history, ev.accuracy, recipe, extra)
            print(f"peak memory: {peak_memory_mb():.0f} MiB; saved {out}")
            print(f"test accuracy: {ev.accuracy:.2f}%", flush=True)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _check_numbers(ns: argparse.Namespace) -> None:
    """The numeric options (after the recipe's defaults are filled in), refused before MNIST is read."""
    for opt in ("epochs", "batch_size", "max_steps"):
        value = getattr(ns, opt)
        if value is not None and value < 1:
            raise UsageError(f"--{opt.replace('_', '-')} must be at least 1")
    if ns.lr <= 0:
        raise UsageError(f"--lr must be above 0, got {ns.lr:g}")


def _print_epoch(r: dict[str, Any], epochs: int) -> None:
    print(f"epoch {r['epoch']}/{epochs}: train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.2f}% | "
          f"test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.2f}% | {r['seconds']:.1f}s", flush=True)


def _save(out: Path, model: torch.nn.Module, name: str, history: Any, accuracy: float, recipe: Recipe,
          extra: dict[str, Any]) -> None:
    """Write the checkpoint; if that fails after training, keep the work in a rescue copy and say where."""
    try:
        save_checkpoint(out, model, name=name, history=history, accuracy=accuracy, recipe=recipe, **extra)
    except WriteError as exc:
        rescue = Path(tempfile.gettempdir()) / f"fxlab-rescue-{name.replace(':', '_').replace('/', '_')}-{os.getpid()}.pth"
        try:
            save_checkpoint(rescue, model, name=name, history=history, accuracy=accuracy, recipe=recipe, **extra)
        except WriteError:
            raise exc from None
        raise WriteError(f"{exc}; the trained model was saved to {rescue} instead") from exc
