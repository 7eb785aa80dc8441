"""Fused modules: one module where the original graph had several nodes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._util import DirectCall
from ..core import LeafModule
from . import kernels
from .kernels import CacheFree, choice

__all__ = ["ConvReLU", "LinearReLU", "linear_flops"]

#: (No longer used to choose: CPU inference measures ``torch`` against ``onednn`` per shape bucket,
#: :mod:`fxlab.nn.kernels.choice`. Kept for code that reads them.)
PACKED_MIN_MACS = 16 * 2**20
PACKED_MIN_ROWS = 1024
_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _linear_relu_torch(m: LinearReLU, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.relu_(F.linear(x, weight, bias))


def _linear_relu_onednn(m: LinearReLU, x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    packed = kernels.onednn_packed(m, weight, x.shape[0])
    if packed is None:  # an inference tensor: its in-place changes could not be seen
        return _linear_relu_torch(m, x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "relu", [], "")


def _float_sum_bound(m: LinearReLU, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What float32 sums in another order may change: 2·K·2⁻²⁴ of Σ|x||w| (+|b|), elementwise."""
    mags = F.linear(x.abs(), weight.detach().abs(), bias.detach().abs() if bias is not None else None)
    return mags * (2 * x.shape[1] * 2.0**-24) + 1e-30


LINEAR_RELU_OP = choice.Op("linear-relu", [
    choice.Candidate("torch", _linear_relu_torch, note="addmm, then relu_ in place"),
    choice.Candidate("onednn", _linear_relu_onednn, lambda: _MKLDNN,
                     "oneDNN's packed Linear+ReLU missing in this torch build"),
], bound=_float_sum_bound)


def linear_flops(input_shape: Sequence[int], in_features: int, out_features: int) -> int:
    """FLOPs of a Linear's matrix multiply on an input of ``input_shape`` (…, in_features): a
    multiply-add counts 2, as in torch's ``FlopCounterMode``; bias and activation count 0.

    >>> linear_flops((1, 784), 784, 128)
    200704
    """
    rows = 1
    for d in input_shape[:-1]:
        rows *= int(d)
    return 2 * rows * in_features * out_features


class LinearReLU(DirectCall, CacheFree, nn.Linear, LeafModule):
    """``relu(linear(x))`` as one module, printed ``LinearReLU(784→128)``.

    It is an ``nn.Linear`` with ``nn.Linear``'s parameter names (``weight``, ``bias``), so
    anything that handles a Linear (state dicts, quantization) handles it, and then applies a
    ReLU. ``fuse-linear-relu`` builds it with :meth:`from_linear`, sharing the Linear's
    parameters.

    The forward is one module call where there were two: ``F.linear`` (``addmm`` for 2-D input)
    and the ReLU in place on its fresh result, so no second output tensor is allocated; autograd
    stays correct (the linear's backward never reads its output) and exported graphs hold a
    plain ``linear`` + ``relu_``. CPU inference calls run whichever of that and oneDNN's fused
    Linear+ReLU on a pre-packed copy of the weight was measured faster for their shape
    (:mod:`fxlab.nn.kernels.choice`, op ``linear-relu``).

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
        weight, bias = self.weight, self.bias
        # 2-D float32 inference (choose() checks the rest: a plain contiguous CPU input, no graph capture)
        if x.dtype is torch.float32 and x.dim() == 2 and not (weight.requires_grad and torch.is_grad_enabled()):
            c = choice.choose(LINEAR_RELU_OP, self, x, weight.shape[0], weight, bias)
            if c is not None:
                return c.fn(self, x, weight, bias)
        return torch.relu_(F.linear(x, weight, bias))

    def flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs of one forward on an input of ``input_shape``, whichever path runs (the oneDNN
        one is invisible to torch's ``FlopCounterMode``): :func:`linear_flops`."""
        return linear_flops(input_shape, self.in_features, self.out_features)

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


_CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class ConvReLU(DirectCall, nn.modules.conv._ConvNd, LeafModule):
    """``relu(conv(x))`` as one module for a Conv1d/2d/3d, printed ``Conv2dReLU(1→6, k=5, pad=2)``.

    It is a ``_ConvNd`` with the convolution's attributes and parameter names (``weight``,
    ``bias``), so state dicts and anything that reads a convolution's settings handle it.
    ``fuse-conv-relu`` builds it with :meth:`from_conv`, sharing the convolution's parameters.

    The forward is the convolution and the ReLU in place on its fresh output (no second tensor).
    oneDNN's fused convolution+ReLU (``torch.ops.mkldnn._convolution_pointwise``) was measured
    side by side on LeNet- and MNIST-CNN-sized layers on this CPU: 1.01-1.04× at batch 256 (within
    noise) and 0.4-0.9× at batch 1, so it is not used; ``F.conv2d`` already runs oneDNN on CPU.

    >>> import torch
    >>> from fxlab.nn import ConvReLU
    >>> conv = torch.nn.Conv2d(1, 6, 5, padding=2)
    >>> fused = ConvReLU.from_conv(conv)
    >>> fused
    Conv2dReLU(1→6, k=5, pad=2)
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.equal(fused(x), torch.relu(conv(x)))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = _CONV_FUNCTIONS[len(self.kernel_size)]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding: object = (0,) * len(self.kernel_size)
        else:
            padding = self.padding
        return torch.relu_(conv(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups))

    @classmethod
    def from_conv(cls, conv: nn.modules.conv._ConvNd) -> ConvReLU:
        """A ``ConvReLU`` computing ``relu(conv(x))`` that shares ``conv``'s parameters (the very
        ``Parameter`` objects: nothing is initialised or copied)."""
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        for key in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                    "transposed", "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(fused, key, getattr(conv, key))
        fused.weight = conv.weight
        fused.register_parameter("bias", conv.bias)
        fused.train(conv.training)
        return fused

    def _get_name(self) -> str:
        return f"Conv{len(self.kernel_size)}dReLU"

    def extra_repr(self) -> str:
        def short(t: tuple) -> object:
            return t[0] if len(set(t)) == 1 else t

        parts = [f"{self.in_channels}→{self.out_channels}", f"k={short(self.kernel_size)}"]
        n = len(self.kernel_size)
        if tuple(self.stride) != (1,) * n:
            parts.append(f"stride={short(self.stride)}")
        if isinstance(self.padding, str):
            parts.append(f"pad={self.padding}")
        elif tuple(self.padding) != (0,) * n:
            parts.append(f"pad={short(self.padding)}")
        if tuple(self.dilation) != (1,) * n:
            parts.append(f"dilation={short(self.dilation)}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)
