"""Numba kernels behind :mod:`fxlab.nn.kernels` (imported only through it, on first use).

Each kernel makes one pass over memory where the eager torch version takes several ops, and
runs on the calling thread. The arithmetic is the torch reference's, in float32: the same
products, the same round-half-to-even (``np.rint``), so quantized codes match it exactly.

Activations (inputs and outputs, new every call) are passed as the addresses of contiguous
tensors plus their sizes, which costs a tenth of converting them to and from NumPy; the
module's constant tensors (weights, scales) are passed as cached NumPy views. The caller
(:mod:`fxlab.nn.kernels`) checks dtypes, contiguity and shapes before it hands over addresses.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

# reassociation lets LLVM vectorise the float dot products (no other fast-math: inf and NaN behave)
_JIT = {"cache": True, "nogil": True, "fastmath": {"reassoc", "contract", "nsz"}, "boundscheck": False,
        "error_model": "numpy"}
_EXACT = {"cache": True, "nogil": True, "boundscheck": False, "error_model": "numpy"}

_ABS_BITS = np.int32(0x7FFFFFFF)
_F127 = np.float32(127.0)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


# --------------------------------------------------------------------------------------------
# intrinsics: addresses → typed pointers, 16-bit float patterns → float32, int32 bits → float32


def _pointer_to(nbtype: types.Type):
    @intrinsic
    def pointer(typingctx, address):  # pragma: no cover - compiled
        result = types.CPointer(nbtype)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(result))

        return result(types.intp), codegen

    return pointer


_f32p = _pointer_to(types.float32)
_i32p = _pointer_to(types.int32)
_i8p = _pointer_to(types.int8)


@intrinsic
def _bits_to_f32(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose bits are the int32 ``bits``."""

    def codegen(context, builder, signature, args):
        value = args[0]
        if value.type.width != 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f16_to_f32(typingctx, bits):  # pragma: no cover - compiled
    """An int16 holding a float16's bits → that value as float32 (exact; F16C's vcvtph2ps)."""

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bf16_to_f32(typingctx, bits):  # pragma: no cover - compiled
    """An int16 holding a bfloat16's bits → that value as float32 (the top half of its bits)."""

    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(bits), codegen


@numba.njit(**_EXACT)
def _finish(y, bias, o, relu):  # pragma: no cover - compiled
    """Output ``o`` of a Linear: ``y + bias[o]`` (bias of length 0: none), then ReLU if asked."""
    if bias.shape[0] > 0:
        y += bias[o]
    if relu and y < _ZERO:
        y = _ZERO
    return y


# --------------------------------------------------------------------------------------------
# int8 dynamic


@numba.njit(**_EXACT)
def _row_absmax(x, i, k, eps):  # pragma: no cover - compiled
    """``max(max_j |x[i, j]|, eps)``, reduced over the bits of ``x`` with the sign cleared (a
    float's magnitude orders like those bits, and an integer max reduction vectorises)."""
    bits = x.view(np.int32)
    a = np.int32(0)
    for j in range(k):
        a = max(a, bits[i, j] & _ABS_BITS)
    # eps arrives as a Python float: a float64 here would carry the row's arithmetic into float64,
    # whose products round otherwise than the reference's float32 ones at a code's edge
    return max(_bits_to_f32(a), np.float32(eps))


@numba.njit(**_EXACT)
def _quantize_row(x, i, k, eps, q):  # pragma: no cover - compiled
    """Row ``i`` of ``x`` coded as :func:`quantize_rows` does, into ``q`` (k; int8 or float32 values);
    returns the row's scale. Called only from kernels compiled without fast-math: Numba compiles a
    callee with the flags of the caller that compiles it first (numba/numba#7168), and fast-math
    reassociates ``x * (127 * (1 / a))``, which rounds some products otherwise than the reference."""
    amax = _row_absmax(x, i, k, eps)
    inv = _F127 * (_ONE / amax)
    for j in range(k):
        q[j] = np.rint(x[i, j] * inv)
    return amax * (_ONE / _F127)


@numba.njit(**_EXACT)
def quantize_rows(x_at, m, k, eps, q_at, scale_at):  # pragma: no cover - compiled
    """Per-row symmetric int8 of a float32 (m, k): ``a = max(max|x|, eps)``,
    ``q = rint(x * (127 * (1 / a)))`` (int8), ``scale = a * (1 / 127)`` (m floats)."""
    x = numba.carray(_f32p(x_at), (m, k))
    q = numba.carray(_i8p(q_at), (m, k))
    scale = numba.carray(_f32p(scale_at), m)
    for i in range(m):
        scale[i] = _quantize_row(x, i, k, eps, q[i])


