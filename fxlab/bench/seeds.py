"""The seeds' own data pipeline and loops, written once, for side-by-side benchmarks and checks.

Seed 001's way: torchvision MNIST with ``ToTensor`` + ``Normalize(0.1307, 0.3081)`` through a
``DataLoader`` of batch 64 (shuffled for training, ``num_workers=0``), Adam lr 1e-3 and
cross-entropy, every batch moved to the device as it comes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .. import data as fxdata
from .._util import eval_mode


def seed_datasets(root: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """(train, test) torchvision MNIST datasets with the seeds' transform; never downloads."""
    import torchvision
    import torchvision.transforms as transforms

    folder = str(fxdata.resolve_root(root))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((fxdata.MEAN,), (fxdata.STD,))])
    train = torchvision.datasets.MNIST(folder, train=True, download=False, transform=transform)
    test = torchvision.datasets.MNIST(folder, train=False, download=False, transform=transform)
    return train, test


def seed_loaders(root: str | os.PathLike[str] | None = None, batch_size: int = 64, train_limit: int | None = None,
                 test_limit: int | None = None) -> tuple[Any, Any]:
    """The seeds' (train, test) DataLoaders, optionally cut to their first ``*_limit`` images."""
    train, test = seed_datasets(root)
    if train_limit:
        train = torch.utils.data.Subset(train, range(train_limit))
    if test_limit:
        test = torch.utils.data.Subset(test, range(test_limit))
    return (
        torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True),
        torch.utils.data.DataLoader(test, batch_size=batch_size, shuffle=False),
    )


def seed_epoch(model: nn.Module, loader: Any, device: str | torch.device = "cpu", lr: float = 1e-3) -> None:
    """One epoch of the seeds' loop: Adam, cross-entropy, per-batch ``.to(device)``; leaves ``model`` training."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for data, labels in loader:
        data, labels = data.to(device), labels.to(device)
        loss = criterion(model(data), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def seed_evaluate(model: nn.Module, loader: Any, device: str | torch.device = "cpu") -> float:
    """The seeds' evaluation loop under ``no_grad``, in eval mode; returns accuracy in percent.

    Every submodule's mode is restored afterwards.
    """
    correct = total = 0
    with torch.no_grad(), eval_mode(model):
        for data, labels in loader:
            data, labels = data.to(device), labels.to(device)
            _, predictions = torch.max(model(data), dim=1)
            correct += int((predictions == labels).sum())
            total += predictions.size(0)
    return 100.0 * correct / total
