"""Fused CPU kernels for the quantized Linears (Numba), with the torch ops as the fallback.

On CPU a quantized Linear is a handful of small memory-bound steps around one fast GEMM:
per-row activation quantization before ``torch._int_mm``, scaling of its int32 result after, or
the int8 → float conversion of the weights. As eager torch ops each step is a pass over memory
and a dispatch (a few µs, and a hand-over between OpenMP threads), which costs more than the
GEMM saves. The kernels here do each step in one pass on the calling thread:

==================  ==============================================  ==============================
kernel              replaces                                        used by
==================  ==============================================  ==============================
``quantize_rows``   abs-max per row, reciprocal, scale, round,      ``Int8DynamicLinear``
                    cast (5-6 ops)                                  (> 8 rows)
``scale_rows_cols`` scale product, ``addcmul``, ReLU                ``Int8DynamicLinear`` (> 8)
``dynamic_linear``  all of the above and ``torch._int_mm``          ``Int8DynamicLinear`` (≤ 8)
``linear_w8``       int8 → float weights, GEMM, scale, bias, ReLU   ``Int8WeightOnlyLinear`` (≤ 8)
``linear_half``     bf16/fp16 → float weights, GEMM, bias, ReLU     ``HalfLinear`` (≤ 8)
``quantize_affine`` scale, round, zero point, clamp, cast           ``Quantize``
``requantize``      ``addcmul``, round, clamp, cast                 ``Int8StaticLinear`` (> 8)
``static_linear``   ``torch._int_mm`` and ``requantize``            ``Int8StaticLinear`` (≤ 8)
``dequantize_affine`` cast, zero point, scale                       ``Dequantize``
==================  ==============================================  ==============================

Integer dot products are exact, so the int8 kernels give the very codes and sums of the torch
path (``torch._int_mm``); the float ones differ from torch's GEMM only by summation order.

The kernels compute what the torch code computes, in float32 with round-half-to-even, and the
tests hold them to it. They are used for plain contiguous float32 CPU tensors outside autograd
and outside tracing/compilation (torch.export, torch.compile, FX tracing see the torch ops).
Numba is imported on the first quantized forward (not at ``import fxlab``); its compiled code is
cached on disk. ``FXLAB_KERNELS=torch`` in the environment, or :func:`disabled`, turns the
kernels off; without Numba installed the torch ops run, with the same results.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["arrays", "available", "disabled", "for_tensor"]

log = logging.getLogger(__name__)

_state = {"enabled": os.environ.get("FXLAB_KERNELS", "numba").strip().lower() != "torch"}


@functools.cache
def _load() -> ModuleType | None:
    try:
        from . import _numba_kernels
    except ImportError as exc:  # numba not installed (or broken): the torch ops do the work
        log.info("fused CPU kernels unavailable (%s); quantized Linears use torch ops", exc)
        return None
    return _numba_kernels


def available() -> bool:
    """Whether the fused kernels are enabled and Numba can be imported."""
    return _state["enabled"] and _load() is not None


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the torch ops instead of the fused kernels within this block (for comparisons).

    >>> from fxlab.nn import kernels
    >>> with kernels.disabled():
    ...     kernels.available()
    False
    """
    saved = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = saved


def for_tensor(x: Tensor) -> ModuleType | None:
    """The kernel module if ``x`` can take it (a plain contiguous CPU tensor, outside autograd,
    not being traced or compiled), else None."""
    if not _state["enabled"] or type(x) is not Tensor or not x.is_cpu or not x.is_contiguous():
        return None
    if (x.requires_grad and torch.is_grad_enabled()) or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    return _load()


_NO_ARRAY = np.empty(0, dtype=np.float32)


def _numpy(t: Tensor) -> np.ndarray:
    t = t.detach()
    half = t.dtype in (torch.bfloat16, torch.float16)
    return (t.view(torch.int16) if half else t).numpy()  # 16-bit patterns: NumPy has no bfloat16, Numba no float16


def arrays(module: nn.Module, *names: str) -> tuple[np.ndarray, ...]:
    """NumPy views of ``module``'s parameters / buffers ``names`` (a missing one: an empty array),
    cached on the module until one of them is replaced (in-place changes show through a view)."""
    tensors = [module._parameters.get(n, module._buffers.get(n)) for n in names]
    key = tuple(t.data_ptr() if t is not None else 0 for t in tensors)
    cached = module.__dict__.get("_fxlab_arrays")
    if cached is None or cached[0] != key:
        views = tuple(_numpy(t) if t is not None else _NO_ARRAY for t in tensors)
        cached = (key, views)  # the views hold their tensors: a live pointer is never reused
        module.__dict__["_fxlab_arrays"] = cached
    return cached[1]
