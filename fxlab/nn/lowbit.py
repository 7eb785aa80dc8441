"""Low-bit Linears: int4 and int2 weights packed into bytes, fp8 (e4m3) weights.

========================  ==========================================  ========================================
module                    weights (state dict)                        activations
========================  ==========================================  ========================================
``Int4WeightOnlyLinear``  int4, two a byte (``weight_packed`` uint8),  float32
                          symmetric scale per group of ``group_size``
                          inputs (``weight_scale`` float32 (out,
                          groups)); ``group_size=None``: per channel
``Int8Int4Linear``        as ``Int4WeightOnlyLinear``                 int8, symmetric per row, at run time
``Int2WeightOnlyLinear``  int2 (codes [-2, 1]), four a byte, scales    float32
                          as ``Int4WeightOnlyLinear``'s
``Float8WeightLinear``    float8 e4m3 (``weight``), one float32       float32 on CPU; e4m3 per row on CUDA
                          scale per output channel                    (compute capability ≥ 8.9)
========================  ==========================================  ========================================

Every module saves and loads through its state dict (``bias`` float32 beside the weights above),
so a fresh module of the same shape (and group size) accepts ``load_state_dict(strict=True)``;
nothing float is cached beside the packed weights.

The weight is ``(code - 2**(bits-1)) * scale`` (:func:`dequantize`): codes ``q`` in [-8, 7] (int4)
or [-2, 1] (int2) with one scale per group, the one of least squared error among ``max|w| / qmax``,
the extreme onto ``qmin`` (a negative scale where the extreme is positive) and both clipped by up to
40 %, the best then refined by ±2 % (:mod:`fxlab.nn.scales`). :func:`fake_quantize_weight` computes that float weight
from a float one in torch ops, which is what quantization-aware training
(:mod:`fxlab.passes.quantize.qat`) trains through.

Paths on CPU, chosen by measurement (``python -m fxlab.bench --suite lowbit``), with the Numba
kernels of :mod:`fxlab.nn.kernels.lowbit` under the same guard as the int8 ones:

* at most ``LOWBIT_KERNEL_MAX_ROWS`` rows: one fused kernel decodes each packed weight row into a
  small buffer and dots it with every input row (int8-int4: exact integer sums per group);
* more rows: a kernel writes the float32 weight in one pass over the packed bytes, then
  ``F.linear`` (oneDNN's GEMM) runs (int8-int4: the int8 codes of the activations times that
  weight, then the row scales);
* without the kernels (no Numba, ``FXLAB_KERNELS=torch``, autograd, tracing, CUDA): torch ops
  unpack the weight, then ``F.linear``.

Both CPU paths compute the same products, summed in another order: their outputs agree to float32
rounding (the tests hold them to each other and to the torch ops). fp8 on CPU widens the e4m3
weight times its scale and calls ``F.linear``. fp8 on CUDA with compute capability ≥ 8.9
quantizes the activations to e4m3 per row and calls ``torch._scaled_mm`` (row-wise scales);
that path is not exercised on CPU-only machines.
"""

from __future__ import annotations

import functools
import logging
import math
from types import ModuleType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .quantized import _EPS, _LinearBase, _relu, finish_from_float, graph_capture, quantize_rows
from .scales import quantize_symmetric

__all__ = [
    "Float8WeightLinear",
    "Int2WeightOnlyLinear",
    "Int4WeightOnlyLinear",
    "Int8Int4Linear",
]

log = logging.getLogger(__name__)

#: Group sizes of the grouped modes (int4, int8-int4, int2) (``None``: one scale per output channel).
GROUP_SIZES = (32, 64, 128, None)
#: The fused unpack-and-dot kernels run for at most this many rows; more rows write the float
#: weight and call ``F.linear`` (measured by ``python -m fxlab.bench --suite lowbit``).
LOWBIT_KERNEL_MAX_ROWS = 4
#: The largest finite float8 e4m3 value.
FP8_MAX = 448.0


@functools.cache
def _lowbit_kernels() -> ModuleType | None:
    try:
        from .kernels import lowbit
    except ImportError as exc:  # pragma: no cover - numba missing: kernels.for_tensor is None first
        log.info("low-bit kernels unavailable (%s)", exc)
        return None
    return lowbit


# --------------------------------------------------------------------------------------------
# packing and the arithmetic (torch ops: the reference the kernels are held to)


def _per_byte(bits: int) -> int:
    if bits not in (2, 4):
        raise ValueError(f"packed weights hold 2 or 4 bits a code, not {bits}")
    return 8 // bits


