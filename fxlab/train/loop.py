"""Training and evaluating on MNIST tensors: no DataLoader, no per-sample Python."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as mnist_data
from .._util import eval_mode, model_device, resolve_device, saved_modes
from ..data import MNIST
from ..errors import FxlabError, UsageError
from .chain import LinearChain
from .optim import AdamSteps, adam
from .recipe import DEFAULT_RECIPE, Evaluation, History, Recipe, check_options, check_whole

#: MNIST's classes: a model must give this many outputs per image.
CLASSES = 10

log = logging.getLogger(__name__)


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


def _split_outputs(
    model: nn.Module, data: MNIST | str | os.PathLike[str] | None, split: str, batch_size: int,
    device: str | torch.device | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(float32 logits, labels)`` per batch of an MNIST split, the model in eval mode under
    ``torch.inference_mode`` (its modes restored afterwards); what :func:`evaluate` and
    :func:`correct_images` count. ``device`` defaults to the model's; a model elsewhere runs as a copy."""
    check_whole("batch_size", batch_size)
    if split not in ("train", "test"):
        raise FxlabError(f"unknown split {split!r}: use 'train' or 'test'")
    dev = resolve_device(device) if device is not None else model_device(model)
    if model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)
    ds = mnist_data.as_mnist(data, dev)
    part = ds.train if split == "train" else ds.test
    dtype = input_dtype(model)
    with eval_mode(model), torch.inference_mode():
        if split == "test":  # the test images are normalised once and kept (31 MB); train ones per batch
            batches: Any = ((part.images[i : i + batch_size], part.labels[i : i + batch_size])
                            for i in range(0, len(part), batch_size))
        else:
            batches = part.batches(batch_size)
        for x, y in batches:
            out = _logits(model(x.to(dtype)))
            check_classes(out)
            yield out.float(), y


def _logits(out: Any) -> Any:
    """The logits of a model's output: the first element of a tuple or list."""
    return out[0] if isinstance(out, (tuple, list)) else out


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model takes its images in: the one floating dtype of its parameters and buffers
    (a model converted with ``.double()`` or ``.to(torch.bfloat16)``), else float32.

    fxlab's quantized modules (those with a ``dequantized_weight``) take float32 whatever dtype they
    hold their weights in (``HalfLinear``'s fp16 weight), so their tensors do not count.

    >>> input_dtype(nn.Linear(2, 2).double()), input_dtype(nn.Linear(2, 2))
    (torch.float64, torch.float32)
    """
    dtypes = set()
    for module in model.modules():
        if hasattr(module, "dequantized_weight"):
            continue
        own = itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
        dtypes |= {t.dtype for t in own if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def check_classes(out: Any) -> None:
    """Refuse a model output that is not one row of MNIST's 10 class scores per image."""
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        _check_class_count(out.shape[1])
    else:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"the model gives outputs of shape {shape}, where MNIST has {CLASSES} classes: "
                         f"its output must be (batch, {CLASSES}) class scores")


def _check_class_count(outputs: int) -> None:
    if outputs != CLASSES:
        raise UsageError(f"the model gives {outputs} outputs per image, where MNIST has {CLASSES} classes: "
                         f"its output must be (batch, {CLASSES}) class scores")


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
    correct, loss_sum, n = 0, 0.0, 0
    confusion = torch.zeros(100, dtype=torch.int64)
    for out, y in _split_outputs(model, data, split, batch_size, device):
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        pred = out.argmax(1)
        correct += int((pred == y).sum())
        confusion += torch.bincount(y * 10 + pred, minlength=100).cpu()
        n += int(y.shape[0])
    return Evaluation(100.0 * correct / n, loss_sum / n, confusion.view(10, 10))


