"""The CNNs people have next to the seed MLPs, with their exact layer (and so state-dict key) names.

Not from the seeds: these are the convolutional MNIST models people bring along, so that their
state dicts load strictly and a bare one is recognised by its keys and shapes.

- ``mnist-cnn`` (:class:`MnistCNN`): the classic PyTorch MNIST example net
  (``pytorch/examples/mnist/main.py``): two 3×3 convolutions, max-pool, dropout, two Linears,
  ``log_softmax`` output.
- ``lenet5`` (:class:`LeNet5`): LeNet-5 with BatchNorm after each convolution.

Both take MNIST batches of shape (N, 1, 28, 28) and say what they are in ``fxlab_arch``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import SeedModel

__all__ = ["CNN_MODELS", "LeNet5", "MnistCNN"]


class MnistCNN(SeedModel):
    """The PyTorch MNIST example net: conv1 1→32 3×3, ReLU, conv2 32→64 3×3, ReLU, max-pool 2,
    dropout1, flatten, fc1 9216→128, ReLU, dropout2, fc2 128→10, log_softmax.

    >>> MnistCNN()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    arch_name = "mnist-cnn"

    def __init__(self) -> None:
        super().__init__()
        self._remember()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class LeNet5(SeedModel):
    """LeNet-5 with BatchNorm: conv1 1→6 5×5 (padding 2), bn1, ReLU, max-pool 2, conv2 6→16 5×5,
    bn2, ReLU, max-pool 2, flatten, fc1 400→120, ReLU, fc2 120→84, ReLU, fc3 84→10.

    >>> LeNet5()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    arch_name = "lenet5"

    def __init__(self) -> None:
        super().__init__()
        self._remember()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


#: The built-in CNNs, by name.
CNN_MODELS: dict[str, Callable[..., SeedModel]] = {"mnist-cnn": MnistCNN, "lenet5": LeNet5}
