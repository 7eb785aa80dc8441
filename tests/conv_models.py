"""Small conv nets for the conv passes' tests (fxlab's own CNN models live in fxlab.models)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seed_helpers import randomize_batchnorm


class LeNet(nn.Module):
    """LeNet-like: Conv2d → BatchNorm2d → ReLU → MaxPool twice, then Linears with ReLUs and Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop2d = nn.Dropout2d(0.2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.drop = nn.AlphaDropout(0.1)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(self.drop2d(x), 1)
        x = torch.relu(self.fc1(x))
        x = self.drop(self.fc2(x).relu_())
        return self.fc3(x)


class MnistCNN(nn.Module):
    """The PyTorch-examples MNIST CNN shape: two 3×3 convs (one output read twice), functional dropouts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        x = F.relu(h) + 0.1 * h  # conv1's output has 2 users: not fused
        x = F.dropout2d(torch.relu_(self.conv2(x)), 0.25, training=self.training)
        return self.fc(torch.flatten(F.dropout(x, 0.5, training=self.training), 1))


class Conv1dNet(nn.Module):
    """Conv1d variants: Conv1d → BatchNorm1d → ReLU (nn.Sequential), a Dropout1d, a shared BatchNorm input."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.BatchNorm1d(4), nn.ReLU())
        self.conv = nn.Conv1d(4, 8, 3, dilation=2, groups=2)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout1d(0.3)
        self.head = nn.Linear(8 * 780, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.flatten(x, 2))  # (N, 1, 28, 28) → (N, 1, 784)
        h = self.conv(x)
        x = self.drop(self.bn(h)).relu() + h.mean()  # conv's output has 2 users: bn not folded
        return self.head(torch.flatten(x, 1))


CONV_MODELS = {"lenet": LeNet, "mnist-cnn": MnistCNN, "conv1d-net": Conv1dNet}


def conv_model(name: str) -> nn.Module:
    """A test conv net in eval mode with random BatchNorm statistics (seeded)."""
    torch.manual_seed(0)
    return randomize_batchnorm(CONV_MODELS[name]()).eval()