@numba.njit(**_EXACT)
def quantize_rows_float(x_at, m, k, eps, q_at, scale_at):  # pragma: no cover - compiled
    """:func:`quantize_rows`'s codes written as float32 (integer values, ready for a float GEMM or a
    fast-math kernel: no int8 → float pass), and the row scales (m floats)."""
    x = numba.carray(_f32p(x_at), (m, k))
    q = numba.carray(_f32p(q_at), (m, k))
    scale = numba.carray(_f32p(scale_at), m)
    for i in range(m):
        scale[i] = _quantize_row(x, i, k, eps, q[i])


@numba.njit(**_EXACT)
def scale_rows_cols(acc_at, m, row_scale_at, col_scale, bias, relu, out_at):  # pragma: no cover - compiled
    """``out = acc * (row_scale[i] * col_scale[o]) + bias[o]`` (bias of length 0: none), then
    ReLU if asked; ``acc`` int32 (m, n), ``n = len(col_scale)``."""
    n = col_scale.shape[0]
    acc = numba.carray(_i32p(acc_at), (m, n))
    row_scale = numba.carray(_f32p(row_scale_at), m)
    out = numba.carray(_f32p(out_at), (m, n))
    for i in range(m):
        r = row_scale[i]
        for o in range(n):
            out[i, o] = _finish(np.float32(acc[i, o]) * (r * col_scale[o]), bias, o, relu)


#: int8 × int8 products summed in float32 are exact while every partial sum stays below 2**24:
#: 1024 × 128 × 127 < 2**24, so longer dot products run in chunks of 1024 (Numba widens int32
#: arithmetic to int64, which AVX-512 multiplies slowly; float32 FMAs vectorise well).
_CHUNK = 1024


@numba.njit(**_JIT)
def _int_dot(a, w, o):  # pragma: no cover - compiled
    """Exact ``sum_j a[j] * w[o, j]`` for integer-valued float32 ``a`` (|a| <= 128), int8 ``w``."""
    k = a.shape[0]
    if k <= _CHUNK:
        acc = _ZERO
        for j in range(k):
            acc += a[j] * np.float32(w[o, j])
        return acc
    total = np.int64(0)
    for j0 in range(0, k, _CHUNK):
        part = _ZERO
        for j in range(j0, min(j0 + _CHUNK, k)):
            part += a[j] * np.float32(w[o, j])
        total += np.int64(part)
    return np.float32(total)


@numba.njit(**_JIT)
def dynamic_linear(q_at, m, row_scale_at, w, w_scale, bias, relu, out_at):  # pragma: no cover - compiled
    """The rest of the int8 dynamic Linear for a few rows, from the rows' codes (float32 (m, k), from
    :func:`quantize_rows_float`) and scales (m): exact integer dot products with the int8 ``w``
    (n, k) (what ``torch._int_mm`` computes), then ``acc * (scale * w_scale[o]) + bias[o]`` and ReLU
    if asked."""
    n, k = w.shape
    q = numba.carray(_f32p(q_at), (m, k))
    row_scale = numba.carray(_f32p(row_scale_at), m)
    out = numba.carray(_f32p(out_at), (m, n))
    for i in range(m):
        scale = row_scale[i]
        for o in range(n):
            out[i, o] = _finish(_int_dot(q[i], w, o) * (scale * w_scale[o]), bias, o, relu)


# --------------------------------------------------------------------------------------------
# float activations × int8 or half weights


@numba.njit(**_JIT)
def linear_w8(x_at, m, w, w_scale, bias, relu, out_at):  # pragma: no cover - compiled
    """``(x @ w.T) * w_scale + bias`` for float32 ``x`` (m, k), few rows, and int8 ``w`` (n, k)."""
    n, k = w.shape
    x = numba.carray(_f32p(x_at), (m, k))
    out = numba.carray(_f32p(out_at), (m, n))
    for i in range(m):
        for o in range(n):
            acc = _ZERO
            for j in range(k):
                acc += x[i, j] * np.float32(w[o, j])
            out[i, o] = _finish(acc * w_scale[o], bias, o, relu)