def pack(q: Tensor, bits: int) -> Tensor:
    """Signed codes ``q`` (n, k) in [-2**(bits-1), 2**(bits-1) - 1] → uint8 (n, nbytes), nbytes =
    ceil(k·bits/8), as ``8 // bits`` bit planes: element ``j`` in byte ``j % nbytes`` at bit
    ``(j // nbytes) · bits``, stored as ``q + 2**(bits-1)`` (padding elements stand for 0).

    >>> pack(torch.tensor([[-8, 7, 1, 0]]), 4).tolist()
    [[144, 143]]
    """
    per = _per_byte(bits)
    n, k = q.shape
    codes = q.to(torch.int32) + (1 << (bits - 1))
    pad = -k % per
    if pad:
        codes = F.pad(codes, (0, pad), value=1 << (bits - 1))
    planes = codes.reshape(n, per, -1)
    shifts = torch.arange(per, device=q.device, dtype=torch.int32).reshape(1, per, 1) * bits
    return (planes << shifts).sum(dim=1).to(torch.uint8)


def unpack(packed: Tensor, k: int, bits: int) -> Tensor:
    """The signed codes (int8, (n, k)) of :func:`pack`'s bytes.

    >>> unpack(pack(torch.tensor([[-8, 7, 1]]), 4), 3, 4).tolist()
    [[-8, 7, 1]]
    """
    per = _per_byte(bits)
    if graph_capture():  # floor division and remainder: exporters (ONNX) have no shifts or masks on bytes
        steps = torch.tensor([1 << (p * bits) for p in range(per)], device=packed.device, dtype=torch.int32)
        codes = torch.remainder(torch.div(packed.to(torch.int32).unsqueeze(1), steps.reshape(1, per, 1),
                                          rounding_mode="floor"), 1 << bits)
    else:
        shifts = torch.arange(per, device=packed.device, dtype=torch.uint8).reshape(1, per, 1) * bits
        codes = (packed.unsqueeze(1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0], -1)[:, :k].to(torch.int8) - (1 << (bits - 1))


def _group_scales(scales: Tensor, k: int, group: int) -> Tensor:
    """Per-group scales (n, groups) widened to one per element (n, k)."""
    return scales.repeat_interleave(group, dim=1)[:, :k]


def dequantize(packed: Tensor, scales: Tensor, k: int, group: int, bits: int) -> Tensor:
    """The float32 weight ``(code - 2**(bits-1)) * scale`` of a packed one, in torch ops (the
    reference; the kernel :func:`fxlab.nn.kernels.lowbit.dequantize` gives the same bits)."""
    return unpack(packed, k, bits).float() * _group_scales(scales, k, group)


def _grouped(w: Tensor, group: int) -> Tensor:
    """``w`` (n, k) as (n, groups, group), the last group padded with zeros."""
    n, k = w.shape
    return F.pad(w, (0, -k % group)).reshape(n, -1, group)


def quantize_grouped(weight: Tensor, group_size: int | None, bits: int = 4) -> tuple[Tensor, Tensor]:
    """Symmetric ``bits``-bit codes (4: [-8, 7]; 2: [-2, 1]) per group of ``group_size`` inputs
    (``None``: per output channel): ``(q int8 (n, k), scale float32 (n, groups))``, each group's scale
    the one of least squared reconstruction error (:func:`fxlab.nn.scales.quantize_symmetric`):
    ``max|w| / qmax`` or the group's extreme onto ``qmin`` (negative scales for positive extremes, as
    llama.cpp's ``max / -8``), each clipped by up to 40 %, the best then refined by ±2 %. Here both
    int4 groups are coded without error (``max|w| / 7`` would not):

    >>> q, s = quantize_grouped(torch.tensor([[0.7, -0.35, -0.8, 0.1]]), 2)
    >>> q.tolist(), [round(v, 4) for v in s[0].tolist()]
    ([[-8, 4, -8, 1]], [-0.0875, 0.1])

    2 bits use all four codes: the extreme onto -2 puts ±0.5 and 0 on the grid as well.

    >>> q, s = quantize_grouped(torch.tensor([[1.0, 0.5, -0.5, 0.0]]), None, bits=2)
    >>> q.tolist(), [round(v, 4) for v in s[0].tolist()]
    ([[-2, -1, 1, 0]], [-0.5])
    """
    w = weight.detach().float()
    qmax = (1 << (bits - 1)) - 1
    q, scale = quantize_symmetric(_grouped(w, group_size or w.shape[1]), -qmax - 1, qmax)
    return _ungroup(q, *w.shape).to(torch.int8), scale


