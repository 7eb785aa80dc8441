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

import os
import time
from typing import Any

import torch
from torch import nn

from .. import data as mnist_data
from .._util import default_device, model_device
from .checkpoints import CHECKPOINT_FORMAT, checkpoint_path, load_checkpoint, pretrained, save_checkpoint
from .loop import evaluate, fit, fit_recipe
from .recipe import DEFAULT_RECIPE, Evaluation, History, Recipe
from .runtime import init_distributed, peak_memory_mb

__all__ = [
    "CHECKPOINT_FORMAT", "DEFAULT_RECIPE", "Evaluation", "History", "Recipe", "checkpoint_path", "default_device",
    "evaluate", "fit", "fit_recipe", "init_distributed", "load_checkpoint", "model_device", "peak_memory_mb",
    "pretrained", "save_checkpoint",
]


def _seed_datasets(root: str | os.PathLike[str] | None, train: bool) -> Any:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mnist_data.MEAN,), (mnist_data.STD,))])
    return datasets.MNIST(str(mnist_data.resolve_root(root)), train=train, transform=tf, download=False)


def seed_style_epoch(model: nn.Module, root: str | os.PathLike[str] | None = None, *, batch_size: int = 64,
                     lr: float = 1e-3, device: str | torch.device = "cpu") -> float:
    """One training epoch exactly as the seeds do it (torchvision ToTensor + Normalize, DataLoader of
    batch 64 shuffled, Adam lr 1e-3, cross-entropy); returns its wall time in seconds."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_seed_datasets(root, True), batch_size=batch_size, shuffle=True)
    model.to(device).train()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def seed_style_evaluate(model: nn.Module, root: str | os.PathLike[str] | None = None, *, batch_size: int = 64,
                        device: str | torch.device = "cpu") -> tuple[float, float]:
    """The seeds' evaluation loop (DataLoader of batch 64 under ``no_grad``); returns (accuracy %, seconds)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_seed_datasets(root, False), batch_size=batch_size, shuffle=True)
    model.to(device).eval()
    correct = total = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            _, pred = torch.max(model(x), dim=1)
            correct += int((pred == y).sum())
            total += pred.size(0)
    return 100.0 * correct / total, time.perf_counter() - t0
