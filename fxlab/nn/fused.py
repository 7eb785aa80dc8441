"""Fused modules: one module where the original graph had several nodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import LeafModule

__all__ = ["LinearReLU"]


class LinearReLU(nn.Linear, LeafModule):
    """``relu(linear(x))`` as one module; its parameters keep ``nn.Linear``'s names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.linear(x, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.out_features}"