def quantize_fp8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """float8 e4m3 weights with one scale per output channel (``max|w|`` maps to 448):
    ``(w8 float8_e4m3fn (n, k), scale float32 (n,))``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / FP8_MAX
    w8 = (w / scale.clamp_min(_EPS)[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return w8, scale


def fake_quantize_weight(weight: Tensor, kind: str, group_size: int | None = None) -> Tensor:
    """The float weight a low-bit module of ``kind`` (``"int4"``, ``"int2"``, ``"fp8"``) computes
    with, from a float ``weight``, in torch ops (the rounding has no gradient: quantization-aware
    training wraps this in a straight-through estimator). Equal to the module's dequantized weight:
    int4 and int2 take the very codes and scales of :func:`quantize_grouped`.

    >>> linear = torch.nn.Linear(40, 8)
    >>> m = Int4WeightOnlyLinear.from_float(linear, group_size=32)
    >>> torch.equal(fake_quantize_weight(linear.weight, "int4", 32), m.dequantized_weight())
    True
    """
    bits = {"int4": 4, "int2": 2}.get(kind)
    if bits is not None:
        k = weight.shape[1]
        q, scale = quantize_grouped(weight, group_size, bits)
        return q.float() * _group_scales(scale, k, group_size or k)
    if kind == "fp8":
        scale = weight.detach().abs().amax(dim=1) / FP8_MAX
        w8 = (weight / scale.clamp_min(_EPS)[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return w8.float() * scale[:, None]
    raise ValueError(f"unknown low-bit kind {kind!r}: int4, int2 or fp8")


def _ungroup(g: Tensor, n: int, k: int) -> Tensor:
    return g.reshape(n, -1)[:, :k]


# --------------------------------------------------------------------------------------------
# the Linears


class _PackedLinear(_LinearBase):
    """Packed ``bits``-bit weights (``weight_packed`` uint8, ``weight_scale`` float32 (out, groups))
    and a float32 bias; ``group_size`` None means one scale per output channel."""

    bits: ClassVar[int] = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = False,
                 group_size: int | None = None) -> None:
        super().__init__()
        self._init_shape(in_features, out_features, relu)
        self.group_size = group_size
        self.group = group_size or in_features
        groups = math.ceil(in_features / self.group)
        packed = math.ceil(in_features / _per_byte(self.bits))
        self.register_buffer("weight_packed", torch.zeros(out_features, packed, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Module, *, relu: bool = False, group_size: int | None = None) -> _PackedLinear:
        """Quantize ``linear`` (an ``nn.Linear``, or a fused ``LinearReLU`` with ``relu=True``)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, relu=relu,
                     group_size=group_size)
        q, scale = quantize_grouped(linear.weight, group_size, cls.bits)
        with torch.no_grad():
            module.weight_packed = pack(q, cls.bits)
            module.weight_scale = scale.float().contiguous()
        return finish_from_float(module, linear)

    def dequantized_weight(self) -> Tensor:
        """The float32 weight this module computes with (torch ops)."""
        b = self._buffers
        return dequantize(b["weight_packed"], b["weight_scale"], self.in_features, self.group, self.bits)

    def _details(self) -> list[str]:
        return [f"group={self.group_size}" if self.group_size else "per-channel"]

    def forward(self, x: Tensor) -> Tensor:
        bias = self._parameters.get("bias")
        if x.dim() == 2:
            return self.matmul(x, bias, self.relu)
        y = self.matmul(x.reshape(-1, self.in_features), bias, self.relu)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _kernel_args(self, x: Tensor, bias: Tensor | None) -> tuple[Any, ...]:
        """The kernel module and the cached NumPy views, or ``(None,)`` when the kernels cannot run."""
        k = kernels.for_tensor(x) if x.dtype == torch.float32 else None
        if k is None or not self._buffers["weight_packed"].is_cpu:
            return (None,)
        if x.shape[1] != self.in_features:
            raise ValueError(f"input of shape {tuple(x.shape)} does not fit {self!r}: "
                             f"expected (rows, {self.in_features})")
        b = self._buffers
        return (k, _lowbit_kernels(), *kernels.arrays(self, b["weight_packed"], b["weight_scale"], bias))

    def _float_weight(self, lk: ModuleType, packed: Any, scales: Any) -> Tensor:
        w = torch.empty(self.out_features, self.in_features)
        lk.dequantize(packed, scales, self.in_features, self.group, self.bits, w.data_ptr())
        return w

    def matmul(self, x: Tensor, bias: Tensor | None, relu: bool) -> Tensor:  # type: ignore[override]
        """Float activations × the packed weight: the fused kernel (few rows), the kernel-written
        float weight and ``F.linear`` (more rows), or torch ops (no kernels)."""
        k, *rest = self._kernel_args(x, bias)
        if k is not None:
            lk, packed, scales, b = rest
            m = x.shape[0]
            if m <= LOWBIT_KERNEL_MAX_ROWS:
                out = torch.empty(m, self.out_features)
                lk.linear_packed(x.data_ptr(), m, packed, scales, self.in_features, self.group, self.bits, b, relu,
                                 out.data_ptr())
                return out
            return _relu(F.linear(x, self._float_weight(lk, packed, scales), bias), relu)
        return _relu(F.linear(x, self.dequantized_weight().to(x.dtype), bias), relu)


