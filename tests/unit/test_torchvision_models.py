"""torchvision's CNNs (random weights: nothing downloads) through fxlab's exact conv pipeline.

Each model is traced once (by ``fxlab.apply``), goes through fold-batchnorm, remove-dropout,
fuse-conv-relu, fuse-linear-relu, swap-max-pool, dce and cse, and computes what it computed (within
float rounding: folding BatchNorm reorders arithmetic); ``fxlab.render`` renders the result.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxlab
from seed_helpers import randomize_batchnorm
from fxlab.nn import ConvReLU, MeasuredMaxPool2d

models = pytest.importorskip("torchvision.models")

PIPELINE = "fold-batchnorm,remove-dropout,fuse-conv-relu,fuse-linear-relu,swap-max-pool,dce,cse"

#: model → input size (small, but big enough for each model's downsampling)
MODELS = {
    "resnet18": (1, 3, 64, 64),
    "mobilenet_v2": (1, 3, 64, 64),
    "efficientnet_b0": (1, 3, 64, 64),
    "vgg11": (1, 3, 32, 32),
    "squeezenet1_1": (1, 3, 64, 64),
}


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_model_through_the_exact_conv_pipeline(name: str) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(getattr(models, name)(weights=None)).eval()
    x = torch.randn(MODELS[name])
    with torch.inference_mode():
        expected = model(x)
        gm = fxlab.apply(model, PIPELINE)
        actual = gm(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)
    records = {r.name: r for r in fxlab.records(gm)}
    assert len(records["fold-batchnorm"].rewritten) == count(model, nn.BatchNorm2d)  # every BatchNorm folded
    assert count(gm, nn.BatchNorm2d) == 0
    assert count(gm, nn.Dropout) == 0
    if name in ("resnet18", "vgg11", "squeezenet1_1"):  # nn.ReLU after convs (mobilenet: ReLU6, efficientnet: SiLU)
        assert count(gm, ConvReLU) == len(records["fuse-conv-relu"].rewritten) > 0
    pools = records["swap-max-pool"]
    if name == "vgg11":  # five MaxPool2d(2, 2): all swapped
        assert len(pools.rewritten) == count(gm, MeasuredMaxPool2d) == 5
    if name in ("resnet18", "squeezenet1_1"):  # padding=1 / ceil_mode=True: left alone, with the reason
        assert pools.rewritten == [] and pools.skipped and count(gm, MeasuredMaxPool2d) == 0
        assert all("torch's max-pool is the only kernel" in why for _, why in pools.skipped)
    text = fxlab.render(gm, "graph")
    assert "BatchNorm2d" not in text
    if name == "resnet18":
        assert "Conv2dReLU(3→64, k=7, stride=2, pad=3, bias=False)" not in text  # folded: it has a bias now
        assert "conv1:Conv2dReLU(3→64, k=7, stride=2, pad=3)" in text
        assert fxlab.render(gm, "table", example_input=x)
