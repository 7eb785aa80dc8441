"""Fused CPU kernels for the quantized Linears (Numba), with the torch ops as the fallback.

On CPU a quantized Linear is a handful of small memory-bound steps around one fast GEMM:
per-row activation quantization before ``torch._int_mm``, scaling of its int32 result after, or
the int8 → float conversion of the weights. As eager torch ops each step is a pass over memory
and a dispatch (a few µs, and a hand-over between OpenMP threads), which costs more than the
GEMM saves. The kernels here do each step in one pass on the calling thread:

==================  ==============================================  ==============================
kernel              replaces                                        used by (candidate name)
==================  ==============================================  ==============================
``quantize_rows``   abs-max per row, reciprocal, scale, round,      ``Int8DynamicLinear``
                    cast (5-6 ops)                                  (``numba+int_mm``)
``scale_rows_cols`` scale product, ``addcmul``, ReLU                ``Int8DynamicLinear`` (same)
``dynamic_linear``  ``torch._int_mm``, scaling, bias and ReLU in    ``Int8DynamicLinear`` (``numba``)
                    one pass, on ``quantize_rows_float``'s codes
``linear_w8``       int8 → float weights, GEMM, scale, bias, ReLU   ``Int8WeightOnlyLinear`` (same)
``linear_half``     bf16/fp16 → float weights, GEMM, bias, ReLU     ``HalfLinear`` (``numba``)
``quantize_affine`` scale, round, zero point, clamp, cast           ``Quantize``
``requantize``      ``addcmul``, round, clamp, cast                 ``Int8StaticLinear``
                                                                    (``numba+int_mm``)
``static_linear``   ``torch._int_mm`` and ``requantize``            ``Int8StaticLinear`` (``numba``)
``dequantize_affine`` cast, zero point, scale                       ``Dequantize``
``lookup``          index arithmetic, gather                        ``Int8Table``
==================  ==============================================  ==============================

Integer dot products are exact, so the int8 kernels give the very codes and sums of the torch
path (``torch._int_mm``); the float ones differ from torch's GEMM only by summation order.

The kernels compute what the torch code computes, in float32 with round-half-to-even, and the
tests hold them to it. They are used for plain contiguous float32 CPU tensors outside autograd
and outside tracing/compilation (torch.export, torch.compile, FX tracing see the torch ops).
Numba is imported on the first quantized forward (not at ``import fxlab``); its compiled code is
cached on disk. ``FXLAB_KERNELS=torch`` in the environment, or :func:`disabled`, turns the
kernels off; without Numba installed the torch ops run, with the same results.

Which implementation a quantized Linear runs for a shape (these kernels, ``torch._int_mm`` with
some of them, torch ops, native half GEMMs) is not fixed here: :mod:`fxlab.nn.kernels.choice`
times the candidates once per shape bucket on this machine and keeps the fastest.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["CacheFree", "arrays", "available", "disabled", "enabled", "for_tensor"]

log = logging.getLogger(__name__)

_ENABLED = os.environ.get("FXLAB_KERNELS", "numba").strip().lower() != "torch"
_UNSET = object()
#: the kernel module while enabled and loaded; None while disabled or unavailable; _UNSET until asked
_active: Any = _UNSET if _ENABLED else None


@functools.cache
def _load() -> ModuleType | None:
    try:
        from . import compiled
    except ImportError as exc:  # numba not installed (or broken): the torch ops do the work
        log.info("fused CPU kernels unavailable (%s); quantized Linears use torch ops", exc)
        return None
    return compiled


def _kernels() -> ModuleType | None:
    global _active
    if _active is _UNSET:
        _active = _load()
    return _active


def available() -> bool:
    """Whether the fused kernels are enabled and Numba can be imported."""
    return _kernels() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the torch ops instead of the fused kernels within this block (for comparisons).

    >>> from fxlab.nn import kernels
    >>> with kernels.disabled():
    ...     kernels.available()
    False
    """
    global _active
    from . import choice

    saved = _active
    _active = None
    try:
        with choice.forced("torch"):
            yield
    finally:
        _active = saved


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Make the Numba kernels available within this block even where ``FXLAB_KERNELS=torch`` turned
    them off (the tests compare every implementation this way); the choice policy is left as it is.
    """
    global _active
    saved = _active
    _active = _load()
    try:
        yield
    finally:
        _active = saved


_is_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling
_is_tracing = torch.jit.is_tracing


def for_tensor(x: Tensor) -> ModuleType | None:
    """The kernel module if ``x`` can take it (a plain contiguous CPU tensor, outside autograd,
    not being traced or compiled), else None. (Called on every quantized forward: kept lean.)"""
    k = _active
    if k is _UNSET:
        k = _kernels()
    if (
        k is None
        or type(x) is not Tensor
        or not x.is_cpu
        or not x.is_contiguous()
        or (x.requires_grad and _is_grad_enabled())
        or _is_compiling()
        or _is_tracing()
    ):
        return None
    return k


@contextlib.contextmanager
def outside_inference_mode() -> Iterator[None]:
    """A block for making tensors kept beyond the current call (caches on a module or in a global):
    outside inference mode, without autograd. Made inside ``torch.inference_mode()`` they would be
    inference tensors, which a later call outside it could not update in place."""
    with torch.inference_mode(False), torch.no_grad():
        yield


class CacheFree:
    """Mixin for modules that keep derived caches (NumPy views, Python scalars, packed weights) in
    their ``__dict__``: pickles and deep copies leave them out; the next forward rebuilds them."""

    _CACHES = ("_fxlab_arrays", "_values", "_fxlab_packed")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in self._CACHES:
            state.pop(key, None)
        return state


def onednn_packed(module: nn.Module, weight: Tensor, rows: int,
                  pack: Callable[[Tensor], Tensor] | None = None) -> Tensor | None:
    """oneDNN's pre-packed copy of ``weight`` (for ``torch.ops.mkldnn._linear_pointwise``; or what
    ``pack(weight)`` makes, e.g. ``torch.ops.onednn.qlinear_prepack``), cached on ``module`` until the
    weight changes (a new tensor, or an in-place update such as an optimizer step); never in state
    dicts, pickles or deep copies (:class:`CacheFree`). None for an inference tensor, whose in-place
    writes could not be seen (it has no version counter). Packed outside inference mode
    (:func:`outside_inference_mode`)."""
    if weight.is_inference():
        return None
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), pack)
    cached = module.__dict__.get("_fxlab_packed")
    if cached is None or cached[0] != key:
        with outside_inference_mode():
            w = weight.detach()
            cached = (key, pack(w) if pack is not None else torch.ops.mkldnn._reorder_linear_weight(w, rows))
        module.__dict__["_fxlab_packed"] = cached
    return cached[1]


_NO_ARRAY = np.empty(0, dtype=np.float32)


def _numpy(t: Tensor) -> np.ndarray:
    t = t.detach()
    half = t.dtype in (torch.bfloat16, torch.float16)
    return (t.view(torch.int16) if half else t).numpy()  # 16-bit patterns: NumPy has no bfloat16, Numba no float16


def arrays(module: nn.Module, a: Tensor, b: Tensor | None, c: Tensor | None = None) -> tuple[np.ndarray, ...]:
    """NumPy views of ``module``'s tensors ``a, b, c`` (None: an empty array), cached on the module
    until one of them is replaced (changes in place show through a view)."""
    key = (a.data_ptr(), b.data_ptr() if b is not None else 0, c.data_ptr() if c is not None else 0)
    cached = module.__dict__.get("_fxlab_arrays")
    if cached is None or cached[0] != key:
        with outside_inference_mode():
            views = (_numpy(a), _numpy(b) if b is not None else _NO_ARRAY, _numpy(c) if c is not None else _NO_ARRAY)
        cached = (key, views)  # the views hold their tensors: a live pointer is never reused
        module.__dict__["_fxlab_arrays"] = cached
    return cached[1]


# --------------------------------------------------------------------------------------------
# tensor-level calls. The caller has checked ``for_tensor(x)`` (contiguous CPU) and the dtypes;
# outputs are new tensors whose addresses the kernels write through.

_empty = torch.empty
_int8 = torch.int8


def _check(x: Tensor, w: np.ndarray) -> int:
    """Rows of a 2-D ``x`` whose width matches the weight's in-features (the kernels read by address)."""
    shape = x.shape
    if len(shape) != 2 or shape[1] != w.shape[1]:
        raise ValueError(f"input of shape {tuple(shape)} does not fit a weight of shape {w.shape}: "
                         f"expected (rows, {w.shape[1]})")
    return shape[0]