class Int4WeightOnlyLinear(_PackedLinear):
    """int4 weights, two a byte, symmetric scales per group of ``group_size`` inputs; float activations.

    >>> m = Int4WeightOnlyLinear.from_float(torch.nn.Linear(784, 128), group_size=32)
    >>> m
    Int4WeightOnlyLinear(784→128, group=32)
    >>> m.weight_packed.shape, m.weight_scale.shape
    (torch.Size([128, 392]), torch.Size([128, 25]))
    """

    bits = 4


class Int8Int4Linear(Int4WeightOnlyLinear):
    """int8 activations (symmetric per row, at run time) × int4 group-wise weights.

    ``y = s_x · Σ_g s_g · Σ_{j∈g} q(x)_j · q_j + b``: the integer sums are exact.

    >>> m = Int8Int4Linear.from_float(torch.nn.Linear(784, 128), group_size=64)
    >>> m
    Int8Int4Linear(784→128, group=64)
    """

    def matmul(self, x: Tensor, bias: Tensor | None, relu: bool) -> Tensor:  # type: ignore[override]
        k, *rest = self._kernel_args(x, bias)
        if k is not None:
            lk, packed, scales, b = rest
            m = x.shape[0]
            xq, x_scale = torch.empty(m, self.in_features), torch.empty(m, 1)
            k.quantize_rows_float(x.data_ptr(), m, self.in_features, _EPS, xq.data_ptr(), x_scale.data_ptr())
            if m <= LOWBIT_KERNEL_MAX_ROWS:
                out = torch.empty(m, self.out_features)
                lk.dynamic_linear_packed(xq.data_ptr(), m, x_scale.data_ptr(), packed, scales, self.in_features,
                                         self.group, b, relu, out.data_ptr())
                return out
            y = F.linear(xq, self._float_weight(lk, packed, scales))
        else:
            xq, x_scale = _quantize_rows_any(x)
            y = F.linear(xq.to(x.dtype), self.dequantized_weight().to(x.dtype))
        return _relu(torch.addcmul(bias, y, x_scale) if bias is not None else y.mul_(x_scale), relu)


