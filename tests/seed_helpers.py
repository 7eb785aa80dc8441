"""Helpers shared by the pass tests: seed models with real BatchNorm statistics, closeness, state."""

from __future__ import annotations

import torch
from torch import nn

from fxlab.models import build

#: One named layer of every seed model, as the seeds spell it (where insertions go).
SEED_LAYERS = {
    "mymodule": "layer3",
    "neuralnetwork": "fc1",
    "simplenn": "fc2",
    "mymnist": "_hidden_layer_1",
    "linear-relu-stack": "linear_relu_stack.4",
}


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters, so that folding really changes weights."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.normal_(0, 1)
                    m.running_var.uniform_(0.25, 4)
                if m.weight is not None:
                    m.weight.normal_(1, 0.5)
                if m.bias is not None:
                    m.bias.normal_(0, 0.5)
    return model


def seed_model(name: str) -> nn.Module:
    """A seed model in eval mode with random BatchNorm statistics."""
    return randomize_batchnorm(build(name)).eval()


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within 1e-5 relative to the scale of the expected output."""
    scale = expected.detach().abs().max().item() or 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
