"""What each quantization mode does: small frozen config objects, and the mode names.

>>> MODES["static"]
Int8StaticConfig()
>>> MODES["static"].budget
0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

__all__ = [
    "Float8WeightConfig",
    "HalfConfig",
    "Int2WeightOnlyConfig",
    "Int4WeightOnlyConfig",
    "Int8Int4Config",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "Int8WeightOnlyConfig",
    "MODES",
    "QuantConfig",
]


@dataclass(frozen=True)
class QuantConfig:
    """Base of the mode configs; ``budget`` is the accuracy drop (points) the mode may cost."""

    budget: ClassVar[float] = 0.0


@dataclass(frozen=True)
class Int8DynamicConfig(QuantConfig):
    """int8 weights per output channel; activations quantized per row at run time."""

    budget: ClassVar[float] = 0.3


@dataclass(frozen=True)
class Int8WeightOnlyConfig(QuantConfig):
    """int8 weights per output channel; activations stay float."""

    budget: ClassVar[float] = 0.3


@dataclass(frozen=True)
class HalfConfig(QuantConfig):
    """Weights in a half dtype (bias float32); input and output float32."""

    budget: ClassVar[float] = 0.1
    dtype: torch.dtype = torch.bfloat16


@dataclass(frozen=True)
class Int8StaticConfig(QuantConfig):
    """int8 weights and activations, activation scales fixed by calibration (min/max observers)."""

    budget: ClassVar[float] = 0.5


@dataclass(frozen=True)
class Int4WeightOnlyConfig(QuantConfig):
    """int4 weights, two a byte, symmetric scales per group of ``group_size`` inputs (``None``:
    per output channel); activations stay float."""

    budget: ClassVar[float] = 0.5
    group_size: int | None = 32


@dataclass(frozen=True)
class Int8Int4Config(QuantConfig):
    """int8 activations per row at run time × int4 group-wise weights (as ``Int4WeightOnlyConfig``)."""

    budget: ClassVar[float] = 0.5
    group_size: int | None = 32


@dataclass(frozen=True)
class Float8WeightConfig(QuantConfig):
    """float8 e4m3 weights, one scale per output channel; activations float (e4m3 on CUDA ≥ sm89)."""

    budget: ClassVar[float] = 0.1


@dataclass(frozen=True)
class Int2WeightOnlyConfig(QuantConfig):
    """2-bit weights (codes [-2, 1]), four a byte, symmetric scales per group of ``group_size``
    inputs as int4's: a stress mode whose accuracy visibly drops (0.2-4.5 points on the seed models);
    its large budget only catches a broken model (QAT wins accuracy back)."""

    budget: ClassVar[float] = 10.0
    group_size: int | None = 32


#: Mode name (as in ``QuantizeLinear(mode=...)`` and pipeline text) → its config.
MODES: dict[str, QuantConfig] = {
    "dynamic": Int8DynamicConfig(),
    "weight-only": Int8WeightOnlyConfig(),
    "bf16": HalfConfig(torch.bfloat16),
    "fp16": HalfConfig(torch.float16),
    "static": Int8StaticConfig(),
    "int4": Int4WeightOnlyConfig(),
    "int8-int4": Int8Int4Config(),
    "fp8": Float8WeightConfig(),
    "int2": Int2WeightOnlyConfig(),
}
