"""Numba kernels behind :mod:`fxlab.nn.kernels` (imported only through it, on first use).

Each kernel makes one pass over memory where the eager torch version takes several ops, and
runs on the calling thread. The arithmetic is the torch reference's, in float32: the same
products, the same round-half-to-even (``np.rint``), so quantized codes match it exactly.
"""

from __future__ import annotations

import numba
import numpy as np

# reassociation lets LLVM vectorise the float dot products (no other fast-math: inf and NaN behave)
_JIT = {"cache": True, "nogil": True, "fastmath": {"reassoc", "contract", "nsz"}, "boundscheck": False,
        "error_model": "numpy"}
_EXACT = {"cache": True, "nogil": True, "boundscheck": False, "error_model": "numpy"}

_ABS_BITS = np.int32(0x7FFFFFFF)
_F127 = np.float32(127.0)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@numba.njit(**_EXACT)
def quantize_rows(x, eps):  # pragma: no cover - compiled
    """Per-row symmetric int8 of a float32 (M, K) ``x``: ``(q, scale)`` with
    ``a = max(max|x|, eps)``, ``q = rint(x * (127 * (1 / a)))``, ``scale = a * (1 / 127)`` (M, 1).

    The row maximum is taken over the bits of ``x`` seen as int32 with the sign cleared (a
    float's magnitude orders like those bits, and an integer max reduction vectorises)."""
    m, k = x.shape
    x_bits = x.view(np.int32)
    q = np.empty((m, k), dtype=np.int8)
    scale = np.empty((m, 1), dtype=np.float32)
    scale_bits = scale.view(np.int32)
    for i in range(m):
        a = np.int32(0)
        for j in range(k):
            a = max(a, x_bits[i, j] & _ABS_BITS)
        scale_bits[i, 0] = a
        amax = max(scale[i, 0], eps)
        inv = _F127 * (_ONE / amax)
        for j in range(k):
            q[i, j] = np.int8(np.rint(x[i, j] * inv))
        scale[i, 0] = amax * (_ONE / _F127)
    return q, scale


@numba.njit(**_EXACT)
def scale_rows_cols(acc, row_scale, col_scale, bias, relu):  # pragma: no cover - compiled
    """``acc * (row_scale[i] * col_scale[o]) + bias[o]`` (bias of length 0: none), then ReLU if asked."""
    m, n = acc.shape
    out = np.empty((m, n), dtype=np.float32)
    has_bias = bias.shape[0] > 0
    for i in range(m):
        r = row_scale[i, 0]
        for o in range(n):
            y = np.float32(acc[i, o]) * (r * col_scale[o])
            if has_bias:
                y += bias[o]
            if relu and y < _ZERO:
                y = _ZERO
            out[i, o] = y
    return out


@numba.njit(**_JIT)
def linear_w8(x, w, w_scale, bias, relu):  # pragma: no cover - compiled
    """``(x @ w.T) * w_scale + bias`` for float32 ``x`` (few rows) and int8 ``w`` (N, K)."""
    m, k = x.shape
    n = w.shape[0]
    out = np.empty((m, n), dtype=np.float32)
    has_bias = bias.shape[0] > 0
    for i in range(m):
        for o in range(n):
            acc = _ZERO
            for j in range(k):
                acc += x[i, j] * np.float32(w[o, j])
            y = acc * w_scale[o]
            if has_bias:
                y += bias[o]
            if relu and y < _ZERO:
                y = _ZERO
            out[i, o] = y
    return out


@numba.njit(**_EXACT)
def _widen_half(w_bits, o, fp16, row, row_bits):  # pragma: no cover - compiled
    """Row ``o`` of 16-bit float patterns ``w_bits`` → float32 ``row`` (``row_bits``: same memory).

    bfloat16 is the top half of a float32. float16: ``(h & 0x7fff) << 13`` read as a float32 and
    scaled by 2**112 is the magnitude (subnormals included); then the sign, and inf/NaN kept."""
    k = row.shape[0]
    if not fp16:
        for j in range(k):
            row_bits[j] = (np.int32(w_bits[o, j]) & np.int32(0xFFFF)) << 16
        return
    for j in range(k):
        row_bits[j] = (np.int32(w_bits[o, j]) & np.int32(0x7FFF)) << 13
    for j in range(k):
        row[j] = row[j] * np.float32(5.192296858534828e33)  # 2**112
    for j in range(k):
        h = np.int32(w_bits[o, j])
        special = np.int32(0x7F800000) if (h & np.int32(0x7C00)) == np.int32(0x7C00) else np.int32(0)
        row_bits[j] = row_bits[j] | ((h & np.int32(0x8000)) << 16) | special


@numba.njit(**_JIT)
def linear_half(x, w_bits, fp16, bias, relu):  # pragma: no cover - compiled
    """``x @ w.T + bias`` for float32 ``x`` (few rows) and a bfloat16 / float16 (``fp16``) ``w``
    given as its 16-bit patterns, each weight row widened exactly to float32 in a scratch row."""
    m, k = x.shape
    n = w_bits.shape[0]
    out = np.empty((m, n), dtype=np.float32)
    row = np.empty(k, dtype=np.float32)
    row_bits = row.view(np.int32)
    has_bias = bias.shape[0] > 0
    for o in range(n):
        _widen_half(w_bits, o, fp16, row, row_bits)
        for i in range(m):
            acc = _ZERO
            for j in range(k):
                acc += x[i, j] * row[j]
            if has_bias:
                acc += bias[o]
            if relu and acc < _ZERO:
                acc = _ZERO
            out[i, o] = acc
    return out