@numba.njit(**_EXACT)
def widen_half(w_bits, fp16):  # pragma: no cover - compiled
    """16-bit float patterns (int16) → float32 values, as ``linear_half`` reads them (for tests)."""
    flat = w_bits.reshape(-1)
    out = np.empty(flat.shape[0], dtype=np.float32)
    for j in range(flat.shape[0]):
        out[j] = _f16_to_f32(flat[j]) if fp16 else _bf16_to_f32(flat[j])
    return out


@numba.njit(**_JIT)
def linear_half(x_at, m, w_bits, fp16, bias, relu, out_at):  # pragma: no cover - compiled
    """``x @ w.T + bias`` for float32 ``x`` (m, k), few rows, and a bfloat16 / float16 (``fp16``)
    ``w`` given as its 16-bit patterns, each weight widened exactly to float32 as it is read."""
    n, k = w_bits.shape
    x = numba.carray(_f32p(x_at), (m, k))
    out = numba.carray(_f32p(out_at), (m, n))
    for i in range(m):
        for o in range(n):
            acc = _ZERO
            if fp16:
                for j in range(k):
                    acc += x[i, j] * _f16_to_f32(w_bits[o, j])
            else:
                for j in range(k):
                    acc += x[i, j] * _bf16_to_f32(w_bits[o, j])
            out[i, o] = _finish(acc, bias, o, relu)


# --------------------------------------------------------------------------------------------
# int8 static


@numba.njit(**_EXACT)
def quantize_affine(x_at, size, inv_scale, zero_point, q_at):  # pragma: no cover - compiled
    """Per-tensor affine int8 of ``size`` floats: ``clamp(rint(x * inv_scale) + zero_point, -128, 127)``."""
    x = numba.carray(_f32p(x_at), size)
    q = numba.carray(_i8p(q_at), size)
    inv = np.float32(inv_scale)
    zp = np.float32(zero_point)
    for j in range(size):
        v = np.rint(x[j] * inv) + zp
        q[j] = np.int8(min(max(v, np.float32(-128.0)), _F127))


@numba.njit(**_EXACT)
def dequantize_affine(q_at, size, scale, zero_point, out_at):  # pragma: no cover - compiled
    """``out = (q - zero_point) * scale`` for ``size`` int8 codes, per tensor."""
    q = numba.carray(_i8p(q_at), size)
    out = numba.carray(_f32p(out_at), size)
    s = np.float32(scale)
    zp = np.float32(zero_point)
    for j in range(size):
        out[j] = (np.float32(q[j]) - zp) * s


@numba.njit(**_EXACT)
def requantize(acc_at, m, multiplier, offset, low, q_at):  # pragma: no cover - compiled
    """int32 (m, n) → int8: ``clamp(rint(acc * multiplier[o] + offset[o]), low, 127)``."""
    n = multiplier.shape[0]
    acc = numba.carray(_i32p(acc_at), (m, n))
    q = numba.carray(_i8p(q_at), (m, n))
    lo = np.float32(low)
    for i in range(m):
        for o in range(n):
            v = np.rint(np.float32(acc[i, o]) * multiplier[o] + offset[o])
            q[i, o] = np.int8(min(max(v, lo), _F127))


@numba.njit(**_JIT)
def static_linear(xq_at, m, w, multiplier, offset, low, q_at):  # pragma: no cover - compiled
    """The int8 static Linear for a few rows: exact integer dot products of the int8 (m, k)
    input with the int8 ``w`` (n, k), then :func:`requantize`."""
    n, k = w.shape
    xq = numba.carray(_i8p(xq_at), (m, k))
    q = numba.carray(_i8p(q_at), (m, n))
    a = np.empty(k, dtype=np.float32)
    lo = np.float32(low)
    for i in range(m):
        for j in range(k):
            a[j] = np.float32(xq[i, j])
        for o in range(n):
            v = np.rint(_int_dot(a, w, o) * multiplier[o] + offset[o])
            q[i, o] = np.int8(min(max(v, lo), _F127))



@numba.njit(**_EXACT)
def lookup(q_at, size, table, out_at):  # pragma: no cover - compiled
    """``out[j] = table[q[j] + 128]`` for ``size`` int8 codes and a 256-entry int8 table."""
    q = numba.carray(_i8p(q_at), size)
    out = numba.carray(_i8p(out_at), size)
    for j in range(size):
        out[j] = table[np.int32(q[j]) + 128]
