"""A user's own model module, for the tests of ``--model package.module:Class`` (tests/ is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A small MLP of the user's own: ``body`` 784→hidden, ReLU, ``head`` hidden→10."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Linear(784, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(torch.flatten(x, 1))))


def not_a_class() -> int:
    return 3


class NotAModule:
    pass
