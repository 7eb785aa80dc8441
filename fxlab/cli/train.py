"""``fxlab train`` / ``python -m fxlab.train``: train a seed model on MNIST and save a checkpoint."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import data as mnist_data
from .._util import check_output, resolve_device
from ..errors import UsageError, WriteError
from ..train import (DEFAULT_RECIPE, Recipe, evaluate, fit_recipe, init_distributed, peak_memory_mb,
                     save_checkpoint)
from .runner import parser


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.train --model NAME [--epochs N] [--data DIR] [--device D] [--seed S] --out model.pth``."""
    from ..models import build, names

    p = parser("python -m fxlab.train", "Train a seed model on MNIST and save a checkpoint.")
    p.add_argument("--model", required=True, help=f"seed model: {', '.join(names())}")
    p.add_argument("--epochs", type=int, default=DEFAULT_RECIPE.epochs, help="epochs (default %(default)s)")
    p.add_argument("--lr", type=float, default=DEFAULT_RECIPE.lr, help="peak learning rate (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_RECIPE.batch_size, help="global batch (default %(default)s)")
    p.add_argument("--schedule", default=DEFAULT_RECIPE.schedule, choices=["onecycle", "cosine", "constant"])
    p.add_argument("--seed", type=int, default=DEFAULT_RECIPE.seed, help="seed (default %(default)s)")
    p.add_argument("--data", help="MNIST root (default: $FXLAB_DATA, else the user cache; fetched if absent)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke runs)")
    p.add_argument("--out", required=True, help="checkpoint to write (rank 0 writes it)")
    ns = p.parse_args(argv)
    if ns.model not in names():
        build(ns.model)  # raises the 'unknown model ... (closest: ...)' error
    for opt in ("epochs", "batch_size"):
        if getattr(ns, opt) < 1:
            raise UsageError(f"--{opt.replace('_', '-')} must be at least 1")

    resolve_device(ns.device)  # a bad device, a bad output folder: said now, not after training
    out = check_output(ns.out)
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
        model = build(ns.model)
        recipe = Recipe(epochs=ns.epochs, lr=ns.lr, batch_size=ns.batch_size, schedule=ns.schedule, seed=ns.seed)
        if rank == 0:
            procs = f" × {world} processes" if world > 1 else ""
            limit = f" (at most {ns.max_steps} steps)" if ns.max_steps else ""
            print(f"training {ns.model} on {dev}{procs}: {ns.epochs} epochs{limit}, batch {ns.batch_size}, "
                  f"Adam {ns.schedule} lr {ns.lr:g}, data {ds.root}", flush=True)

        def report(r: dict[str, Any]) -> None:
            if rank == 0:
                print(f"epoch {r['epoch']}/{ns.epochs}: train loss {r['train_loss']:.4f} "
                      f"acc {r['train_accuracy']:.2f}% | test loss {r['test_loss']:.4f} "
                      f"acc {r['test_accuracy']:.2f}% | {r['seconds']:.1f}s", flush=True)

        history = fit_recipe(model, ds, recipe, device=dev, max_steps=ns.max_steps, on_epoch=report)
        if rank == 0:
            ev = evaluate(model, ds)
            _save(out, model, ns.model, history, ev.accuracy, recipe)
            print(f"peak memory: {peak_memory_mb():.0f} MiB; saved {out}")
            print(f"test accuracy: {ev.accuracy:.2f}%", flush=True)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _save(out: Path, model: torch.nn.Module, name: str, history: Any, accuracy: float, recipe: Recipe) -> None:
    """Write the checkpoint; if that fails after training, keep the work in a rescue copy and say where."""
    try:
        save_checkpoint(out, model, name=name, history=history, accuracy=accuracy, recipe=recipe)
    except WriteError as exc:
        rescue = Path(tempfile.gettempdir()) / f"fxlab-rescue-{name}-{os.getpid()}.pth"
        try:
            save_checkpoint(rescue, model, name=name, history=history, accuracy=accuracy, recipe=recipe)
        except WriteError:
            raise exc from None
        raise WriteError(f"{exc}; the trained model was saved to {rescue} instead") from exc
