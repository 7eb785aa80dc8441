"""Fused modules: one module where the original graph had several nodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import LeafModule

__all__ = ["LinearReLU"]


class LinearReLU(nn.Linear, LeafModule):
    """``relu(linear(x))`` as one module, printed ``LinearReLU(784→128)``.

    It is an ``nn.Linear`` with ``nn.Linear``'s parameter names (``weight``, ``bias``), so
    anything that handles a Linear (state dicts, quantization) handles it, and then applies a
    ReLU. ``fuse-linear-relu`` builds it with :meth:`from_linear`, sharing the Linear's
    parameters.

    The forward is one module call where there were two: ``F.linear`` (``addmm`` for 2-D input)
    and the ReLU in place on its fresh result, so no second output tensor is allocated; autograd
    stays correct (the linear's backward never reads its output) and exported graphs hold a
    plain ``linear`` + ``relu_``.

    >>> import torch
    >>> from fxlab.nn import LinearReLU
    >>> lin = torch.nn.Linear(4, 3)
    >>> fused = LinearReLU.from_linear(lin)
    >>> fused
    LinearReLU(4→3)
    >>> x = torch.randn(2, 4)
    >>> torch.equal(fused(x), torch.relu(lin(x)))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(F.linear(x, self.weight, self.bias))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> LinearReLU:
        """A ``LinearReLU`` computing ``relu(linear(x))`` that shares ``linear``'s parameters.

        Nothing is initialised or copied: the new module holds the very ``weight`` and ``bias``
        ``Parameter`` objects of ``linear`` (so training either trains both).
        """
        fused = cls.__new__(cls)  # nothing to initialise: the parameters are linear's
        nn.Module.__init__(fused)
        fused.in_features, fused.out_features = linear.in_features, linear.out_features
        fused.weight = linear.weight
        fused.register_parameter("bias", linear.bias)
        fused.train(linear.training)
        return fused

    def extra_repr(self) -> str:
        bias = "" if self.bias is not None else ", bias=False"
        return f"{self.in_features}→{self.out_features}{bias}"
