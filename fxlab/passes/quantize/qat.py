"""Quantization-aware training: fine-tune through the quantizer, then convert.

``QuantizeLinear(mode=..., qat_epochs=E, data=mnist)`` (pipeline text: ``qat_epochs=E``; data in
Python, or from ``fxlab.verify``) runs three steps on its own copy of the model:

1. each selected Linear becomes a :class:`FakeQuantLinear` holding that very Linear: its forward
   computes with the weight (and, for modes that quantize activations, the input) exactly as the
   target mode's module will — the same codes and scales, in differentiable float ops — and its
   backward passes gradients straight through the rounding (``w + (q(w) - w).detach()``);
2. the model is fine-tuned on MNIST train for ``E`` epochs by ``fxlab.train.fit`` (Adam, one-cycle,
   the fine-tuning recipe of ``fxlab.verify``'s retraining; a fraction trains that share of one
   epoch's batches);
3. the Linears (with their trained weights) go back in place and the mode's handler converts them,
   as without QAT.

A fake quantizer is registered per config type (:func:`register_fake_quant`), like the handlers:
int4, int8-int4, int2, fp8, int8 dynamic and weight-only.

>>> import torch
>>> from fxlab.passes.quantize.configs import MODES
>>> fq = FakeQuantLinear.wrap(torch.nn.Linear(784, 10), MODES["int4"])
>>> fq
FakeQuantLinear(784→10, int4, group=32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..._util import DirectCall, model_device, set_submodule
from ...core import LeafModule
from ...errors import PassError
from ...nn.fused import LinearReLU
from ...nn.lowbit import fake_quantize_weight
from ...nn.quantized import _EPS, quantize_weight
from .configs import (
    Float8WeightConfig,
    Int2WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8Int4Config,
    Int8WeightOnlyConfig,
    QuantConfig,
)

__all__ = ["FakeQuant", "FakeQuantLinear", "fake_quant_for", "has_fake_quant", "register_fake_quant", "train_quantized"]

#: ``(weight → the weight the target module computes with, whether activations are int8 per row, label)``
FakeQuant = tuple[Callable[[Tensor], Tensor], bool, str]
_FAKE_QUANT: dict[type, Callable[[Any], FakeQuant]] = {}


def register_fake_quant(config_type: type) -> Callable[[Callable[[Any], FakeQuant]], Callable[[Any], FakeQuant]]:
    """Decorator: ``fn(config) -> (weight_fn, int8_rows, label)`` fakes configs of ``config_type``."""

    def decorate(fn: Callable[[Any], FakeQuant]) -> Callable[[Any], FakeQuant]:
        _FAKE_QUANT[config_type] = fn
        return fn

    return decorate


def has_fake_quant(config: QuantConfig) -> bool:
    """Whether quantization-aware training exists for ``config``'s type."""
    return type(config) in _FAKE_QUANT


def fake_quant_for(config: QuantConfig) -> FakeQuant:
    """The fake quantizer of ``config``; a config without one is a ``PassError``: static int8 (its
    scales come from calibration) and bf16 / fp16 (whose native GEMMs round activations where the
    CPU has them: nothing to gain from training through a cast)."""
    make = _FAKE_QUANT.get(type(config))
    if make is None:
        known = ", ".join(t.__name__ for t in _FAKE_QUANT)
        raise PassError(f"quantize-linear: no quantization-aware training for {type(config).__name__}; "
                        f"it exists for {known}")
    return make(config)


def _group(config: Any) -> str:
    return f"group={config.group_size}" if config.group_size else "per-channel"


@register_fake_quant(Int4WeightOnlyConfig)
def _int4(config: Int4WeightOnlyConfig) -> FakeQuant:
    return (lambda w: fake_quantize_weight(w, "int4", config.group_size)), False, f"int4, {_group(config)}"


@register_fake_quant(Int8Int4Config)
def _int8_int4(config: Int8Int4Config) -> FakeQuant:
    return (lambda w: fake_quantize_weight(w, "int4", config.group_size)), True, f"int8-int4, {_group(config)}"