def _quantize_rows_any(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row int8 codes and scales of ``x`` (:func:`fxlab.nn.quantized.quantize_rows`; in
    differentiable-free float ops while a graph is captured, so exporters see plain float ops)."""
    if graph_capture() or x.requires_grad:
        absmax = x.abs().amax(dim=1, keepdim=True).clamp_min(_EPS)
        return torch.round(x * (absmax.reciprocal() * 127.0)), absmax * (1 / 127)
    return quantize_rows(x.float())


class Int2WeightOnlyLinear(_PackedLinear):
    """2-bit weights, codes [-2, 1] (four a byte), symmetric scales per group of ``group_size`` inputs,
    chosen as int4's are; float activations.

    A stress mode: accuracy visibly drops (more than int4's at the same group size); quantization-aware
    training wins much of it back.

    >>> m = Int2WeightOnlyLinear.from_float(torch.nn.Linear(784, 128), group_size=32)
    >>> m
    Int2WeightOnlyLinear(784→128, group=32)
    >>> m.weight_packed.shape, m.weight_scale.shape
    (torch.Size([128, 196]), torch.Size([128, 25]))
    """

    bits = 2

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        # int2 files saved before int2 had groups hold one scale per channel (ternary codes, a subset
        # of [-2, 1]) under a pipeline without group_size: they load as a per-channel module
        saved = state_dict.get(prefix + "weight_scale")
        own = self._buffers["weight_scale"]
        if isinstance(saved, Tensor) and saved.shape == (self.out_features, 1) and own.shape[1] != 1:
            self.group_size, self.group = None, self.in_features
            self.weight_scale = own.new_ones(self.out_features, 1)
        super()._load_from_state_dict(state_dict, prefix, *args)


class Float8WeightLinear(_LinearBase):
    """float8 e4m3 weights with one float32 scale per output channel; float32 in and out.

    On CPU the weight is widened on the fly: ``F.linear(x, weight.float() * weight_scale[:, None], bias)``.
    On CUDA with compute capability ≥ 8.9 the activations are quantized to e4m3 per row and
    ``torch._scaled_mm`` multiplies (row-wise scales, bfloat16 out, then float32 + bias).

    >>> m = Float8WeightLinear.from_float(torch.nn.Linear(784, 128))
    >>> m
    Float8WeightLinear(784→128, e4m3, per-channel)
    >>> m.weight.dtype
    torch.float8_e4m3fn
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = False) -> None:
        super().__init__()
        self._init_shape(in_features, out_features, relu)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.float8_e4m3fn))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Module, *, relu: bool = False) -> Float8WeightLinear:
        """Quantize ``linear`` (an ``nn.Linear``, or a fused ``LinearReLU`` with ``relu=True``)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, relu=relu)
        w8, scale = quantize_fp8(linear.weight)
        with torch.no_grad():
            module.weight = w8
            module.weight_scale = scale
        return finish_from_float(module, linear)

    def dequantized_weight(self) -> Tensor:
        """The float32 weight: the e4m3 values widened, times the channel scales."""
        b = self._buffers
        return b["weight"].float() * b["weight_scale"][:, None]

    def _details(self) -> list[str]:
        return ["e4m3", "per-channel"]

    def forward(self, x: Tensor) -> Tensor:
        bias = self._parameters.get("bias")
        if x.dim() != 2:
            y = self.forward(x.reshape(-1, self.in_features))
            return y.reshape(*x.shape[:-1], self.out_features)
        b = self._buffers
        if x.is_cuda and _scaled_mm_ok(x.device) and not graph_capture():
            try:
                return _relu(_scaled_mm_linear(x, b["weight"], b["weight_scale"], bias), self.relu)
            except RuntimeError as exc:  # an unsupported shape or build: widen instead, and say so once
                _warn_scaled_mm(exc)
        return _relu(F.linear(x, self.dequantized_weight().to(x.dtype), bias), self.relu)


@functools.cache
def _scaled_mm_ok(device: torch.device) -> bool:
    return hasattr(torch, "_scaled_mm") and torch.cuda.get_device_capability(device) >= (8, 9)


_WARNED: set[str] = set()


def _warn_scaled_mm(exc: BaseException) -> None:
    """Log once per kind of failure that ``torch._scaled_mm`` failed and the weights are widened instead."""
    key = f"{type(exc).__name__}: {str(exc)[:200]}"
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("fp8: torch._scaled_mm failed (%s); widening the weights instead", key)


def _scaled_mm_linear(x: Tensor, w8: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """e4m3 activations (per-row scales) × e4m3 weights (per-channel scales) by ``torch._scaled_mm``.

    It wants K and N multiples of 16 (zero padding: exact) and the weight column-major (``w8.t()``
    of a row-major (N, K) weight is)."""
    m, k = x.shape
    n = w8.shape[0]
    pad_k, pad_n = -k % 16, -n % 16
    absmax = x.abs().amax(dim=1, keepdim=True).float().clamp_min(_EPS)
    x_scale = absmax / FP8_MAX
    xq = (x.float() / x_scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    if pad_k:
        xq = F.pad(xq.view(torch.uint8), (0, pad_k)).view(torch.float8_e4m3fn)
    w, ws = w8, w_scale
    if pad_k or pad_n:
        w = F.pad(w8.view(torch.uint8), (0, pad_k, 0, pad_n)).view(torch.float8_e4m3fn)
        ws = F.pad(w_scale, (0, pad_n), value=1.0)
    y = torch._scaled_mm(xq, w.t(), scale_a=x_scale, scale_b=ws.float().reshape(1, -1), out_dtype=torch.bfloat16)
    y = y[:, :n].float()
    return y.add_(bias) if bias is not None else y
