"""Model classes as the seeds define them, importable by name so that ``torch.save(model)`` files
made in the tests load with ``--trust`` (tests/ is on sys.path under pytest; subprocesses get it
through PYTHONPATH)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MyMNIST(nn.Module):
    """Seed 003, as written there (flattening with view, GELU, setattr-registered layers)."""

    IMG_SIZE = 28 * 28

    def __init__(self, hidden_layers=(256, 32)) -> None:
        super().__init__()
        self._hidden_layers = []
        input_size = self.IMG_SIZE
        for i, node_num in enumerate(hidden_layers):
            layer = nn.Linear(input_size, node_num)
            self._hidden_layers.append(layer)
            setattr(self, "_hidden_layer_" + str(i), layer)
            input_size = node_num
        self._output_layer = nn.Linear(input_size, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, self.IMG_SIZE)
        for layer in self._hidden_layers:
            x = F.gelu(layer(x))
        return self._output_layer(x)


class NeuralNetwork(nn.Module):
    """Seed 004's class (Flatten + Sequential 784→312→256→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(28 * 28, 312), nn.ReLU(), nn.Linear(312, 256), nn.ReLU(), nn.Linear(256, 10)
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the seed's name
        return self.linear_relu_stack(self.flatten(input))


class Payload:
    """A hostile pickle: unpickling it creates ``path`` (so a test can tell whether it ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class SystemPayload:
    """A hostile pickle through os.system."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


class ReducePayload:
    """A hostile pickle whose ``__reduce__`` returns any callable with its arguments (set in tests)."""

    def __init__(self, fn, args) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self):
        return (self.fn, self.args)
