"""Quantized convolutions: int8 (dynamic, weight-only) and half precision (bf16, fp16), 1-D and 2-D.

Same storage as the quantized Linears (:mod:`fxlab.nn.quantized`): plain int8 tensors and float32
scales, no ``torch.ao.quantization``. Weights are symmetric per output channel
(``w ≈ q * weight_scale[:, None, None, None]``, ``q`` in [-127, 127]); the state dict holds
``weight`` (int8, the conv's shape), ``weight_scale`` (float32, one per output channel) and ``bias``
(float32), so a fresh module of the same shape accepts ``load_state_dict(strict=True)``.

* ``Int8DynamicConv2d``: activations quantized at run time, **one symmetric scale per sample**
  (per image of the batch, over all its channels and positions). Why not per row of the unfolded
  input (per output position), as the Linears do per row? A sample's scale does not depend on the
  rest of the batch either way, but per sample the activations are quantized once, before
  ``F.unfold`` copies each of them ``kh·kw`` times (per row: ``kh·kw`` times the work, on the
  bigger tensor), zero padding stays an exact 0 code, and the integer convolution is then a plain
  convolution of the codes — which is what ONNX export writes (float ops, exact while
  ``K · 127² < 2**24``, ``K = C/groups · kh · kw ≤ 1040``). The int8 GEMM: the codes unfolded to
  (B·L, K), ``torch._int_mm`` against the (N, K) weight codes (exact int32; on CUDA K, N and the
  rows are zero-padded to its shape rules, exact too; elsewhere an exact float64 product of the
  codes), then ``acc · s_x[b] · s_w[n] + bias[n]``. On CPU inference the float32 conv of the codes
  (the ONNX arithmetic; the same integer sums exactly while ``K ≤ 1040``) is the other candidate of
  its op, ``dynamic-conv``, chosen where measured faster (:mod:`fxlab.nn.kernels.choice`).
* ``Int8WeightOnlyConv2d``: float activations, ``F.conv2d`` on the dequantized weights.
* ``HalfConv2d``: weights in bf16 / fp16 (bias float32). Three implementations, chosen by
  measurement on CPU inference (:mod:`fxlab.nn.kernels.choice`, op ``bf16-conv`` / ``fp16-conv``):
  the reference widens the weights to float32 for ``F.conv2d``; ``native`` (on CPUs with
  AVX512-BF16 or AMX, AMX-FP16 for fp16) rounds the input to the half type and runs oneDNN's half
  convolution (float32 accumulation), its output widened and the float32 bias added in place;
  ``native-nhwc`` does the same on a channels-last copy of the input, which oneDNN convolves
  without reordering (its output, and so the next conv's input, stays channels-last). On CUDA
  ``native`` runs (cuDNN), as the half Linears' native GEMM does; under graph capture, the reference.

The 1-D versions (``…Conv1d``) run the 2-D arithmetic on a (B, C, 1, L) view.

>>> conv = torch.nn.Conv2d(1, 32, 3, padding=1)
>>> Int8DynamicConv2d.from_float(conv)
Int8DynamicConv2d(1→32, k=3, padding=1, per-channel)
>>> HalfConv2d.from_float(conv, dtype=torch.float16)
HalfConv2d(1→32, k=3, padding=1, fp16)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._util import DirectCall
from ..core import LeafModule
from .fused import ConvReLU
from . import kernels
from .kernels import choice
from .quantized import (
    _EPS,
    _HALF_NAMES,
    _native_half_on_cpu,
    _onnx_exporting,
    finish_from_float,
    graph_capture,
    half_error,
    int8_matmul,
    quantize_weight,
)

__all__ = [
    "HalfConv1d",
    "HalfConv2d",
    "Int8DynamicConv1d",
    "Int8DynamicConv2d",
    "Int8WeightOnlyConv1d",
    "Int8WeightOnlyConv2d",
    "conv_geometry",
    "quantize_samples",
]

_Pair = tuple[int, int]


def _pair(v: int | Sequence[int], ndim: int, fill: int) -> _Pair:
    """A 1-D or 2-D conv argument as the (h, w) pair of the 2-D arithmetic (1-D: ``(fill, v)``)."""
    t = tuple(v) if isinstance(v, Sequence) else (v,) * ndim
    return (fill, int(t[0])) if ndim == 1 else (int(t[0]), int(t[1]))


def conv_geometry(conv: nn.Module) -> tuple[_Pair, _Pair, _Pair, _Pair] | str:
    """``(kernel, stride, padding, dilation)`` of an ``nn.Conv1d`` / ``nn.Conv2d`` as 2-D pairs, or
    the reason (text) it cannot be quantized here: ``groups > 1``, a padding mode other than zeros,
    or ``padding='same'`` that pads one side more than the other."""
    ndim = len(conv.kernel_size)
    if ndim not in (1, 2):
        return f"a {ndim}-d convolution is not quantized (1-d and 2-d only); left in float32"
    if conv.groups != 1:
        return f"groups={conv.groups} (grouped / depthwise conv) is not quantized; left in float32"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not quantized (zeros only); left in float32"
    kernel = _pair(conv.kernel_size, ndim, 1)
    dilation = _pair(conv.dilation, ndim, 1)
    padding = conv.padding
    if padding == "valid":
        padding = 0
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        if any(t % 2 for t in total):
            return "padding='same' pads one side more (even kernel); left in float32"
        padding = tuple(t // 2 for t in total[2 - ndim:])
    return kernel, _pair(conv.stride, ndim, 1), _pair(padding, ndim, 0), dilation


def quantize_samples(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 codes of ``x`` (B, ...) with one scale per sample: ``x ≈ q * scale``.

    ``a = max(max |x[b]|, eps)``, ``q = round(x * (127 * (1 / a)))`` (half to even, ``|q| ≤ 127``
    without a clamp), ``scale = a / 127`` of shape (B, 1, ...). The codes stay float (exact
    integers): ``F.unfold`` has no int8 kernel.

    >>> q, s = quantize_samples(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    >>> q.tolist()
    [[64.0, -127.0], [0.0, 0.0]]
    """
    dims = tuple(range(1, x.dim()))
    absmax = x.abs().amax(dim=dims, keepdim=True).clamp_min(_EPS)
    q = torch.round(x * (absmax.reciprocal() * 127.0))
    return q, absmax * (1 / 127)