def quantize_rows(k: ModuleType, x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8 of a 2-D float32 ``x``: ``(q, scale)``, ``scale`` of shape (rows, 1)."""
    m, n = x.shape
    q, scale = _empty(m, n, dtype=_int8), _empty(m, 1)
    k.quantize_rows(x.data_ptr(), m, n, eps, q.data_ptr(), scale.data_ptr())
    return q, scale


def scale_rows_cols(k: ModuleType, acc: Tensor, row_scale: Tensor, col_scale: np.ndarray, bias: np.ndarray,
                    relu: bool) -> Tensor:
    """``acc * row_scale * col_scale + bias`` (then ReLU) for an int32 ``acc`` (rows, cols), ``row_scale`` (rows, 1)."""
    m = acc.shape[0]
    out = _empty(m, col_scale.shape[0])
    k.scale_rows_cols(acc.data_ptr(), m, row_scale.data_ptr(), col_scale, bias, relu, out.data_ptr())
    return out


def dynamic_linear(k: ModuleType, x: Tensor, w: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, relu: bool,
                   eps: float) -> Tensor:
    """The int8 dynamic Linear in two kernels (for few rows): the rows' codes (exact, as
    :func:`quantize_rows`), then the integer dot products, scales, bias and ReLU."""
    m = _check(x, w)
    q, scale, out = _empty(m, x.shape[1]), _empty(m), _empty(m, w.shape[0])
    k.quantize_rows_float(x.data_ptr(), m, x.shape[1], eps, q.data_ptr(), scale.data_ptr())
    k.dynamic_linear(q.data_ptr(), m, scale.data_ptr(), w, w_scale, bias, relu, out.data_ptr())
    return out


def linear_w8(k: ModuleType, x: Tensor, w: np.ndarray, w_scale: np.ndarray, bias: np.ndarray, relu: bool) -> Tensor:
    """``(x @ w.T) * w_scale + bias`` (then ReLU) for int8 ``w``, without a float copy of it (few rows)."""
    m = _check(x, w)
    out = _empty(m, w.shape[0])
    k.linear_w8(x.data_ptr(), m, w, w_scale, bias, relu, out.data_ptr())
    return out


def linear_half(k: ModuleType, x: Tensor, w_bits: np.ndarray, fp16: bool, bias: np.ndarray, relu: bool) -> Tensor:
    """``x @ w.T + bias`` (then ReLU) for bfloat16 / float16 ``w`` given as 16-bit patterns (few rows)."""
    m = _check(x, w_bits)
    out = _empty(m, w_bits.shape[0])
    k.linear_half(x.data_ptr(), m, w_bits, fp16, bias, relu, out.data_ptr())
    return out


def quantize_affine(k: ModuleType, x: Tensor, inv_scale: float, zero_point: int) -> Tensor:
    """``clamp(round(x * inv_scale) + zero_point, -128, 127)`` as int8, per tensor, any shape."""
    q = torch.empty_like(x, dtype=_int8)
    k.quantize_affine(x.data_ptr(), x.numel(), inv_scale, zero_point, q.data_ptr())
    return q


def dequantize_affine(k: ModuleType, q: Tensor, scale: float, zero_point: int) -> Tensor:
    """``(q - zero_point) * scale`` as float32, per tensor, any shape."""
    out = torch.empty_like(q, dtype=torch.float32)
    k.dequantize_affine(q.data_ptr(), q.numel(), scale, zero_point, out.data_ptr())
    return out


def requantize(k: ModuleType, acc: Tensor, multiplier: np.ndarray, offset: np.ndarray, low: int) -> Tensor:
    """``clamp(round(acc * multiplier + offset), low, 127)`` as int8, per output column."""
    m = acc.shape[0]
    q = _empty(m, multiplier.shape[0], dtype=_int8)
    k.requantize(acc.data_ptr(), m, multiplier, offset, low, q.data_ptr())
    return q


def static_linear(k: ModuleType, xq: Tensor, w: np.ndarray, multiplier: np.ndarray, offset: np.ndarray,
                  low: int) -> Tensor:
    """The int8 static Linear in one kernel (for few rows): int8 in, int8 out."""
    m = _check(xq, w)
    q = _empty(m, w.shape[0], dtype=_int8)
    k.static_linear(xq.data_ptr(), m, w, multiplier, offset, low, q.data_ptr())
    return q


def lookup(k: ModuleType, q: Tensor, table: np.ndarray) -> Tensor:
    """``table[q + 128]`` for int8 codes ``q`` of any shape and a 256-entry int8 ``table``."""
    out = torch.empty_like(q)
    k.lookup(q.data_ptr(), q.numel(), table, out.data_ptr())
    return out
