"""Train and evaluate on MNIST: fast, exact, and the same under ``torchrun``.

>>> from fxlab.models import build
>>> from fxlab.train import fit, evaluate
>>> model = build("mymodule")
>>> history = fit(model, "../shared/data", epochs=1)   # doctest: +SKIP
>>> evaluate(model, "../shared/data").accuracy           # doctest: +SKIP
97.4

Data are tensors held on the training device (``fxlab.data``); a batch is an index into them, so
an epoch has no DataLoader and no per-sample Python. The recipe is the seeds' (Adam, cross-entropy)
with a one-cycle learning-rate schedule. Under ``torch.distributed`` (e.g. ``torchrun``) ``fit``
wraps the model in DistributedDataParallel and each rank trains on its shard of every batch.

Command line::

    python -m fxlab.train --model mymodule --out model.pth
    torchrun --nproc-per-node 2 -m fxlab.train --model mymodule --out model.pth
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as mnist_data
from ..data import MNIST
from ..errors import FxlabError
from .._util import write_atomic

log = logging.getLogger(__name__)

#: The format tag of fxlab's training checkpoints.
CHECKPOINT_FORMAT = "fxlab.train/1"


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: Adam + cross-entropy, one-cycle LR schedule peaking at ``lr``."""

    epochs: int = 8
    lr: float = 3e-3
    batch_size: int = 128
    schedule: str = "onecycle"  # "onecycle", "cosine" or "constant"
    weight_decay: float = 0.0
    seed: int = 0

    def key(self) -> str:
        """A short stable hash of the recipe (for checkpoint cache names)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


#: The default recipe: `mymodule` reaches ≥ 98 % test accuracy with it.
DEFAULT_RECIPE = Recipe()


class Evaluation(NamedTuple):
    """What ``evaluate`` measures: ``accuracy`` in percent, mean cross-entropy ``loss``, and the
    10×10 ``confusion`` matrix (int64; rows are true labels, columns predictions)."""

    accuracy: float
    loss: float
    confusion: torch.Tensor


@dataclass
class History:
    """Per-epoch records of a ``fit``: dicts with ``epoch``, ``train_loss``, ``train_accuracy``,
    ``test_loss``, ``test_accuracy`` (percent, or None when not evaluated), ``lr`` (of the epoch's last
    step), ``seconds`` (training only), ``steps`` (optimizer steps so far)."""

    epochs: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    world_size: int = 1

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record."""
        return self.epochs[-1] if self.epochs else {}

    @property
    def seconds(self) -> float:
        """Total training time (evaluation excluded)."""
        return float(sum(e["seconds"] for e in self.epochs))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, numbers, strings): safe for ``torch.load(weights_only=True)`` and JSON."""
        return {"epochs": [dict(e) for e in self.epochs], "device": self.device, "world_size": self.world_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(epochs=[dict(e) for e in d.get("epochs", [])], device=d.get("device", "cpu"),
                   world_size=d.get("world_size", 1))


# --------------------------------------------------------------------------------------------
# devices and modes


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _restore_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    for name, m in model.named_modules():
        if name in modes:
            m.training = modes[name]


def _distributed() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on a terminal (stderr a tty), otherwise None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# evaluate


def evaluate(
    model: nn.Module,
    data: MNIST | str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    batch_size: int = 10_000,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Accuracy (percent), mean loss and confusion matrix of ``model`` on an MNIST split.

    Runs in big batches under ``torch.inference_mode`` with the model in eval mode (its modes are
    restored afterwards). ``device`` defaults to the model's; a model elsewhere is evaluated as a copy.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    if model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)
    ds = mnist_data.as_mnist(data, dev)
    if split not in ("train", "test"):
        raise FxlabError(f"unknown split {split!r}: use 'train' or 'test'")
    part = ds.train if split == "train" else ds.test
    modes = _modes(model)
    model.eval()
    correct = 0
    loss_sum = 0.0
    confusion = torch.zeros(100, dtype=torch.int64, device=dev)
    try:
        with torch.inference_mode():
            if split == "test":  # the test images are normalised once and kept (31 MB); train ones per batch
                batches: Any = ((part.images[i : i + batch_size], part.labels[i : i + batch_size])
                                for i in range(0, len(part), batch_size))
            else:
                batches = part.batches(batch_size)
            for x, y in batches:
                out = model(x)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                out = out.float()
                loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
                pred = out.argmax(1)
                correct += int((pred == y).sum())
                confusion += torch.bincount(y * 10 + pred, minlength=100)
    finally:
        _restore_modes(model, modes)
    n = len(part)
    return Evaluation(100.0 * correct / n, loss_sum / n, confusion.view(10, 10).cpu())


# --------------------------------------------------------------------------------------------
# fit


def _scheduler(optimizer: torch.optim.Optimizer, schedule: str, lr: float, total: int) -> Any:
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total, 1), pct_start=0.25)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if schedule == "constant":
        return None
    raise FxlabError(f"unknown schedule {schedule!r}: use 'onecycle', 'cosine' or 'constant'")


def fit(
    model: nn.Module,
    data: MNIST | str | os.PathLike[str] | None = None,
    *,
    epochs: int = DEFAULT_RECIPE.epochs,
    lr: float = DEFAULT_RECIPE.lr,
    batch_size: int = DEFAULT_RECIPE.batch_size,
    schedule: str = DEFAULT_RECIPE.schedule,
    weight_decay: float = DEFAULT_RECIPE.weight_decay,
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    evaluate_each_epoch: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> History:
    """Train ``model`` in place on MNIST with Adam + cross-entropy; return the per-epoch ``History``.

    - ``data``: an ``MNIST`` (``fxlab.data.load``), a root directory, or None (the default root).
    - ``device``: default CUDA when available, else CPU; the model is moved there and stays there.
    - ``seed``: makes the batch order reproducible (the model's initialisation is the caller's).
    - ``schedule``: ``onecycle`` (default; ``lr`` is the peak), ``cosine`` or ``constant``.
    - ``max_steps``: stop after that many optimizer steps (small budgets for tests and smoke runs).
    - The model is in train mode while fitting (BatchNorm, Dropout behave as in training) and its
      modes are restored afterwards. A tqdm bar shows on a terminal only (``progress``).
    - Under an initialised ``torch.distributed`` process group the model is wrapped in
      DistributedDataParallel; every rank draws the same permutation and trains on its slice of
      each batch (``batch_size`` is the global batch). Epoch statistics are reduced over ranks.
    """
    rank, world = _distributed()
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    ds = mnist_data.as_mnist(data, dev)
    model.to(dev)
    modes = _modes(model)

    train_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise FxlabError("the model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    n = len(ds.train)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    scheduler = _scheduler(optimizer, schedule, lr, total)
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,))))
    # each rank trains on its slice of every global batch
    local = math.ceil(batch_size / world)
    lo, hi = rank * local, min((rank + 1) * local, batch_size)

    history = History(device=str(dev), world_size=world)
    step = 0
    last_lr = float(optimizer.param_groups[0]["lr"])
    rng = contextlib.ExitStack()
    if seed is not None:  # dropout masks too: seed the global generators, and restore them afterwards
        rng.enter_context(torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []))
        torch.manual_seed(seed)
    try:
        for epoch in range(1, epochs + 1):
            if step >= total:
                break
            train_model.train()
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=gen).to(dev)
            stats = torch.zeros(3, dtype=torch.float64, device=dev)  # loss sum, correct, count
            bar = _progress_bar(min(steps_per_epoch, total - step), f"epoch {epoch}/{epochs}", progress and rank == 0)
            for i in range(0, n, batch_size):
                if step >= total:
                    break
                idx = order[i : i + batch_size][lo:hi]
                x, y = ds.train.batch(idx)
                out = train_model(x)
                loss = F.cross_entropy(out, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                last_lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                if scheduler is not None:
                    scheduler.step()
                step += 1
                with torch.no_grad():
                    stats += torch.stack(
                        [loss.detach().double() * y.numel(), (out.argmax(1) == y).sum().double(),
                         torch.tensor(float(y.numel()), dtype=torch.float64, device=dev)]
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
            if bar is not None:
                bar.close()
            if world > 1:
                torch.distributed.all_reduce(stats)
            seconds = time.perf_counter() - t0
            loss_sum, correct, count = (float(v) for v in stats.cpu())
            record: dict[str, Any] = {
                "epoch": epoch,
                "steps": step,
                "train_loss": loss_sum / max(count, 1),
                "train_accuracy": 100.0 * correct / max(count, 1),
                "test_loss": None,
                "test_accuracy": None,
                "lr": float(last_lr),
                "seconds": seconds,
            }
            if evaluate_each_epoch:
                ev = evaluate(model, ds, device=dev)
                record["test_loss"], record["test_accuracy"] = ev.loss, ev.accuracy
            history.epochs.append(record)
            log.info("epoch %d: %s", epoch, record)
            if on_epoch is not None:
                on_epoch(record)
    finally:
        _restore_modes(model, modes)
        rng.close()
    return history


def fit_recipe(
    model: nn.Module,
    data: MNIST | str | os.PathLike[str] | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
    **kwargs: Any,
) -> History:
    """``fit`` with the options of a ``Recipe`` (keyword arguments override nothing of the recipe)."""
    return fit(model, data, epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
               schedule=recipe.schedule, weight_decay=recipe.weight_decay, seed=recipe.seed, **kwargs)


# --------------------------------------------------------------------------------------------
# checkpoints


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
    from ..models import build

    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise FxlabError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise FxlabError(f"{path} is not an fxlab training checkpoint (no format {CHECKPOINT_FORMAT!r})")
    model = build(ckpt["model"])
    model.load_state_dict(ckpt["model_state_dict"])
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k != "model_state_dict"}
    return model, meta


def checkpoint_path(name: str, recipe: Recipe = DEFAULT_RECIPE) -> Path:
    """Where ``pretrained`` caches ``name`` trained with ``recipe``: keyed by name, recipe and torch version."""
    torch_v = torch.__version__.replace("+", "_")
    return mnist_data.cache_dir() / "checkpoints" / f"{name}-{recipe.key()}-torch{torch_v}.pth"


def pretrained(
    name: str,
    *,
    data: MNIST | str | os.PathLike[str] | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
    device: str | torch.device | None = None,
    cache: bool = True,
    progress: bool = True,
) -> nn.Module:
    """The seed model ``name`` trained with ``recipe`` (default: ``DEFAULT_RECIPE``), in eval mode.

    Trained once and cached under ``<user cache>/fxlab/checkpoints`` (key: name + recipe + torch
    version); later calls load the checkpoint. Its metadata is on ``model.fxlab_meta``.
    """
    from ..models import build

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
        save_checkpoint(path, model, name=name, history=history, accuracy=accuracy, recipe=recipe)
    model.eval()
    model.fxlab_meta = {"model": name, "accuracy": accuracy, "history": history.to_dict(),  # type: ignore[assignment]
                        "recipe": dataclasses.asdict(recipe), "device": str(dev)}
    return model


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB (CPU; Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device) if device else default_device()
    if world <= 1:
        return 0, 1, dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), dev