def correct_images(
    model: nn.Module,
    data: MNIST | str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    batch_size: int = 10_000,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Per image of an MNIST split, in order, whether ``model``'s top class is its label (bool, on
    CPU): the images :func:`evaluate` counts as right, for paired comparisons of two models on the
    same images (its sum over its length is ``evaluate``'s accuracy / 100)."""
    return torch.cat([(out.argmax(1) == y).cpu() for out, y in _split_outputs(model, data, split, batch_size, device)])


def _scheduler(optimizer: torch.optim.Optimizer, schedule: str, lr: float, total: int) -> Any:
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total, 1), pct_start=0.25)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if schedule == "constant":
        return None
    raise FxlabError(f"unknown schedule {schedule!r}: use 'onecycle', 'cosine' or 'constant'")


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Any:
    """torch's intra-op thread count set to ``n`` within this block, restored afterwards."""
    check_whole("threads", n)
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def fit(
    model: nn.Module,
    data: MNIST | str | os.PathLike[str] | None = None,
    *,
    epochs: int = DEFAULT_RECIPE.epochs,
    lr: float = DEFAULT_RECIPE.lr,
    batch_size: int = DEFAULT_RECIPE.batch_size,
    schedule: str = DEFAULT_RECIPE.schedule,
    weight_decay: float = DEFAULT_RECIPE.weight_decay,
    label_smoothing: float = DEFAULT_RECIPE.label_smoothing,
    threads: int | None = DEFAULT_RECIPE.threads,
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
    - ``label_smoothing``: cross-entropy's label smoothing while training (evaluation uses plain
      cross-entropy).
    - ``threads``: torch's intra-op threads while training on CPU (restored afterwards; the
      default recipe's 1 makes results independent of the core count); None leaves them as set.
    - ``max_steps``: stop after that many optimizer steps (small budgets for tests and smoke runs).
    - The model is in train mode while fitting (BatchNorm, Dropout behave as in training) and its
      modes are restored afterwards. A tqdm bar shows on a terminal only (``progress``).
    - Under an initialised ``torch.distributed`` process group the model is wrapped in
      DistributedDataParallel; every rank draws the same permutation and trains on its slice of
      each batch (``batch_size`` is the global batch). Epoch statistics are reduced over ranks.
    """
    check_options(epochs=epochs, lr=lr, batch_size=batch_size, schedule=schedule, weight_decay=weight_decay,
                  label_smoothing=label_smoothing, threads=threads, seed=seed, max_steps=max_steps)
    rank, world = _distributed()
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    ds = mnist_data.as_mnist(data, dev)
    model.to(dev)
    train_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise FxlabError("the model has no trainable parameters")
    optimizer = adam(params, lr, weight_decay)
    steps_per_epoch = math.ceil(len(ds.train) / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    run = _Run(train_model, ds, optimizer, _scheduler(optimizer, schedule, lr, total), dev, batch_size, total,
               rank, world, label_smoothing, torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))))
    history = History(device=str(dev), world_size=world)
    with saved_modes(model), contextlib.ExitStack() as rng:
        if threads is not None and dev.type == "cpu":
            rng.enter_context(_intra_op_threads(threads))
        if seed is not None:  # dropout masks too: seed the global generators, and restore them afterwards
            rng.enter_context(torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []))
            torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            if run.step >= total:
                break
            bar = _progress_bar(min(steps_per_epoch, total - run.step), f"epoch {epoch}/{epochs}", progress and rank == 0)
            record = {"epoch": epoch, **run.epoch(bar)}
            if evaluate_each_epoch:
                ev = evaluate(model, ds, device=dev)
                record["test_loss"], record["test_accuracy"] = ev.loss, ev.accuracy
            history.epochs.append(record)
            log.info("epoch %d: %s", epoch, record)
            if on_epoch is not None:
                on_epoch(record)
    return history


class _Run:
    """The state of one ``fit``: what an epoch needs and the step count so far."""

    def __init__(self, model: nn.Module, ds: MNIST, optimizer: torch.optim.Optimizer, scheduler: Any,
                 dev: torch.device, batch_size: int, total: int, rank: int, world: int, label_smoothing: float,
                 gen: torch.Generator) -> None:
        self.model, self.ds, self.optimizer, self.scheduler = model, ds, optimizer, scheduler
        self.dev, self.batch_size, self.total, self.gen = dev, batch_size, total, gen
        self.world, self.label_smoothing = world, label_smoothing
        local = math.ceil(batch_size / world)  # each rank trains on its slice of every global batch
        self.lo, self.hi = rank * local, min((rank + 1) * local, batch_size)
        self.step = 0
        # MLPs of Linears and ReLUs: the same gradients without the autograd engine (see .chain)
        self.chain = LinearChain.of(model) if world == 1 else None
        if self.chain is not None:
            _check_class_count(self.chain.layers[-1][0].out_features)
        self.dtype = input_dtype(model)  # a float64 or bfloat16 model trains in its own dtype
        self.optimizer_step = AdamSteps(optimizer)
        self.last_lr = float(optimizer.param_groups[0]["lr"])

    def epoch(self, bar: Any) -> dict[str, Any]:
        """Train one epoch (or up to the step budget); its record, less the test figures."""
        self.model.train()
        t0 = time.perf_counter()
        n = len(self.ds.train)
        order = torch.randperm(n, generator=self.gen).to(self.dev)
        # each step's logits go into one epoch-long buffer on the device, and its rows' indices (views
        # of ``order``) are kept: loss and hits are counted once at the end of the epoch, with no host
        # sync and none of their small ops per step. (Keeping each step's own small logits tensor
        # instead scatters them among the step's big temporaries and costs 20-80 MB of RSS.)
        logits: torch.Tensor | None = None
        indices: list[torch.Tensor] = []
        rows = 0
        for idx in order.split(self.batch_size):
            if self.step >= self.total:
                break
            if self.world > 1:
                idx = idx[self.lo : self.hi]
            out, loss = self._batch(idx, loss=bar is not None)
            if logits is None:
                logits = out.new_empty((n, *out.shape[1:]))
            logits[rows : rows + out.shape[0]].copy_(out)
            rows += out.shape[0]
            indices.append(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
        if bar is not None:
            bar.close()
        stats = self._stats(logits, indices, rows)
        if self.world > 1:
            torch.distributed.all_reduce(stats)
        seconds = time.perf_counter() - t0
        loss_sum, correct, count = (float(v) for v in stats.cpu())
        return {"steps": self.step, "train_loss": loss_sum / max(count, 1),
                "train_accuracy": 100.0 * correct / max(count, 1), "test_loss": None, "test_accuracy": None,
                "lr": float(self.last_lr), "seconds": seconds}

    def _batch(self, idx: torch.Tensor, *, loss: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step on the rows ``idx``: ``(logits, loss)``, detached; the loss only when
        asked for (the hand-written chain step can leave it out)."""
        x, y = self.ds.train.batch(idx)
        x = x.to(self.dtype)
        if self.chain is not None:
            out, value = self.chain.step(x, y, self.label_smoothing, loss=loss)
        else:
            out = self.model(x)
            if self.step == 0:  # before the first loss and update
                check_classes(out)
            value = F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            value.backward()
            value = value.detach()
        self.optimizer_step()
        self.last_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        return out.detach(), value

    def _stats(self, logits: torch.Tensor | None, indices: list[torch.Tensor], rows: int) -> torch.Tensor:
        """``[summed loss, correct rows, rows]`` (float64, on the device) of an epoch's steps: the
        training loss (label smoothing included) of each row, from the logits its step computed
        (the first ``rows`` of ``logits``, for the training rows ``indices``)."""
        if logits is None or not rows:
            return torch.zeros(3, dtype=torch.float64, device=self.dev)
        with torch.no_grad():
            out, y = logits[:rows], self.ds.train.labels.index_select(0, torch.cat(indices))
            loss_sum = F.cross_entropy(out.double(), y, label_smoothing=self.label_smoothing, reduction="sum")
            correct = (out.argmax(1) == y).sum().double()
        return torch.stack([loss_sum, correct, torch.tensor(float(rows), dtype=torch.float64, device=self.dev)])


def fit_recipe(
    model: nn.Module,
    data: MNIST | str | os.PathLike[str] | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
    **kwargs: Any,
) -> History:
    """``fit`` with the options of a ``Recipe``; keyword arguments that name a recipe field
    (``seed=3``, ``epochs=1``) override the recipe's, the others go to ``fit`` as they are."""
    if not isinstance(recipe, Recipe):
        raise UsageError(f"recipe must be a fxlab.train.Recipe, got {type(recipe).__name__}: "
                         "write Recipe(epochs=..., ...)")
    fields = {f.name for f in dataclasses.fields(Recipe)}
    recipe = dataclasses.replace(recipe, **{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
    return fit(model, data, epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
               schedule=recipe.schedule, weight_decay=recipe.weight_decay, label_smoothing=recipe.label_smoothing,
               threads=recipe.threads, seed=recipe.seed, **kwargs)