def _int_gemm(xq: Tensor, wq: Tensor) -> Tensor:
    """``xq @ wq.T`` of int8 codes, exactly: ``torch._int_mm`` on CPU and CUDA, else float64."""
    if xq.device.type in ("cpu", "cuda"):
        return int8_matmul(xq, wq)
    return xq.double() @ wq.double().t()


class _ConvBase(DirectCall, kernels.CacheFree, nn.Module, LeafModule):
    """Shapes and geometry of a quantized conv, its (…1d / …2d) input handling and its printout.

    Subclasses implement ``conv2d(x4d)`` on a (B, C, H, W) input with the 2-D geometry pairs;
    ``relu`` (a fused ``ConvReLU`` was quantized) applies the ReLU in place on the fresh output.
    """

    ndim: int = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        relu: bool = False,
    ) -> None:
        super().__init__()
        self.relu = bool(relu)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        n = self.ndim
        self.kernel_size = _pair(kernel_size, n, 1)
        self.stride = _pair(stride, n, 1)
        self.padding = _pair(padding, n, 0)
        self.dilation = _pair(dilation, n, 1)
        self._bias_flag = bias

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels, *self.kernel_size[2 - self.ndim:])

    @classmethod
    def from_float(cls, conv: nn.Module, **kwargs):
        """The quantized module for ``conv`` (an ``nn.Conv1d`` / ``nn.Conv2d``, or a fused ``ConvReLU``
        of one, whose ReLU the module then applies; see :func:`conv_geometry`)."""
        geometry = conv_geometry(conv)
        if isinstance(geometry, str):
            raise ValueError(f"cannot quantize {conv}: {geometry}")
        kernel, stride, padding, dilation = geometry
        n = cls.ndim
        module = cls(conv.in_channels, conv.out_channels, kernel[2 - n:], stride[2 - n:], padding[2 - n:],
                     dilation[2 - n:], bias=conv.bias is not None, relu=isinstance(conv, ConvReLU), **kwargs)
        with torch.no_grad():
            module._set_weight(conv.weight.detach())
        return finish_from_float(module, conv)

    def _set_weight(self, weight: Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.ndim + 2:
            return self._unbatched(x)
        y = self.conv2d(x) if self.ndim == 2 else self.conv2d(x.unsqueeze(-2)).squeeze(-2)
        return torch.relu_(y) if self.relu else y

    def _unbatched(self, x: Tensor) -> Tensor:
        """An unbatched input (C, H, W) or (C, L), as ``nn.Conv2d`` / ``nn.Conv1d`` take it, run as a
        batch of one: the int8 conv's scale is per sample, and the kernel choice buckets by batch."""
        if x.dim() != self.ndim + 1:  # the error type and words of nn.Conv2d's
            raise RuntimeError(f"Expected {self.ndim + 1}D (unbatched) or {self.ndim + 2}D (batched) input to "
                               f"{type(self).__name__}, but got input of size: {list(x.shape)}")
        return self.forward(x.unsqueeze(0)).squeeze(0)

    def conv2d(self, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _float_conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.ndim == 1:
            weight = weight.unsqueeze(-2)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def bucket_suffix(self) -> str:
        """What this conv adds to its input's shape in a kernel-choice bucket: output channels,
        kernel, and stride / padding / dilation where not the default (``64k3x3``, ``6k5x5p2x2``).
        Kept on the module after the first call (the geometry never changes)."""
        cached = self.__dict__.get("_bucket_suffix")
        if cached is not None:
            return cached
        text = f"{self.out_channels}k{'x'.join(map(str, self.kernel_size))}"
        for letter, pair, default in (("s", self.stride, 1), ("p", self.padding, 0), ("d", self.dilation, 1)):
            if any(v != default for v in pair):
                text += letter + "x".join(map(str, pair))
        self.__dict__["_bucket_suffix"] = text
        return text

    def _details(self) -> list[str]:
        return []

    def extra_repr(self) -> str:
        n = self.ndim

        def text(pair: _Pair) -> str:
            p = pair[2 - n:]
            return str(p[0]) if len(set(p)) == 1 else "×".join(map(str, p))

        parts = [f"{self.in_channels}→{self.out_channels}", f"k={text(self.kernel_size)}"]
        for name, default in (("stride", 1), ("padding", 0), ("dilation", 1)):
            pair = getattr(self, name)
            if any(v != default for v in pair[2 - n:]):
                parts.append(f"{name}={text(pair)}")
        parts.extend(self._details())
        if self.bias is None:
            parts.append("bias=False")
        if self.relu:
            parts.append("relu")
        return ", ".join(parts)

    def __repr__(self) -> str:  # one line, like the quantized Linears
        return f"{type(self).__name__}({self.extra_repr()})"

    def output_size(self, size: _Pair) -> _Pair:
        """Output (H, W) of a 2-D input of spatial ``size``."""
        return tuple(  # type: ignore[return-value]
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(size, self.padding, self.dilation, self.kernel_size, self.stride)
        )


class _Int8WeightConv(_ConvBase):
    """int8 weight (``weight``, per-output-channel ``weight_scale``) and a float32 bias."""

    def __init__(self, *args, bias: bool = True, **kwargs) -> None:
        super().__init__(*args, bias=bias, **kwargs)
        self.weight = nn.Parameter(torch.zeros(self._weight_shape(), dtype=torch.int8), requires_grad=False)
        self.register_buffer("weight_scale", torch.ones(self.out_channels))
        self.bias = nn.Parameter(torch.zeros(self.out_channels), requires_grad=False) if bias else None

    def _set_weight(self, weight: Tensor) -> None:
        q, scale = quantize_weight(weight.reshape(weight.shape[0], -1))
        self.weight.data = q.reshape(weight.shape)
        self.weight_scale = scale

    def dequantized_weight(self) -> Tensor:
        """The float32 weight this module computes with: ``weight * weight_scale`` per output channel."""
        return self.weight.float() * self.weight_scale.reshape(-1, *([1] * (self.weight.dim() - 1)))

    def _details(self) -> list[str]:
        return ["per-channel"]


def _dynamic_conv_int_gemm(m: Int8DynamicConv2d, x: Tensor, weight: Tensor, w_scale: Tensor,
                           bias: Tensor | None) -> Tensor:
    """The reference: the codes unfolded, an exact int32 GEMM, then scales and bias."""
    q, x_scale = quantize_samples(x)
    batch, n = x.shape[0], m.out_channels
    out_h, out_w = m.output_size((x.shape[-2], x.shape[-1]))
    cols = F.unfold(q, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, K, L)
    xq = cols.transpose(1, 2).reshape(-1, cols.shape[1]).to(torch.int8)  # (B·L, K)
    acc = _int_gemm(xq, weight.reshape(n, -1)).reshape(batch, -1, n)  # (B, L, N)
    scale = x_scale.reshape(batch, 1, 1) * w_scale
    y = torch.addcmul(bias, acc, scale) if bias is not None else acc * scale
    return y.transpose(1, 2).reshape(batch, n, out_h, out_w)


def _dynamic_conv_codes(m: Int8DynamicConv2d, x: Tensor, weight: Tensor, w_scale: Tensor,
                        bias: Tensor | None) -> Tensor:
    """A plain float32 conv of the codes: the same integer sums, exactly, while every one stays
    below 2**24 (``K · 127² < 2**24``, ``K = C · kh · kw ≤ 1040``); what ONNX export writes."""
    q, x_scale = quantize_samples(x)
    n = m.out_channels
    acc = m._float_conv(q, weight.to(x.dtype), None)
    scale = x_scale * w_scale.reshape(1, n, 1, 1)
    return torch.addcmul(bias.reshape(1, n, 1, 1), acc, scale) if bias is not None else acc * scale


def _dynamic_conv_float(m: Int8DynamicConv2d, x: Tensor, weight: Tensor, w_scale: Tensor,
                        bias: Tensor | None) -> Tensor:
    """:func:`_dynamic_conv_codes` where it is exact; a conv with a larger ``K`` is left out."""
    if weight[0].numel() * 127 * 127 >= 2**24:
        raise ValueError(f"K = {weight[0].numel()} > 1040: a float32 sum of int8 products could round")
    return _dynamic_conv_codes(m, x, weight, w_scale, bias)


DYNAMIC_CONV_OP = choice.Op("dynamic-conv", [
    choice.Candidate("torch", _dynamic_conv_int_gemm, note="unfold, torch._int_mm, scales"),
    choice.Candidate("float-conv", _dynamic_conv_float),
])


class Int8DynamicConv2d(_Int8WeightConv):
    """int8 weights (per output channel) × int8 activations quantized per sample at run time.

    ``y[b, n] = (unfold(q(x))[b] @ q(W)[n]) · s_x[b] · s_w[n] + bias[n]``, accumulated exactly in int32.

    >>> m = Int8DynamicConv2d.from_float(torch.nn.Conv2d(1, 32, 3))
    >>> m
    Int8DynamicConv2d(1→32, k=3, per-channel)
    >>> m(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 32, 26, 26])
    """

    def conv2d(self, x: Tensor) -> Tensor:
        weight, w_scale, bias = self._parameters["weight"], self._buffers["weight_scale"], self._parameters.get("bias")
        if _onnx_exporting() or (graph_capture() and x.is_cuda):
            return _dynamic_conv_codes(self, x, weight, w_scale, bias)
        c = choice.choose(DYNAMIC_CONV_OP, self, x, self.bucket_suffix(), weight, w_scale, bias) \
            if x.dtype == torch.float32 else None  # None outside CPU inference: the reference runs
        return (c.fn if c is not None else _dynamic_conv_int_gemm)(self, x, weight, w_scale, bias)


class Int8WeightOnlyConv2d(_Int8WeightConv):
    """int8 weights (per output channel), float activations: ``F.conv2d`` on the dequantized weights.

    >>> Int8WeightOnlyConv2d.from_float(torch.nn.Conv2d(32, 64, 3, stride=2, bias=False))
    Int8WeightOnlyConv2d(32→64, k=3, stride=2, per-channel, bias=False)
    """

    def conv2d(self, x: Tensor) -> Tensor:
        return self._float_conv(x, self.dequantized_weight().to(x.dtype), self._parameters.get("bias"))


def _half_conv_torch(m: HalfConv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return m._float_conv(x, weight.to(x.dtype), bias)


def _widened(y: Tensor, bias: Tensor | None) -> Tensor:
    """A half conv's output ``y`` as float32 plus the float32 bias per channel, added in place on
    the widened copy: a mixed-dtype ``torch.add`` with a broadcast bias took twice as long
    (``mnist-cnn``'s 256×64×24×24 output, with the ReLU after: 28–33 ms against 15–19 ms), and a
    one-pass Numba kernel on the calling thread 23–27 ms."""
    out = y.float()
    return out.add_(bias.reshape(-1, 1, 1)) if bias is not None else out


def _half_conv_native(m: HalfConv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return _widened(m._float_conv(x.to(weight.dtype), weight, None), bias)


def _half_conv_native_nhwc(m: HalfConv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """:func:`_half_conv_native` on a channels-last copy of the input: oneDNN's half convolution
    then runs without reordering, and so does the next layer's on this (channels-last) output."""
    x = x.to(weight.dtype, memory_format=torch.channels_last)
    return _widened(m._float_conv(x, weight, None), bias)


def _half_conv_bound(m: HalfConv2d, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """:func:`~fxlab.nn.quantized.half_error` of a conv: sums of ``K = C·kh·kw`` products."""
    return half_error(m._float_conv(x.abs(), weight.float().abs(), None), weight.dtype, weight[0].numel())


HALF_CONV_OPS = {
    dtype: choice.Op(f"{name}-conv", [
        choice.Candidate("torch", _half_conv_torch, note="half weights widened, float32 convolution"),
        choice.Candidate("native", _half_conv_native, lambda d=dtype: _native_half_on_cpu(d),
                         f"no native {name} dot products on this CPU"),
        choice.Candidate("native-nhwc", _half_conv_native_nhwc, lambda d=dtype: _native_half_on_cpu(d),
                         f"no native {name} dot products on this CPU"),
    ], bound=_half_conv_bound)
    for dtype, name in _HALF_NAMES.items()
}


class HalfConv2d(_ConvBase):
    """A conv holding its weight in bf16 or fp16 (bias float32); input and output stay float32.

    >>> m = HalfConv2d.from_float(torch.nn.Conv2d(1, 8, 5))
    >>> m, m(torch.randn(1, 1, 28, 28)).dtype
    (HalfConv2d(1→8, k=5, bf16), torch.float32)
    """

    def __init__(self, *args, bias: bool = True, dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(*args, bias=bias, **kwargs)
        if dtype not in _HALF_NAMES:
            raise ValueError(f"{type(self).__name__} holds bfloat16 or float16, not {dtype}")
        self.weight = nn.Parameter(torch.zeros(self._weight_shape(), dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(self.out_channels), requires_grad=False) if bias else None

    def _set_weight(self, weight: Tensor) -> None:
        self.weight.data = weight.to(self.weight.dtype).clone()

    @property
    def dtype(self) -> torch.dtype:
        """The half dtype the weight is held in."""
        return self.weight.dtype

    def dequantized_weight(self) -> Tensor:
        """The weight as float32 (exactly the half values)."""
        return self.weight.float()

    def conv2d(self, x: Tensor) -> Tensor:
        weight, bias = self._parameters["weight"], self._parameters.get("bias")
        c = choice.choose(HALF_CONV_OPS[weight.dtype], self, x, self.bucket_suffix(), weight, bias) \
            if x.dtype == torch.float32 else None  # None outside CPU inference: the reference runs
        if c is not None:
            return c.fn(self, x, weight, bias)
        if x.is_cuda and x.dtype == torch.float32 and not graph_capture():  # as HalfLinear: cuDNN's half conv
            return _half_conv_native(self, x, weight, bias)
        return _half_conv_torch(self, x, weight, bias)

    def _details(self) -> list[str]:
        return [_HALF_NAMES[self.dtype]]


class Int8DynamicConv1d(Int8DynamicConv2d):
    """:class:`Int8DynamicConv2d` for ``nn.Conv1d`` (run on a (B, C, 1, L) view)."""

    ndim = 1


class Int8WeightOnlyConv1d(Int8WeightOnlyConv2d):
    """:class:`Int8WeightOnlyConv2d` for ``nn.Conv1d``."""

    ndim = 1


class HalfConv1d(HalfConv2d):
    """:class:`HalfConv2d` for ``nn.Conv1d``."""

    ndim = 1
