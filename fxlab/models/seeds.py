"""The seed MLPs, by name, with the seeds' exact attribute (and so state-dict key) names.

Every model takes MNIST batches of shape (N, 1, 28, 28); where a seed's model expected the
caller to flatten, ours flattens inside ``forward`` without adding any parameter.

Each seed model says what it is: ``model.fxlab_arch`` is ``(name, kwargs)``, the arguments that
differ from the defaults (``fxlab.core.trace`` records it; ``fxlab.save`` names the base with it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LoadError, did_you_mean
from .base import SeedModel  # noqa: F401 - re-exported: SeedModel lived here
from .spec import construct

IMG_SIZE = 28 * 28


class MyModule(SeedModel):
    """Seed 000: layer1 784→128, ReLU, layer2 128→64, ReLU, layer3 64→10."""

    arch_name = "mymodule"

    def __init__(self) -> None:
        super().__init__()
        self._remember()
        self.layer1 = nn.Linear(IMG_SIZE, 128)
        self.layer2 = nn.Linear(128, 64)
        self.layer3 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.layer1(x))
        x = torch.relu(self.layer2(x))
        return self.layer3(x)


class NeuralNetwork(SeedModel):
    """Seed 001: fc1 input_size→50, ReLU, fc2 50→num_classes."""

    arch_name = "neuralnetwork"

    def __init__(self, input_size: int = IMG_SIZE, num_classes: int = 10) -> None:
        super().__init__()
        self._remember(input_size=input_size, num_classes=num_classes)
        self.fc1 = nn.Linear(in_features=input_size, out_features=50)
        self.fc2 = nn.Linear(in_features=50, out_features=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class SimpleNN(SeedModel):
    """Seed 002: fc1/bn1/ReLU/Dropout(0.5), fc2/bn2/ReLU/Dropout, fc3."""

    arch_name = "simplenn"

    def __init__(self, input_size: int = IMG_SIZE, hidden_size: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        self._remember(input_size=input_size, hidden_size=hidden_size, num_classes=num_classes)
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size // 2)
        self.fc3 = nn.Linear(hidden_size // 2, num_classes)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        self.bn2 = nn.BatchNorm1d(hidden_size // 2)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, IMG_SIZE)
        x = self.dropout(F.relu(self.bn1(self.fc1(x))))
        x = self.dropout(F.relu(self.bn2(self.fc2(x))))
        return self.fc3(x)


class MyMNIST(SeedModel):
    """Seed 003: hidden Linear layers registered as ``_hidden_layer_<i>``, GELU, ``_output_layer``."""

    arch_name = "mymnist"
    IMG_SIZE = IMG_SIZE

    def __init__(self, hidden_layers: Sequence[int] | None = (256, 32)) -> None:
        super().__init__()
        self._remember(hidden_layers=list(hidden_layers or ()))
        self._hidden_layers: list[nn.Linear] = []
        input_size = self.IMG_SIZE
        for i, node_num in enumerate(hidden_layers or ()):
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


class LinearReluStack(SeedModel):
    """Seed 004 (its class is also called ``NeuralNetwork``): Flatten + Sequential 784→312→256→10."""

    arch_name = "linear-relu-stack"

    def __init__(self) -> None:
        super().__init__()
        self._remember()
        self.flatten = nn.Flatten()
        self.linear_relu_stack = nn.Sequential(
            nn.Linear(IMG_SIZE, 312),
            nn.ReLU(),
            nn.Linear(312, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the seed's name
        x = self.flatten(input)
        return self.linear_relu_stack(x)


#: The seed MLPs (seeds 000-004), by name.
SEED_MODELS: dict[str, Callable[..., SeedModel]] = {
    "mymodule": MyModule,
    "neuralnetwork": NeuralNetwork,
    "simplenn": SimpleNN,
    "mymnist": MyMNIST,
    "linear-relu-stack": LinearReluStack,
}

from .cnn import CNN_MODELS  # noqa: E402 - after SEED_MODELS, so that the registry reads in order

#: Every built-in model by name: the seed MLPs, then the CNNs people have next to them.
MODELS: dict[str, Callable[..., SeedModel]] = {**SEED_MODELS, **CNN_MODELS}


def names() -> list[str]:
    """The names of fxlab's built-in models: the seed MLPs, then the CNNs (``mnist-cnn``, ``lenet5``)."""
    return list(MODELS)


def seed_names() -> list[str]:
    """The names of the seed MLPs only (seeds 000-004)."""
    return list(SEED_MODELS)


def build(name: str, **kwargs: object) -> SeedModel:
    """A fresh, randomly initialised built-in model (a seed MLP or a CNN).

    An unknown name, or arguments its constructor refuses, raise ``LoadError`` (as ``build_arch``).

    >>> from fxlab.models import build
    >>> [n for n, _ in build("linear-relu-stack").named_parameters()][:2]
    ['linear_relu_stack.0.weight', 'linear_relu_stack.0.bias']
    """
    if not isinstance(name, str) or name not in MODELS:
        near = did_you_mean(name, MODELS) if isinstance(name, str) else ""
        raise LoadError(f"unknown model {name!r}{near}; known models: {', '.join(MODELS)}")
    return construct(MODELS[name], kwargs, repr(name))
