"""Quantized Linear modules: int8 (dynamic, weight-only, static) and half precision (bf16, fp16).

Plain int8 tensors and float32 scales: no ``torch.ao.quantization``, no quantized tensors.
Weights are symmetric per output channel (``w ≈ q * weight_scale[:, None]``, ``q`` in
[-127, 127]); every module saves and loads through its state dict (``weight`` int8,
``weight_scale`` float32, ``bias`` float32), so a fresh module of the same shape accepts
``load_state_dict(strict=True)``. Nothing float is cached beside the int8 weights.

Implementations, chosen by measurement (:mod:`fxlab.nn.kernels.choice`; README, "Kernel choice"):

* Each Linear registers an op (``DYNAMIC_OP``, ``WEIGHT_ONLY_OP``, ``HALF_OPS``, ``STATIC_OP``)
  whose first candidate is the reference in torch ops and whose others are the fused Numba kernels
  of :mod:`fxlab.nn.kernels` (whole Linears, or the steps around ``torch._int_mm``),
  ``torch._weight_int8pack_mm`` and native half GEMMs (plain, or oneDNN on a pre-packed weight).
  On CPU inference the first call on a shape bucket times the candidates that give the mode's
  numbers and keeps the fastest (cached on disk per machine); ``FXLAB_KERNELS`` forces one.
* int8 × int8 → int32: ``torch._int_mm`` (oneDNN on CPU). On CUDA it needs more than 16 rows and
  K, N multiples of 8: K and N are zero-padded there (zeros add nothing to an integer dot
  product, so padding is exact).
* Outside CPU inference (autograd, CUDA) no choice is made: a dynamic matmul with
  ``K·N·(rows + 6) < 1.6M`` (``CPU_MIN_WORK``) runs the weight-only arithmetic there (float
  activations × the same int8 weights, like torchao's ``weight_only_decode``); see
  :meth:`Int8DynamicLinear.uses_int8_matmul`. Under graph capture every Linear takes one path.
* bf16 / fp16 weights: a native half GEMM is a candidate on CPUs with AVX512-BF16 or AMX
  (AMX-FP16 for fp16) and is used on CUDA; otherwise the half weights are upcast and the GEMM
  runs in float32. The bias stays float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import DirectCall, child_property
from ..core import LeafModule
from . import kernels
from .kernels import choice
from .fused import linear_flops
from .scales import quantize_symmetric

__all__ = [
    "Dequantize",
    "HalfLinear",
    "Int8DynamicLinear",
    "Int8StaticLinear",
    "Int8Table",
    "Int8WeightOnlyLinear",
    "MinMaxObserver",
    "Quantize",
]

#: Outside CPU inference (the autograd path: no measured choice there), the int8 GEMM is used when
#: ``in·out·(rows + CPU_WEIGHT_ROWS) >= CPU_MIN_WORK``.
#: Below that, ~15 small ops of activation quantization cost more than they save; the float path
#: pays instead for converting the weights, worth ``CPU_WEIGHT_ROWS`` rows of float32 GEMM here.
CPU_MIN_WORK = 1_600_000
CPU_WEIGHT_ROWS = 6
#: Outside CPU inference, a native half GEMM (oneDNN, ~20 µs to set up) is used from this many
#: multiply-adds up on CPUs with native half dot products.
CPU_HALF_MIN_MACS = 2**20

_EPS = 1e-12
#: ATen splits an elementwise op over threads from this many elements (``at::internal::GRAIN_SIZE``).
_SMALL = 32768
_HALF_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


# --------------------------------------------------------------------------------------------
# the arithmetic



def finish_from_float(module: nn.Module, source: nn.Module) -> nn.Module:
    """``module``, just built from the float ``source`` (a Linear or a conv), given ``source``'s bias
    (as float32), train/eval mode and device: the common end of every ``from_float``."""
    if source.bias is not None:
        with torch.no_grad():
            module.bias.data = source.bias.detach().float().clone()
    module.train(source.training)
    return module.to(source.weight.device)


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: ``weight ≈ q * scale[:, None]``, ``q`` in [-127, 127].

    Each channel's scale is the one of least squared reconstruction error among ``max|w| / 127``,
    that range clipped by up to 40 %, and the best of those refined by ±2 %
    (:func:`fxlab.nn.scales.quantize_symmetric`): here 63 and -126 steps reconstruct both weights
    better than 64 and -127 steps of ``1 / 127``.

    >>> q, s = quantize_weight(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    >>> q.tolist(), [round(v, 5) for v in s.tolist()]
    ([[63, -126], [0, 0]], [0.00794, 0.0])
    """
    q, scale = quantize_symmetric(weight, -127, 127)
    return q.to(torch.int8), scale


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8 quantization of a 2-D float tensor: ``x ≈ q * scale``.

    ``a = max(max |x|, eps)`` per row, ``q = round(x * (127 * (1 / a)))`` (half to even) and
    ``scale = a * (1 / 127)`` of shape (rows, 1); ``|q| <= 127`` without a clamp. On CPU one fused
    kernel (:mod:`fxlab.nn.kernels`) computes exactly this; otherwise torch ops: few rows, fewest
    ops (``abs().amax()``); many rows, fewest passes over memory (``max(amax, -amin)`` writes no
    copy of ``x``).

    >>> q, s = quantize_rows(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    >>> q.tolist()
    [[64, -127], [0, 0]]
    """
    k = kernels.for_tensor(x) if x.dtype == torch.float32 else None
    if k is not None:
        return kernels.quantize_rows(k, x, _EPS)
    return _quantize_rows_torch(x)


def _quantize_rows_torch(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`quantize_rows` in torch ops."""
    if x.requires_grad and _is_grad_enabled():
        return _quantize_rows_tracked(x)
    if x.numel() < _SMALL:
        absmax = x.abs().amax(dim=1, keepdim=True)
    else:
        absmax = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_())
    absmax = absmax.clamp_min_(_EPS)
    q = (x * absmax.reciprocal().mul_(127.0)).round_().to(torch.int8)
    return (q if q.is_contiguous() else q.contiguous()), absmax.mul_(1 / 127)