@register_fake_quant(Int2WeightOnlyConfig)
def _int2(config: Int2WeightOnlyConfig) -> FakeQuant:
    return (lambda w: fake_quantize_weight(w, "int2", config.group_size)), False, f"int2, {_group(config)}"


@register_fake_quant(Float8WeightConfig)
def _fp8(config: Float8WeightConfig) -> FakeQuant:
    return (lambda w: fake_quantize_weight(w, "fp8")), False, "fp8 e4m3"


def _int8_weight(w: Tensor) -> Tensor:
    q, scale = quantize_weight(w)
    return q.float() * scale[:, None]


@register_fake_quant(Int8DynamicConfig)
def _dynamic(config: Int8DynamicConfig) -> FakeQuant:
    return _int8_weight, True, "int8 dynamic"


@register_fake_quant(Int8WeightOnlyConfig)
def _weight_only(config: Int8WeightOnlyConfig) -> FakeQuant:
    return _int8_weight, False, "int8 weight-only"


def _straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    """``quantized`` forward, the identity backward."""
    return x + (quantized - x).detach()


def fake_int8_rows(x: Tensor) -> Tensor:
    """``x`` rounded per row to int8 codes times the row scale, as ``quantize_rows`` computes them."""
    absmax = x.detach().abs().amax(dim=1, keepdim=True).clamp_min(_EPS)
    q = torch.round(x.detach() * (absmax.reciprocal() * 127.0))
    return q * (absmax * (1 / 127))


class FakeQuantLinear(DirectCall, nn.Module, LeafModule):
    """A float Linear (or fused ``LinearReLU``) computing through a mode's quantizer, trained straight through.

    ``linear`` is the wrapped module itself (its parameters are the ones trained); ``unwrap()`` hands it back.
    """

    def __init__(self, linear: nn.Module, fake: FakeQuant) -> None:
        super().__init__()
        self.linear = linear
        self._weight_fn, self.int8_rows, self.label = fake
        self.relu = isinstance(linear, LinearReLU)

    @classmethod
    def wrap(cls, linear: nn.Module, config: QuantConfig) -> FakeQuantLinear:
        """``linear`` computing through ``config``'s quantizer."""
        return cls(linear, fake_quant_for(config))

    def unwrap(self) -> nn.Module:
        """The wrapped Linear, with whatever training did to it."""
        return self.linear

    def forward(self, x: Tensor) -> Tensor:
        linear = self.linear
        w = _straight_through(linear.weight, self._weight_fn(linear.weight))
        if self.int8_rows:
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            x = _straight_through(x2, fake_int8_rows(x2)).reshape(shape)
        y = F.linear(x, w, linear.bias)
        return torch.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return f"{self.linear.in_features}→{self.linear.out_features}, {self.label}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def train_quantized(gm: fx.GraphModule, nodes: list[fx.Node], config: QuantConfig, epochs: float, data: Any,
                    *, seed: int = 0) -> fx.GraphModule:
    """Fine-tune ``gm`` (in place) for ``epochs`` MNIST epochs with the Linears of ``nodes`` computing
    through ``config``'s fake quantizer; the Linears, trained, are back in place when it returns.

    ``data``: what ``fxlab.data.load()`` returns, or an MNIST root. Returns ``gm``.
    """
    from ...train import fit
    from ...verification.retrain import RETRAIN_BATCH, RETRAIN_LR, retrain_plan

    from ... import data as mnist_data

    fake = fake_quant_for(config)
    dataset = mnist_data.as_mnist(data, model_device(gm))
    paths = list(dict.fromkeys(str(n.target) for n in nodes))
    for path in paths:
        set_submodule(gm, path, FakeQuantLinear(gm.get_submodule(path), fake))
    was_training = gm.training
    try:
        whole, max_steps = retrain_plan(epochs, len(dataset.train), RETRAIN_BATCH)
        fit(gm, dataset, epochs=whole, lr=RETRAIN_LR, batch_size=RETRAIN_BATCH, device=model_device(gm), seed=seed,
            progress=False, max_steps=max_steps, evaluate_each_epoch=False)
    finally:
        for path in paths:
            module = gm.get_submodule(path)
            if isinstance(module, FakeQuantLinear):
                set_submodule(gm, path, module.unwrap())
        gm.train(was_training)
    return gm
