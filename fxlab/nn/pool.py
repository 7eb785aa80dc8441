"""2-D max-pooling whose kernel is chosen by measurement (swapped in by ``swap-max-pool``).

torch's CPU max-pool on an NCHW tensor finds each window's maximum element by element and keeps
its index; on the bench machine it took 3.7 ms for a 256×6×28×28 batch that a ReLU passes over in
0.06 ms, and 28 ms for 256×64×24×24 (channels-last: 2.7 ms). Without padding or ``ceil_mode``,
the same maxima are the elementwise ``torch.maximum`` of the ``kh·kw`` strided views of the input
(one per position in the window): a few passes at memory speed, exactly the same values.
Which one is faster depends on the CPU, the layout and the shape, so
:mod:`fxlab.nn.kernels.choice` times both (op ``max-pool``, exact) on CPU inference; elsewhere
(autograd, CUDA, tracing, export) torch's max-pool runs.

>>> import torch
>>> pool = MeasuredMaxPool2d(2)
>>> x = torch.randn(2, 3, 8, 8)
>>> pool, torch.equal(pool(x), torch.nn.functional.max_pool2d(x, 2))
(MeasuredMaxPool2d(k=2, stride=2), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .._util import DirectCall
from ..core import LeafModule
from .kernels import choice

__all__ = ["MeasuredMaxPool2d", "views_fit"]


def views_fit(pool: nn.MaxPool2d) -> str | None:
    """None when the strided-views kernel computes ``pool``, else why not (torch's max-pool only)."""
    if pool.return_indices:
        return "return_indices=True"
    if any(_pair(pool.padding)):
        return f"padding={pool.padding}"
    if pool.ceil_mode:
        return "ceil_mode=True"
    return None


def _pool_torch(m: MeasuredMaxPool2d, x: Tensor) -> Tensor:
    return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def _pool_views(m: MeasuredMaxPool2d, x: Tensor) -> Tensor:
    """The elementwise maximum of the window's strided views of ``x`` (no padding, floor mode)."""
    (kh, kw), (sh, sw), (dh, dw) = m._pairs
    h, w = x.shape[-2:]
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"a {h}×{w} input is smaller than the {kh}×{kw} window")
    views = [x[..., i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
             for i in range(kh) for j in range(kw)]
    if len(views) == 1:
        return views[0].clone()
    out = torch.maximum(views[0], views[1])
    for v in views[2:]:
        torch.maximum(out, v, out=out)
    return out


MAX_POOL_OP = choice.Op("max-pool", [
    choice.Candidate("torch", _pool_torch, note="torch's max_pool2d"),
    choice.Candidate("views", _pool_views),
], exact=True)


class MeasuredMaxPool2d(DirectCall, nn.MaxPool2d, LeafModule):
    """An ``nn.MaxPool2d`` (same settings, no state) whose CPU inference runs the faster of
    torch's max-pool and the strided-views maximum (:mod:`fxlab.nn.pool`); only for pools
    :func:`views_fit` accepts. Printed ``MeasuredMaxPool2d(k=2, stride=2)``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        why = views_fit(self)
        if why is not None:
            raise ValueError(f"{type(self).__name__} computes max-pools without {why} only")
        kernel, stride = _pair(self.kernel_size), _pair(self.stride if self.stride is not None else self.kernel_size)
        self._pairs = (kernel, stride, _pair(self.dilation))
        # a kernel-choice bucket adds this to the input's shape: "maxk2x2s2x2" (then "d2x2" if dilated)
        self._bucket = f"maxk{kernel[0]}x{kernel[1]}s{stride[0]}x{stride[1]}"
        if self._pairs[2] != (1, 1):
            self._bucket += "d{}x{}".format(*self._pairs[2])

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> MeasuredMaxPool2d:
        """The ``MeasuredMaxPool2d`` with ``pool``'s settings."""
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        c = choice.choose(MAX_POOL_OP, self, x, self._bucket) if x.dim() == 4 else None
        return (c.fn if c is not None else _pool_torch)(self, x)

    def extra_repr(self) -> str:
        def text(pair: tuple[int, int]) -> str:
            return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}×{pair[1]}"

        kernel, stride, dilation = self._pairs
        return ", ".join([f"k={text(kernel)}", f"stride={text(stride)}",
                          *([f"dilation={text(dilation)}"] if dilation != (1, 1) else [])])
