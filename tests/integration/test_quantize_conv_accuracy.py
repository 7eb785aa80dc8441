"""quantize-conv on a small CNN trained briefly on real MNIST: each mode within its accuracy budget
(quantize-linear's budget for the same mode), alone and with quantize-linear after it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxlab
from fxlab.passes import QuantizeConv, QuantizeLinear
from fxlab.passes.quantize import CONV_MODES
from fxlab.train import evaluate, fit


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


@pytest.fixture(scope="module")
def lenet(mnist) -> tuple[nn.Module, float]:
    torch.manual_seed(0)
    model = LeNet()
    fit(model, mnist, epochs=1, max_steps=300, seed=0, progress=False, evaluate_each_epoch=False)
    model.eval()
    return model, evaluate(model, mnist, batch_size=1000).accuracy


@pytest.mark.parametrize("mode", list(CONV_MODES))
def test_accuracy_drop_within_budget(lenet, mnist, mode: str) -> None:
    model, base = lenet
    assert base > 95.0, f"the CNN trained to {base:.2f}% only"
    p = QuantizeConv(mode=mode)
    assert p.budget == QuantizeLinear(mode=mode).budget
    for passes in ([p], [p, QuantizeLinear(mode=mode)]):
        gm = fxlab.apply(model, passes)
        after = evaluate(gm, mnist, batch_size=1000).accuracy
        assert base - after <= p.budget, f"{fxlab.format_pipeline(passes)}: {base:.2f}% → {after:.2f}%"
