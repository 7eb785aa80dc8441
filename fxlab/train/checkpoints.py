"""fxlab's training checkpoints, and the cache of pretrained seed models."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data as mnist_data
from .._util import default_device, write_atomic
from ..data import MNIST
from ..errors import FxlabError
from .loop import evaluate, fit_recipe
from .recipe import History, Recipe, recipe_for

log = logging.getLogger(__name__)

#: The format tag of fxlab's training checkpoints.
CHECKPOINT_FORMAT = "fxlab.train/1"


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    name: str,
    history: History | None = None,
    accuracy: float | None = None,
    recipe: Recipe | None = None,
    **extra: Any,
) -> Path:
    """Write fxlab's training checkpoint atomically and return its path.

    A plain dict, loadable with ``torch.load(path, weights_only=True)``: ``model_state_dict`` (CPU
    tensors) and the metadata ``format``, ``model`` (seed model name), ``accuracy`` (test, percent),
    ``history`` (``History.to_dict()``), ``recipe``, ``device``, ``torch_version``, plus ``extra``.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "model": name,
        "model_state_dict": state,
        "accuracy": accuracy,
        "history": history.to_dict() if history is not None else None,
        "recipe": dataclasses.asdict(recipe) if recipe is not None else None,
        "device": history.device if history is not None else None,
        "torch_version": str(torch.__version__),
        **extra,
    }
    out = Path(path)
    write_atomic(out, lambda tmp: torch.save(ckpt, tmp))
    return out


def load_checkpoint(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model, metadata) from a checkpoint written by ``save_checkpoint`` (``torch.load(weights_only=True)``)."""
    from ..models.recognize import build_arch

    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise FxlabError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FxlabError(f"{path} is not an fxlab training checkpoint (no format {CHECKPOINT_FORMAT!r})")
    model = build_arch(ckpt["model"], ckpt.get("model_args") or {})
    model.load_state_dict(ckpt["model_state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k != "model_state_dict"}
    return model, meta


def checkpoint_path(name: str, recipe: Recipe | None = None) -> Path:
    """Where ``pretrained`` caches ``name`` trained with ``recipe`` (default: the model's own,
    ``recipe_for(name)``): keyed by name, recipe and torch version."""
    recipe = recipe if recipe is not None else recipe_for(name)
    torch_v = torch.__version__.replace("+", "_")
    return mnist_data.cache_dir() / "checkpoints" / f"{name}-{recipe.key()}-torch{torch_v}.pth"


def pretrained(
    name: str,
    *,
    data: MNIST | str | os.PathLike[str] | None = None,
    recipe: Recipe | None = None,
    device: str | torch.device | None = None,
    cache: bool = True,
    progress: bool = True,
) -> nn.Module:
    """The built-in model ``name`` trained with ``recipe`` (default: its own, ``recipe_for(name)``:
    ``RECIPES`` for the CNNs, ``DEFAULT_RECIPE`` for the seed MLPs), in eval mode.

    Trained once and cached under ``<user cache>/fxlab/checkpoints`` (key: name + recipe + torch
    version); later calls load the checkpoint. Its metadata is on ``model.fxlab_meta``.
    """
    from ..models import build

    recipe = recipe if recipe is not None else recipe_for(name)
    dev = torch.device(device) if device is not None else default_device()
    path = checkpoint_path(name, recipe)
    if cache and path.is_file():
        try:
            model, meta = load_checkpoint(path, device=dev)
            model.fxlab_meta = meta  # type: ignore[assignment]
            log.info("loaded %s from %s", name, path)
            return model
        except FxlabError as exc:
            log.warning("ignoring unreadable cached checkpoint %s: %s", path, exc)
    torch.manual_seed(recipe.seed)
    model = build(name)
    ds = mnist_data.as_mnist(data, dev)
    history = fit_recipe(model, ds, recipe, device=dev, progress=progress, evaluate_each_epoch=False)
    accuracy = evaluate(model, ds).accuracy
    history.epochs[-1]["test_accuracy"] = accuracy
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, model, name=name, history=history, accuracy=accuracy, recipe=recipe)
    model.eval()
    model.fxlab_meta = {"model": name, "accuracy": accuracy, "history": history.to_dict(),  # type: ignore[assignment]
                        "recipe": dataclasses.asdict(recipe), "device": str(dev)}
    return model


