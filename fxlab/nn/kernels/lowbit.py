"""Numba kernels of the low-bit Linears (:mod:`fxlab.nn.lowbit`): packed int4 / int2 weights.

Imported only through :func:`kernels` (on the first low-bit forward that may use them), under the
same guard as the int8 kernels (:func:`fxlab.nn.kernels.for_tensor`: Numba importable,
``FXLAB_KERNELS`` not ``torch``, a plain contiguous CPU tensor outside autograd and tracing).

Packed layout (what :func:`fxlab.nn.lowbit.pack` writes): a weight of shape (n, k) with ``bits``
bits a code is a uint8 array (n, nbytes = ceil(k · bits / 8)) of ``per = 8 // bits`` bit
planes: element ``j`` of a row sits in byte ``j % nbytes`` at bit ``(j // nbytes) · bits``, as
the unsigned code ``q + 2**(bits-1)`` (so decoding a plane reads and writes contiguously). ``scales`` is float32 (n, groups): element ``j`` has scale
``scales[o, j // group]``. The float weight is ``(code - offset) · scale``, computed in float32
exactly as the torch reference computes it, so :func:`dequantize` gives the very bits of
``fxlab.nn.lowbit.dequantize``.

==========================  ================================================  ===================
kernel                      computes                                          used for
==========================  ================================================  ===================
``dequantize``              the float32 weight (one pass over the packed      many rows: then
                            bytes, no intermediate tensors)                   ``F.linear``
``linear_packed``           ``x @ W.T + b`` (ReLU), each weight row decoded   few rows
                            into an L1 buffer once and dotted with every row
``dynamic_linear_packed``   per-row int8 codes of ``x`` × int4 ``W``: exact   few rows (int8-int4)
                            integer sums per group, then the scales
==========================  ================================================  ===================

int8-int4's activations are coded first by :mod:`.compiled`'s ``quantize_rows_float`` (without
fast-math, so the codes are the reference's).
"""

from __future__ import annotations

import numba
import numpy as np

from .compiled import _EXACT, _JIT, _ZERO, _f32p, _finish


@numba.njit(**_EXACT)
def _decode_codes(packed, o, bits, buf):  # pragma: no cover - compiled
    """The signed codes of row ``o`` as floats into ``buf`` (``packed.shape[1] * 8 // bits``
    floats, padding included): one contiguous pass per bit plane (it vectorises)."""
    nbytes = packed.shape[1]
    per = 8 // bits
    mask = np.int32((1 << bits) - 1)
    off = np.float32(1 << (bits - 1))
    for p in range(per):
        plane = buf[p * nbytes:(p + 1) * nbytes]
        shift = p * bits
        for b in range(nbytes):
            plane[b] = np.float32((np.int32(packed[o, b]) >> shift) & mask) - off


@numba.njit(**_EXACT)
def _group_end(g, groups, group, k):  # pragma: no cover - compiled
    return k if g == groups - 1 else (g + 1) * group


@numba.njit(**_EXACT)
def dequantize(packed, scales, k, group, bits, out_at):  # pragma: no cover - compiled
    """The float32 weight (n, k) of a packed one, written at ``out_at``: ``code * scale`` per
    element, the very products of the torch reference."""
    n = packed.shape[0]
    groups = scales.shape[1]
    out = numba.carray(_f32p(out_at), (n, k))
    buf = np.empty(packed.shape[1] * (8 // bits), dtype=np.float32)
    for o in range(n):
        _decode_codes(packed, o, bits, buf)
        row = out[o]
        for g in range(groups):
            s = scales[o, g]
            j0 = g * group
            src = buf[j0:_group_end(g, groups, group, k)]
            dst = row[j0:_group_end(g, groups, group, k)]
            for j in range(src.shape[0]):
                dst[j] = src[j] * s


@numba.njit(**_JIT)
def linear_packed(x_at, m, packed, scales, k, group, bits, bias, relu, out_at):  # pragma: no cover - compiled
    """``x @ W.T + bias`` (then ReLU) for float32 ``x`` (m, k) and a packed int4 / int2 ``W``:
    each weight row's codes decoded once, then per input row ``Σ_g s_g · Σ_{j∈g} x_j q_j``
    (the same function as ``F.linear`` on the dequantized weight; float32 rounding differs)."""
    n = packed.shape[0]
    groups = scales.shape[1]
    x = numba.carray(_f32p(x_at), (m, k))
    out = numba.carray(_f32p(out_at), (m, n))
    buf = np.empty(packed.shape[1] * (8 // bits), dtype=np.float32)
    for o in range(n):
        _decode_codes(packed, o, bits, buf)
        for i in range(m):
            xi = x[i]
            y = _ZERO
            for g in range(groups):
                j0 = g * group
                j1 = _group_end(g, groups, group, k)
                part = _ZERO
                xs, ws = xi[j0:j1], buf[j0:j1]  # slices: indices from 0 (no wraparound checks), so it vectorises
                for j in range(xs.shape[0]):
                    part += xs[j] * ws[j]
                y += part * scales[o, g]
            out[i, o] = _finish(y, bias, o, relu)


@numba.njit(**_JIT)
def dynamic_linear_packed(q_at, m, row_scale_at, packed, scales, k, group, bias, relu, out_at):  # pragma: no cover - compiled
    """int8 per-row activations × int4 group-wise weights for a few rows, from the rows' codes
    (float32 (m, k), from ``quantize_rows_float``, as ``fxlab.nn.quantized.quantize_rows`` computes
    them) and scales (m): per group the exact integer sum of code products (float32 holds it
    exactly: |sum| ≤ group · 127 · 8 < 2**24), times the group's scale; then the row's scale and
    the bias."""
    n = packed.shape[0]
    groups = scales.shape[1]
    q = numba.carray(_f32p(q_at), (m, k))
    row_scale = numba.carray(_f32p(row_scale_at), m)
    out = numba.carray(_f32p(out_at), (m, n))
    wq = np.empty(packed.shape[1] * 2, dtype=np.float32)
    for o in range(n):
        _decode_codes(packed, o, 4, wq)
        for i in range(m):
            qi = q[i]
            y = _ZERO
            for g in range(groups):
                j0 = g * group
                j1 = _group_end(g, groups, group, k)
                part = _ZERO
                xs, ws = qi[j0:j1], wq[j0:j1]  # slices: indices from 0 (no wraparound checks), so it vectorises
                for j in range(xs.shape[0]):
                    part += xs[j] * ws[j]
                y += part * scales[o, g]
            out[i, o] = _finish(y * row_scale[i], bias, o, relu)
