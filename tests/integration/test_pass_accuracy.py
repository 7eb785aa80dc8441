"""Passes on trained seed models, judged on real MNIST: exact passes keep every prediction, quantization
stays within its accuracy budget."""

from __future__ import annotations

import pytest
import torch

import fxlab
import fxlab.nn.quantized as quantized_nn
from fxlab.passes import QuantizeLinear
from fxlab.passes.quantize import MODES
from fxlab.train import evaluate
from seed_helpers import assert_close

MODE_NAMES = list(MODES)
BUDGETS = {"dynamic": 0.3, "weight-only": 0.3, "static": 0.5, "bf16": 0.1, "fp16": 0.1,
           "int4": 0.5, "int8-int4": 0.5, "fp8": 0.1, "int2": 10.0}


@pytest.fixture
def int8_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every Int8DynamicLinear call take the int8 path (thresholds at 0)."""
    monkeypatch.setattr(quantized_nn, "CPU_MIN_WORK", 0)


def test_real_mnist_argmax_agrees_after_exact_pipeline(trained, mnist) -> None:
    model = trained["simplenn"]
    gm = fxlab.apply(model, "fold-batchnorm,remove-dropout,fuse-linear-relu,fuse-consecutive-linear,cse,dce")
    images = mnist.test.images[:2000]
    with torch.no_grad():
        expected, actual = model(images), gm(images)
    assert_close(actual, expected)
    assert torch.equal(actual.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("model_name", ["mymodule", "simplenn"])
@pytest.mark.parametrize("mode", [*MODE_NAMES, "dynamic, int8 everywhere"])
def test_accuracy_drop_within_budget(request, trained, mnist, model_name: str, mode: str) -> None:
    if mode.endswith("int8 everywhere"):  # the scheme itself, whatever the kernel choice
        request.getfixturevalue("int8_everywhere")
        mode = "dynamic"
    model = trained[model_name]
    calibration = [mnist.train.images[i : i + 256] for i in range(0, 1024, 256)]
    p = QuantizeLinear(mode=mode, calibration=calibration if mode == "static" else None)
    assert p.budget == BUDGETS[mode]
    gm = fxlab.apply(model, [p])
    base, after = trained.accuracy(model_name), evaluate(gm, mnist).accuracy
    assert base - after <= p.budget, f"{mode} on {model_name}: {base:.2f}% → {after:.2f}%"