def _quantize_rows_tracked(x: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`quantize_rows` in out-of-place torch ops, for an ``x`` autograd tracks: its backward
    reads intermediates (the row maxima, their reciprocals) that the in-place steps overwrite."""
    absmax = x.abs().amax(dim=1, keepdim=True).clamp_min(_EPS)
    q = torch.round(x * (absmax.reciprocal() * 127.0)).to(torch.int8)
    return (q if q.is_contiguous() else q.contiguous()), absmax * (1 / 127)


def int8_matmul(xq: Tensor, wq: Tensor) -> Tensor:
    """``xq @ wq.T`` for int8 ``xq`` (M, K) and ``wq`` (N, K), accumulated exactly in int32."""
    if xq.is_cuda:
        return _int_mm_cuda(xq, wq)
    return torch._int_mm(xq, wq.t())


def _int_mm_cuda(xq: Tensor, wq: Tensor) -> Tensor:
    # cuBLASLt's int8 GEMM wants M > 16 and K, N multiples of 8: pad with zeros (exact).
    m, k = xq.shape
    n = wq.shape[0]
    pad_m, pad_k, pad_n = max(17 - m, 0), -k % 8, -n % 8
    if pad_m or pad_k:
        xq = F.pad(xq, (0, pad_k, 0, pad_m))
    if pad_k or pad_n:
        wq = F.pad(wq, (0, pad_k, 0, pad_n))
    out = torch._int_mm(xq, wq.t())
    return out[:m, :n] if (pad_m or pad_n) else out


def linear_int8_weight(x: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ (wq * w_scale[:, None]).T + bias`` in float: int8 weights converted on the fly, and the
    per-channel scale applied to the (smaller) output instead of the weights."""
    y = F.linear(x, wq.to(x.dtype))
    return torch.addcmul(bias, y, w_scale) if bias is not None else y.mul_(w_scale)


def _relu(y: Tensor, relu: bool) -> Tensor:
    return y.relu_() if relu else y


def graph_capture() -> bool:
    """Whether this forward is being captured into a graph (``torch.export``, ONNX export,
    ``torch.compile``, fx or TorchScript tracing) rather than run: then every quantized Linear takes
    one path whatever the input's size, since a branch on the batch size becomes a guard there.
    (Called on every quantized forward: plain flag reads.)"""
    return bool(
        _is_compiling()
        or _is_exporting()
        or _is_jit_tracing()
        or _is_fx_tracing()
        or _onnx_exporting()
    )


_is_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling
_is_exporting = torch.compiler.is_exporting
_is_jit_tracing = torch.jit.is_tracing
_is_fx_tracing = getattr(torch.fx._symbolic_trace, "_get_is_fx_tracing", lambda: False)


def _onnx_exporting() -> bool:
    """Whether torch's ONNX exporter (dynamo or TorchScript) is running."""
    import sys

    onnx = sys.modules.get("torch.onnx")  # never imported: not exporting
    return bool(onnx is not None and onnx.is_in_onnx_export())


def fake_int8_linear(x: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The dynamic int8 arithmetic in float ops only (for ONNX, whose float graph has no int8 GEMM).

    Per-row activation quantization exactly as :func:`quantize_rows` computes it; the int8 codes
    multiplied as floats, which is exact while ``K · 127² < 2**24`` (K ≤ 1040: every partial sum
    is an integer float32 holds exactly), then the same scaling as the int32 path.
    """
    absmax = x.abs().amax(dim=1, keepdim=True).clamp_min(_EPS)
    q = torch.round(x * (absmax.reciprocal() * 127.0))
    acc = F.linear(q, wq.to(x.dtype))
    scale = (absmax * (1 / 127)) * w_scale
    return torch.addcmul(bias, acc, scale) if bias is not None else acc * scale


def _int8_linear_ops(x: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """The dynamic int8 arithmetic in torch ops whatever the size (what ``torch.export`` captures)."""
    absmax = x.abs().amax(dim=1, keepdim=True).clamp_min(_EPS)
    xq = torch.round(x * (absmax.reciprocal() * 127.0)).to(torch.int8)
    acc = int8_matmul(xq, wq)
    scale = (absmax * (1 / 127)) * w_scale
    return torch.addcmul(bias, acc, scale) if bias is not None else acc * scale


def big_enough(x: Tensor, in_features: int, out_features: int) -> bool:
    """Whether a 2-D ``x`` times an (out, in) int8 weight should take the int8 GEMM."""
    if x.is_cuda:
        return x.shape[0] > 16
    return in_features * out_features * (x.shape[0] + CPU_WEIGHT_ROWS) >= CPU_MIN_WORK


def _half_pays_off(x: Tensor, dtype: torch.dtype, in_features: int, out_features: int) -> bool:
    if x.is_cuda:
        return True
    return x.shape[0] * in_features * out_features >= CPU_HALF_MIN_MACS and _native_half_on_cpu(dtype)


@functools.cache
def _native_half_on_cpu(dtype: torch.dtype) -> bool:
    cpu = getattr(torch, "cpu", None)
    if dtype is torch.bfloat16:
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return bool(getattr(cpu, "_is_amx_fp16_supported", lambda: False)())


# --------------------------------------------------------------------------------------------
# the implementations each Linear chooses from, by measurement (fxlab.nn.kernels.choice); the
# first of each op is the reference, torch ops only


def _numba() -> Any:
    return kernels._kernels()


def _numba_available() -> bool:
    return kernels.available()


def _dynamic_torch(m: Any, x: Tensor, weight: Tensor, w_scale: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    xq, x_scale = _quantize_rows_torch(x)
    acc = int8_matmul(xq, weight)
    scale = x_scale * w_scale
    return _relu(torch.addcmul(bias, acc, scale) if bias is not None else acc * scale, relu)


class _DynamicStraightThrough(torch.autograd.Function):
    """The dynamic int8 Linear (:func:`_dynamic_torch`, without ReLU) on the autograd path, its
    gradient passed straight through the rounding of the activations: that of
    ``x @ (wq * w_scale[:, None]).T + bias``, the weight-only arithmetic a smaller matmul runs
    there (:func:`linear_int8_weight`). Differentiating the rounding itself would give zero but
    through each row's scale."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(weight, w_scale)
        return _dynamic_torch(None, x, weight, w_scale, bias, False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, Tensor | None]:
        weight, w_scale = ctx.saved_tensors
        grad_x = (grad * w_scale) @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[3] else None
        return grad_x, None, None, grad_bias


def _dynamic_numba(m: Any, x: Tensor, weight: Tensor, w_scale: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    w, ws, b = kernels.arrays(m, weight, w_scale, bias)
    return kernels.dynamic_linear(_numba(), x, w, ws, b, relu, _EPS)


def _dynamic_numba_int_mm(m: Any, x: Tensor, weight: Tensor, w_scale: Tensor, bias: Tensor | None,
                          relu: bool) -> Tensor:
    k = _numba()
    _, ws, b = kernels.arrays(m, weight, w_scale, bias)
    xq, x_scale = kernels.quantize_rows(k, x, _EPS)
    return kernels.scale_rows_cols(k, int8_matmul(xq, weight), x_scale, ws, b, relu)


def _w8_torch(m: Any, x: Tensor, weight: Tensor, w_scale: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    return _relu(linear_int8_weight(x, weight, w_scale, bias), relu)


def _w8_numba(m: Any, x: Tensor, weight: Tensor, w_scale: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    return kernels.linear_w8(_numba(), x, *kernels.arrays(m, weight, w_scale, bias), relu)


def _w8_int8pack(m: Any, x: Tensor, weight: Tensor, w_scale: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    y = torch._weight_int8pack_mm(x, weight, w_scale)
    return _relu(y.add_(bias) if bias is not None else y, relu)


def _half_torch(m: Any, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    return _relu(F.linear(x, weight.to(x.dtype), bias), relu)


def _half_numba(m: Any, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    w_bits, b, _ = kernels.arrays(m, weight, bias)
    return kernels.linear_half(_numba(), x, w_bits, weight.dtype == torch.float16, b, relu)


def _half_native(m: Any, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    y = F.linear(x.to(weight.dtype), weight)
    return _relu(torch.add(bias, y) if bias is not None else y.to(x.dtype), relu)


_MKLDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _half_native_packed(m: Any, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    """:func:`_half_native` on oneDNN's pre-packed copy of the half weight (:func:`kernels.onednn_packed`)."""
    packed = kernels.onednn_packed(m, weight, x.shape[0])
    if packed is None:  # an inference tensor
        return _half_native(m, x, weight, bias, relu)
    y = torch.ops.mkldnn._linear_pointwise(x.to(weight.dtype), packed, None, "none", [], "")
    return _relu(torch.add(bias, y) if bias is not None else y.to(x.dtype), relu)


#: The unit roundoff of each half type: the relative error of rounding a float32 to it.
HALF_UNITS = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def half_error(mags: Tensor, dtype: torch.dtype, k: int) -> Tensor:
    """The error a half product may add to the float32 reference, elementwise, where ``mags`` is
    the product of the magnitudes (``|x| @ |W|.T``, or that conv): the input and the output each
    rounded to ``dtype`` once, and float32 sums of ``k`` terms in another order."""
    return mags * (2 * HALF_UNITS[dtype] + 2 * k * 2.0**-24) + 1e-30


def _half_bound(m: Any, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
    return half_error(F.linear(x.abs(), weight.float().abs()), weight.dtype, x.shape[1])


def _static_torch(m: Any, xq: Tensor, weight: Tensor, multiplier: Tensor, offset: Tensor) -> Tensor:
    acc = int8_matmul(xq, weight)
    return torch.addcmul(offset, acc, multiplier).round_().clamp_(m._low, 127).to(torch.int8)


def _static_numba(m: Any, xq: Tensor, weight: Tensor, multiplier: Tensor, offset: Tensor) -> Tensor:
    w, mult, off = kernels.arrays(m, weight, multiplier, offset)
    return kernels.static_linear(_numba(), xq, w, mult, off, m._low)


def _static_numba_int_mm(m: Any, xq: Tensor, weight: Tensor, multiplier: Tensor, offset: Tensor) -> Tensor:
    _, mult, off = kernels.arrays(m, weight, multiplier, offset)
    return kernels.requantize(_numba(), int8_matmul(xq, weight), mult, off, m._low)


_QLINEAR = torch.backends.mkldnn.is_available() and all(
    hasattr(torch.ops.onednn, op) for op in ("qlinear_pointwise", "qlinear_prepack"))


def _qlinear_prepack(weight: Tensor) -> Tensor:
    return torch.ops.onednn.qlinear_prepack(weight, None)


def _static_onednn(m: Any, xq: Tensor, weight: Tensor, multiplier: Tensor, offset: Tensor) -> Tensor:
    """oneDNN's int8 Linear (``torch.ops.onednn.qlinear_pointwise``, what torch.ao's x86 lowering
    runs), requantizing to int8 itself. Its fast path takes uint8 activations: the codes shifted by
    128 (the top bit flipped) with the zero point shifted alike, the same affine values."""
    packed = kernels.onednn_packed(m, weight, xq.shape[0], _qlinear_prepack)
    if packed is None:  # an inference tensor
        return _static_torch(m, xq, weight, multiplier, offset)
    s_x, _, z_x = m.input_quant.values()
    s_y, _, z_y = m.output_dequant.values()
    w_zero_points = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.ops.onednn.qlinear_pointwise(
        xq.view(torch.uint8).bitwise_xor(128), s_x, z_x + 128, packed, m._buffers["weight_scale"], w_zero_points,
        m._parameters.get("bias"), s_y, z_y, torch.int8, "relu" if m.relu else "none", [], "")


_NUMBA_NOTE = "Numba kernels off (FXLAB_KERNELS=torch, kernels.disabled()) or not installed"
DYNAMIC_OP = choice.Op("dynamic", [
    choice.Candidate("torch", _dynamic_torch, note="torch ops: per-row quantization, torch._int_mm, addcmul"),
    choice.Candidate("numba", _dynamic_numba, _numba_available, _NUMBA_NOTE),
    choice.Candidate("numba+int_mm", _dynamic_numba_int_mm, _numba_available, _NUMBA_NOTE),
])
WEIGHT_ONLY_OP = choice.Op("weight-only", [
    choice.Candidate("torch", _w8_torch, note="int8 weights to float, float32 GEMM, addcmul"),
    choice.Candidate("numba", _w8_numba, _numba_available, _NUMBA_NOTE),
    choice.Candidate("int8pack", _w8_int8pack, lambda: hasattr(torch, "_weight_int8pack_mm"),
                     "torch._weight_int8pack_mm missing in this torch"),
])
HALF_OPS = {
    dtype: choice.Op(name, [
        choice.Candidate("torch", _half_torch, note="half weights upcast, float32 GEMM"),
        choice.Candidate("numba", _half_numba, _numba_available, _NUMBA_NOTE),
        choice.Candidate("native", _half_native, functools.partial(lambda d: _native_half_on_cpu(d), dtype),
                         f"no native {name} dot products on this CPU"),
        choice.Candidate("onednn", _half_native_packed,
                         functools.partial(lambda d: _MKLDNN_LINEAR and _native_half_on_cpu(d), dtype),
                         f"no native {name} dot products on this CPU, or no oneDNN Linear in this torch"),
    ], bound=_half_bound)
    for dtype, name in _HALF_NAMES.items()
}
STATIC_OP = choice.Op("static", [
    choice.Candidate("torch", _static_torch, note="torch._int_mm, addcmul, round, clamp"),
    choice.Candidate("numba", _static_numba, _numba_available, _NUMBA_NOTE),
    choice.Candidate("numba+int_mm", _static_numba_int_mm, _numba_available, _NUMBA_NOTE),
    choice.Candidate("onednn", _static_onednn, lambda: _QLINEAR, "no oneDNN int8 Linear in this torch"),
])


# --------------------------------------------------------------------------------------------
# the Linears


class _LinearBase(DirectCall, kernels.CacheFree, nn.Module, LeafModule):
    """What the quantized Linears share: shapes, the fused ReLU flag, (…, K) inputs, the printout.

    Subclasses implement ``matmul(x2d, weight, bias, relu)`` (which applies the ReLU when
    ``relu``, so that a fused kernel can). ``forward`` reads the parameters from ``_parameters``
    directly: ``Module.__getattr__`` costs ~0.4 µs a lookup, a tenth of a batch-1 layer.
    """

    in_features: int
    out_features: int
    relu: bool

    def _init_shape(self, in_features: int, out_features: int, relu: bool) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.relu = relu

    def _details(self) -> list[str]:
        return []

    def extra_repr(self) -> str:
        parts = [f"{self.in_features}→{self.out_features}", *self._details()]
        if self.bias is None:
            parts.append("bias=False")
        if self.relu:
            parts.append("relu")
        return ", ".join(parts)

    def forward(self, x: Tensor) -> Tensor:
        params = self._parameters
        if x.dim() == 2:
            return self.matmul(x, params["weight"], params.get("bias"), self.relu)
        y = self.matmul(x.reshape(-1, self.in_features), params["weight"], params.get("bias"), self.relu)
        return y.reshape(*x.shape[:-1], self.out_features)

    def flops(self, input_shape: Sequence[int]) -> int:
        """FLOPs of the float Linear this module stands for, on an input of ``input_shape``: its
        Numba and int8 paths run ops torch's ``FlopCounterMode`` does not see, or counts as other
        work. Used by :func:`fxlab.render`."""
        return linear_flops(input_shape, self.in_features, self.out_features)

    def matmul(self, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class _Int8WeightLinear(_LinearBase):
    """int8 weight (``weight``, per-output-channel ``weight_scale``) and a float32 bias."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = False) -> None:
        super().__init__()
        self._init_shape(in_features, out_features, relu)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Module, *, relu: bool = False, **kwargs):
        """Quantize ``linear`` (an ``nn.Linear``, or a fused ``LinearReLU`` with ``relu=True``)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, relu=relu, **kwargs)
        q, scale = quantize_weight(linear.weight)
        with torch.no_grad():
            module.weight.data = q
            module.weight_scale = scale
        return finish_from_float(module, linear)

    def dequantized_weight(self) -> Tensor:
        """The float32 weight this module computes with: ``weight * weight_scale[:, None]``."""
        return self.weight.float() * self.weight_scale[:, None]

    def _details(self) -> list[str]:
        return ["per-channel"]


class Int8DynamicLinear(_Int8WeightLinear):
    """int8 weights (per output channel) × int8 activations quantized per row at run time.

    ``y = (q(x) @ q(W).T) · s_x · s_w + b``, accumulated exactly in int32 by ``torch._int_mm``.
    On CPU the fused kernels of :mod:`fxlab.nn.kernels` run it at every size; without them a
    matmul too small to pay for the torch ops of quantization runs the weight-only arithmetic
    instead (see :meth:`uses_int8_matmul`). The gradient for the input is that arithmetic's at every
    size, ``(grad · s_w) @ q(W)``: straight through the rounding of the activations.

    >>> m = Int8DynamicLinear.from_float(torch.nn.Linear(784, 128))
    >>> m
    Int8DynamicLinear(784→128, per-channel)
    >>> m.uses_int8_matmul(torch.randn(256, 784))
    True
    """

    def uses_int8_matmul(self, x: Tensor) -> bool:
        """Whether a 2-D input ``x`` takes the int8 path (else: float activations × int8 weights):
        always where the implementation is chosen by measurement (CPU inference; every candidate
        is int8), else when :func:`big_enough`."""
        if choice.eligible(x) and x.dtype == torch.float32:
            return True
        return big_enough(x, self.in_features, self.out_features)

    def matmul(self, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        w_scale = self._buffers["weight_scale"]
        c = choice.choose(DYNAMIC_OP, self, x, self.out_features, weight, w_scale, bias, relu) \
            if x.dtype == torch.float32 else None
        if c is not None:  # CPU inference: the implementation measured fastest for this shape
            return c.fn(self, x, weight, w_scale, bias, relu)
        if graph_capture():  # one path at every size; ONNX's float graph has no int8 GEMM
            if _onnx_exporting() or x.is_cuda:
                return _relu(fake_int8_linear(x, weight, w_scale, bias), relu)
            return _relu(_int8_linear_ops(x, weight, w_scale, bias), relu)
        if not big_enough(x, self.in_features, self.out_features):  # autograd, CUDA
            return _relu(linear_int8_weight(x, weight, w_scale, bias), relu)
        if x.requires_grad and _is_grad_enabled():
            return _relu(_DynamicStraightThrough.apply(x, weight, w_scale, bias), relu)
        return _dynamic_torch(self, x, weight, w_scale, bias, relu)


class Int8WeightOnlyLinear(_Int8WeightLinear):
    """int8 weights (per output channel), float activations: the weights are converted on the fly.

    >>> m = Int8WeightOnlyLinear.from_float(torch.nn.Linear(784, 128))
    >>> m
    Int8WeightOnlyLinear(784→128, per-channel)
    """

    def matmul(self, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        w_scale = self._buffers["weight_scale"]
        c = choice.choose(WEIGHT_ONLY_OP, self, x, self.out_features, weight, w_scale, bias, relu) \
            if x.dtype == torch.float32 else None  # None while a graph is captured
        if c is not None:
            return c.fn(self, x, weight, w_scale, bias, relu)
        return _relu(linear_int8_weight(x, weight, w_scale, bias), relu)


class HalfLinear(_LinearBase):
    """A Linear holding its weight in bf16 or fp16 (bias float32); input and output stay float32.

    >>> m = HalfLinear.from_float(torch.nn.Linear(784, 128), dtype=torch.bfloat16)
    >>> m
    HalfLinear(784→128, bf16)
    >>> m(torch.randn(4, 784)).dtype
    torch.float32
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        relu: bool = False,
        dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        super().__init__()
        if dtype not in _HALF_NAMES:
            raise ValueError(f"HalfLinear holds bfloat16 or float16, not {dtype}")
        self._init_shape(in_features, out_features, relu)
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Module, *, relu: bool = False, dtype: torch.dtype = torch.bfloat16) -> HalfLinear:
        """Round ``linear``'s weight to ``dtype`` (the bias stays float32)."""
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, relu=relu, dtype=dtype)
        with torch.no_grad():
            module.weight.data = linear.weight.detach().to(dtype).clone()
        return finish_from_float(module, linear)

    @property
    def dtype(self) -> torch.dtype:
        """The half dtype the weight is held in."""
        return self.weight.dtype

    def dequantized_weight(self) -> Tensor:
        """The weight as float32 (exactly the half values)."""
        return self.weight.float()

    def uses_half_matmul(self, x: Tensor) -> bool:
        """Whether a 2-D input ``x`` runs a native half GEMM (else: upcast weights, float32 GEMM):
        on CPU inference, whether ``native`` was measured fastest for its shape."""
        if choice.eligible(x) and x.dtype == torch.float32:
            op = HALF_OPS[self.weight.dtype]
            c = choice.choose(op, self, x, self.out_features, self.weight, self.bias, self.relu)
            return c is not None and c.name == "native"
        return _half_pays_off(x, self.weight.dtype, self.in_features, self.out_features)

    def matmul(self, x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        c = choice.choose(HALF_OPS[weight.dtype], self, x, self.out_features, weight, bias, relu) \
            if x.dtype == torch.float32 else None
        if c is not None:
            return c.fn(self, x, weight, bias, relu)
        if graph_capture():  # one path at every size: upcast weights, float32 GEMM
            return _relu(F.linear(x, weight.to(x.dtype), bias), relu)
        if _half_pays_off(x, weight.dtype, self.in_features, self.out_features):
            y = F.linear(x.to(weight.dtype), weight)
            return _relu(torch.add(bias, y) if bias is not None else y.to(x.dtype), relu)
        return _relu(F.linear(x, weight.to(x.dtype), bias), relu)

    def _details(self) -> list[str]:
        return [_HALF_NAMES.get(self.dtype, str(self.dtype))]


# --------------------------------------------------------------------------------------------
# static int8: observers, quantize / dequantize, int8-in int8-out Linear


def affine_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point that map [lo, hi] (widened to hold 0) onto int8 [-128, 127]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, _EPS)
    zero_point = round(-128 - lo / scale)
    return scale, max(-128, min(127, zero_point))


class MinMaxObserver(DirectCall, nn.Module, LeafModule):
    """Records the running min and max of what passes through; returns its input unchanged.

    ``quantize-prepare`` puts one on the input and one on the output of each Linear; the range it
    saw gives the per-tensor int8 scale and zero point. ``min_val`` / ``max_val`` are buffers.

    >>> obs = MinMaxObserver()
    >>> obs
    MinMaxObserver(per-tensor)
    >>> _ = obs(torch.tensor([-1.0, 3.0]))
    >>> obs.observed()
    'min=-1, max=3'
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x: Tensor) -> Tensor:
        lo, hi = torch.aminmax(x.detach())
        self.min_val = torch.minimum(self.min_val, lo.float())
        self.max_val = torch.maximum(self.max_val, hi.float())
        return x

    @property
    def seen(self) -> bool:
        """Whether any data has passed through."""
        return bool(torch.isfinite(self.min_val))

    def extra_repr(self) -> str:
        return "per-tensor"

    def observed(self) -> str:
        """The range seen so far, as text: ``min=…, max=…``, or ``no data``."""
        return f"min={float(self.min_val):.4g}, max={float(self.max_val):.4g}" if self.seen else "no data"


class _QParams(DirectCall, kernels.CacheFree, nn.Module, LeafModule):
    """A per-tensor affine int8 scale and zero point, held as buffers."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("zero_point", torch.tensor(int(zero_point), dtype=torch.int32))

    def extra_repr(self) -> str:
        return "int8, per-tensor"

    def values(self) -> tuple[float, float, int]:
        """``(scale, 1 / scale, zero_point)`` as Python numbers (``1 / scale`` as float32 computes
        it), cached until a buffer changes (assignment, ``fill_``, ``load_state_dict``)."""
        b = self._buffers
        scale, zero_point = b["scale"], b["zero_point"]
        if scale.is_inference() or zero_point.is_inference():  # no version counter: never cached
            return float(scale), float(scale.reciprocal()), int(zero_point)
        cached = self.__dict__.get("_values")
        if (
            cached is None
            or cached[0] is not scale  # the cache holds the tensors, so an id is never reused
            or cached[1] is not zero_point
            or cached[2] != (scale._version, zero_point._version)
        ):
            values = (float(scale), float(scale.reciprocal()), int(zero_point))
            cached = (scale, zero_point, (scale._version, zero_point._version), values)
            self.__dict__["_values"] = cached
        return cached[3]


class Quantize(_QParams):
    """float → int8: ``clamp(round(x / scale) + zero_point, -128, 127)``."""

    def forward(self, x: Tensor) -> Tensor:
        k = kernels.for_tensor(x) if x.dtype == torch.float32 else None
        if k is not None:
            _, inv_scale, zero_point = self.values()
            return kernels.quantize_affine(k, x, inv_scale, zero_point)
        b = self._buffers
        return torch.round(x * b["scale"].reciprocal()).add_(b["zero_point"]).clamp_(-128, 127).to(torch.int8)


class Dequantize(_QParams):
    """int8 → float: ``(q - zero_point) * scale``."""

    def forward(self, q: Tensor) -> Tensor:
        k = kernels.for_tensor(q) if q.dtype == torch.int8 else None
        if k is not None:
            scale, _, zero_point = self.values()
            return kernels.dequantize_affine(k, q, scale, zero_point)
        b = self._buffers
        return q.float().sub_(b["zero_point"]).mul_(b["scale"])


class Int8StaticLinear(_Int8WeightLinear):
    """int8 in, int8 out, with activation scales fixed by calibration.

    Its children ``input_quant`` (a :class:`Quantize`) and ``output_dequant`` (a
    :class:`Dequantize`) hold the input and output scales and zero points; the graph calls them as
    nodes of their own around this module, which reads their scales to requantize its int32
    accumulator: ``q_y = clamp(round(acc * s_x s_w / s_y + c), lo, 127)``, ``lo`` being the output
    zero point when a ReLU is fused (ReLU in the integer domain) and -128 otherwise.

    >>> m = Int8StaticLinear.from_float(torch.nn.Linear(4, 2), input_range=(-1, 1), output_range=(-3, 3))
    >>> m
    Int8StaticLinear(4→2, per-channel)
    >>> x = torch.rand(3, 4)
    >>> m.output_dequant(m(m.input_quant(x))).shape
    torch.Size([3, 2])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, relu: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias, relu=relu)
        self.input_quant = Quantize()
        self.output_dequant = Dequantize()
        self.register_buffer("_multiplier", torch.ones(out_features), persistent=False)
        self.register_buffer("_offset", torch.zeros(out_features), persistent=False)
        self._low = -128
        self.register_load_state_dict_post_hook(_refresh_after_load)
        self.refresh()

    @classmethod
    def from_float(
        cls,
        linear: nn.Module,
        *,
        relu: bool = False,
        input_range: tuple[float, float] | None = None,
        output_range: tuple[float, float] | None = None,
    ) -> Int8StaticLinear:
        """Quantize ``linear``; the activation ranges come from calibration (placeholders if None)."""
        module = super().from_float(linear, relu=relu)
        for child, rng in ((module.input_quant, input_range), (module.output_dequant, output_range)):
            scale, zero_point = affine_qparams(*rng) if rng is not None else (1.0, 0)
            child.scale.fill_(scale)
            child.zero_point.fill_(zero_point)
        module.refresh()
        return module

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the requantization constants from the stored weights and scales."""
        s_x, z_x = self.input_quant.scale, self.input_quant.zero_point.float()
        s_y, z_y = self.output_dequant.scale, self.output_dequant.zero_point.float()
        s_xw = s_x * self.weight_scale
        weight_sum = self.weight.sum(dim=1, dtype=torch.int32).float()
        bias = self.bias if self.bias is not None else torch.zeros_like(self.weight_scale)
        self._multiplier = s_xw / s_y
        self._offset = (bias - s_xw * z_x * weight_sum) / s_y + z_y
        self._low = int(self.output_dequant.zero_point) if self.relu else -128

    def forward(self, xq: Tensor) -> Tensor:
        if xq.dim() != 2:
            y = self.forward(xq.reshape(-1, self.in_features))
            return y.reshape(*xq.shape[:-1], self.out_features)
        weight, b = self._parameters["weight"], self._buffers
        c = choice.choose(STATIC_OP, self, xq, self.out_features, weight, b["_multiplier"], b["_offset"]) \
            if xq.dtype == torch.int8 else None
        if c is not None:
            return c.fn(self, xq, weight, b["_multiplier"], b["_offset"])
        acc = int8_matmul(xq, weight)
        return torch.addcmul(b["_offset"], acc, b["_multiplier"]).round_().clamp_(self._low, 127).to(torch.int8)

    def __repr__(self) -> str:  # one line, like the other quantized Linears
        return f"{type(self).__name__}({self.extra_repr()})"

    # The graph calls ``self.<path>.input_quant`` / ``.output_dequant`` on every forward; found on the
    # class, they skip ``Module.__getattr__`` (a fifth of a batch-1 Quantize).
    input_quant: Quantize = child_property("input_quant")  # type: ignore[assignment]
    output_dequant: Dequantize = child_property("output_dequant")  # type: ignore[assignment]


class Int8Table(DirectCall, kernels.CacheFree, nn.Module, LeafModule):
    """An elementwise float function between two int8 tensors, as a 256-entry table.

    ``table[q + 128]`` is ``quantize(fn(dequantize(q)))`` for every int8 code ``q``, with the
    scales of the dequantize and quantize steps it replaces (computed once, by those very steps),
    so it equals them exactly on every input. Static quantization puts one between two int8
    Linears where a GELU (or ReLU, SiLU, sigmoid, ...) sat between them. The table is a buffer:
    it saves and loads through the state dict.

    >>> q, d = Quantize(), Dequantize()
    >>> q.scale.fill_(0.1); d.scale.fill_(0.1)
    tensor(0.1000)
    tensor(0.1000)
    >>> t = Int8Table.build("relu", torch.relu, d, q)
    >>> t
    Int8Table(relu, int8 → int8)
    >>> t(torch.tensor([[-5, 0, 7]], dtype=torch.int8)).tolist()
    [[0, 0, 7]]
    """

    def __init__(self, name: str = "fn") -> None:
        super().__init__()
        self.name = name
        self.register_buffer("table", torch.arange(-128, 128, dtype=torch.int16).to(torch.int8))

    @classmethod
    @torch.no_grad()
    def build(cls, name: str, fn: Any, dequantize: Dequantize, quantize: Quantize) -> Int8Table:
        """The table of ``quantize(fn(dequantize(q)))`` over all 256 codes (torch ops throughout)."""
        module = cls(name)
        codes = torch.arange(-128, 128, dtype=torch.int16).to(torch.int8).reshape(1, 256)
        with kernels.disabled():
            module.table = quantize(fn(dequantize(codes))).reshape(256).to(torch.int8)
        return module.to(dequantize.scale.device)

    def forward(self, q: Tensor) -> Tensor:
        table = self._buffers["table"]
        k = kernels.for_tensor(q) if q.dtype == torch.int8 else None
        if k is not None and table.is_cpu:
            (array, _, _) = kernels.arrays(self, table, None)
            return kernels.lookup(k, q, array)
        return table[q.long() + 128]

    def extra_repr(self) -> str:
        return f"{self.name}, int8 → int8"


def _refresh_after_load(module: Int8StaticLinear, _incompatible_keys: object) -> None:
    module.refresh()