@numba.njit(**_EXACT)
def quantize_affine(x, inv_scale, zero_point):  # pragma: no cover - compiled
    """Per-tensor affine int8 of a 2-D ``x``: ``clamp(rint(x * inv_scale) + zero_point, -128, 127)``."""
    m, k = x.shape
    q = np.empty((m, k), dtype=np.int8)
    inv = np.float32(inv_scale)
    zp = np.float32(zero_point)
    for i in range(m):
        for j in range(k):
            v = np.rint(x[i, j] * inv) + zp
            q[i, j] = np.int8(min(max(v, np.float32(-128.0)), _F127))
    return q


@numba.njit(**_EXACT)
def requantize(acc, multiplier, offset, low):  # pragma: no cover - compiled
    """int32 accumulator → int8: ``clamp(rint(acc * multiplier[o] + offset[o]), low, 127)``."""
    m, n = acc.shape
    q = np.empty((m, n), dtype=np.int8)
    lo = np.float32(low)
    for i in range(m):
        for o in range(n):
            v = np.rint(np.float32(acc[i, o]) * multiplier[o] + offset[o])
            q[i, o] = np.int8(min(max(v, lo), _F127))
    return q


@numba.njit(**_EXACT)
def dequantize_affine(q, scale, zero_point):  # pragma: no cover - compiled
    """``(q - zero_point) * scale`` as float32."""
    m, k = q.shape
    out = np.empty((m, k), dtype=np.float32)
    s = np.float32(scale)
    zp = np.float32(zero_point)
    for i in range(m):
        for j in range(k):
            out[i, j] = (np.float32(q[i, j]) - zp) * s
    return out


#: int8 × int8 products summed in float32 are exact while every partial sum stays below 2**24:
#: 1024 × 128 × 127 < 2**24, so dot products run in chunks of 1024 (numba would widen int32
#: arithmetic to int64, which AVX-512 multiplies slowly; float32 FMAs vectorise well).
_CHUNK = 1024


@numba.njit(**_JIT)
def _int_dot_long(a, w, o):  # pragma: no cover - compiled
    """Exact ``sum_j a[j] * w[o, j]`` in chunks of ``_CHUNK``, for K above it."""
    k = a.shape[0]
    total = np.int64(0)
    for j0 in range(0, k, _CHUNK):
        part = _ZERO
        for j in range(j0, min(j0 + _CHUNK, k)):
            part += a[j] * np.float32(w[o, j])
        total += np.int64(part)
    return np.float32(total)


@numba.njit(**_JIT)
def dynamic_linear(x, w, w_scale, bias, relu, eps):  # pragma: no cover - compiled
    """The whole int8 dynamic Linear for a few rows: quantize each row as :func:`quantize_rows`
    does, exact integer dot products with the int8 ``w`` (N, K) (what ``torch._int_mm``
    computes), then ``acc * (scale * w_scale[o]) + bias[o]`` and ReLU if asked."""
    m, k = x.shape
    n = w.shape[0]
    out = np.empty((m, n), dtype=np.float32)
    x_bits = x.view(np.int32)
    q = np.empty(k, dtype=np.float32)
    one = np.empty(1, dtype=np.float32)
    one_bits = one.view(np.int32)
    has_bias = bias.shape[0] > 0
    for i in range(m):
        a = np.int32(0)
        for j in range(k):
            a = max(a, x_bits[i, j] & _ABS_BITS)
        one_bits[0] = a
        amax = max(one[0], eps)
        inv = _F127 * (_ONE / amax)
        for j in range(k):
            q[j] = np.rint(x[i, j] * inv)
        scale = amax * (_ONE / _F127)
        for o in range(n):
            if k <= _CHUNK:  # exact in float32 (see _CHUNK)
                acc = _ZERO
                for j in range(k):
                    acc += q[j] * np.float32(w[o, j])
            else:
                acc = _int_dot_long(q, w, o)
            y = acc * (scale * w_scale[o])
            if has_bias:
                y += bias[o]
            if relu and y < _ZERO:
                y = _ZERO
            out[i, o] = y
    return out


@numba.njit(**_JIT)
def static_linear(xq, w, multiplier, offset, low):  # pragma: no cover - compiled
    """The int8 static Linear for a few rows: exact integer dot products of int8 ``xq`` with the
    int8 ``w`` (N, K), then :func:`requantize`."""
    m, k = xq.shape
    n = w.shape[0]
    out = np.empty((m, n), dtype=np.int8)
    a = np.empty(k, dtype=np.float32)
    lo = np.float32(low)
    for i in range(m):
        for j in range(k):
            a[j] = np.float32(xq[i, j])
        for o in range(n):
            if k <= _CHUNK:  # exact in float32 (see _CHUNK)
                acc = _ZERO
                for j in range(k):
                    acc += a[j] * np.float32(w[o, j])
            else:
                acc = _int_dot_long(a, w, o)
            v = np.rint(acc * multiplier[o] + offset[o])
            out[i, o] = np.int8(min(max(v, lo), _F127))
    return out
