"""Fused modules: one module where the original graph had several nodes."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import LeafModule

__all__ = ["LinearReLU"]

#: Below this many multiply-adds a call (batch × in × out), ``addmm`` wins: oneDNN costs about
#: 15 µs a call more. Above it, oneDNN with a pre-packed weight is 5-20 % faster on this
#: project's CPUs (AMD EPYC, AVX-512), e.g. 784→128 at batch 256: 490 µs vs 550 µs, one thread.
ONEDNN_MIN_MACS = 1 << 23

# module -> ((data_ptr, version, shape) of the weight it was packed from, packed weight).
# Kept outside the module so that deepcopy, pickling and state dicts never see it.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int, tuple[int, ...]], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def _onednn_available() -> bool:
    try:
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        )
    except Exception:  # a torch without these private ops: use addmm everywhere
        return False


_ONEDNN = _onednn_available()


class LinearReLU(nn.Linear, LeafModule):
    """``relu(linear(x))`` as one module, printed ``LinearReLU(784→128)``.

    It is an ``nn.Linear`` with ``nn.Linear``'s parameter names (``weight``, ``bias``), so
    anything that handles a Linear (state dicts, quantization) handles it, and then applies a
    ReLU. ``fuse-linear-relu`` builds it with :meth:`from_linear`, sharing the Linear's
    parameters.

    The forward is one module call where there were two. With autograd (training) and on small
    inputs it runs ``F.linear`` and the ReLU in place on its fresh result: no second output
    tensor, and autograd stays correct (the linear's backward never reads its output). In
    inference on CPU (no gradient needed, float32, 2-D input, at least ``ONEDNN_MIN_MACS``
    multiply-adds) it runs oneDNN's linear with the ReLU fused and the weight packed once for
    oneDNN (repacked when the weight changes); never while being traced, compiled or exported,
    so exported graphs hold a plain ``linear`` + ``relu``.

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
        if (
            _ONEDNN
            and not torch.compiler.is_compiling()  # before looking at shapes: no guards on the batch size
            and type(x) is torch.Tensor  # not a FakeTensor (export), proxy or other subclass
            and x.dim() == 2
            and x.shape[0] * self.in_features * self.out_features >= ONEDNN_MIN_MACS
        ):
            if self._onednn_applies(x):
                return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "relu", [], "")
        return torch.relu_(F.linear(x, self.weight, self.bias))

    def _onednn_applies(self, x: torch.Tensor) -> bool:
        weight, bias = self.weight, self.bias
        return (
            x.dtype is torch.float32
            and weight.dtype is torch.float32
            and x.device.type == "cpu"
            and weight.device.type == "cpu"
            and x.is_contiguous()
            and torch.backends.mkldnn.enabled
            and not (
                torch.is_grad_enabled()
                and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
            )
            and not torch.jit.is_tracing()
        )

    def _packed_weight(self) -> torch.Tensor:
        weight = self.weight
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        cached = _PACKED.get(self)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
            _PACKED[self] = cached
        return cached[1]

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
