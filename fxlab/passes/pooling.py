"""Pooling passes (kind ``exact``)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.infra.pass_base import PassResult

from .._util import fresh_name
from ..nn.pool import MeasuredMaxPool2d, views_fit
from ..pipeline import Pass, register_pass, sites
from ._rewrite import ModuleUses, module_of, single_input

__all__ = ["SwapMaxPool"]

#: ``F.max_pool2d``'s parameters (it dispatches on ``return_indices`` to this signature).
_MAX_POOL2D = inspect.signature(F._max_pool2d)


def _functional_pool(node: fx.Node) -> tuple[fx.Node, nn.MaxPool2d] | str | None:
    """For an ``F.max_pool2d`` call: its input and an ``nn.MaxPool2d`` of its settings, or why it
    cannot become one (a setting computed in the graph); None for any other node."""
    if node.op != "call_function" or node.target not in (F.max_pool2d, F.max_pool2d_with_indices):
        return None
    if node.target is F.max_pool2d_with_indices:  # what tracing makes of return_indices=True
        return "return_indices=True: torch's max-pool is the only kernel; left alone"
    try:
        bound = _MAX_POOL2D.bind(*node.args, **node.kwargs)
    except TypeError as exc:
        return f"arguments not understood ({exc})"
    bound.apply_defaults()
    settings = dict(bound.arguments)
    x = settings.pop("input")
    if not isinstance(x, fx.Node) or _has_node(settings):
        return "a setting is computed in the graph"
    return x, nn.MaxPool2d(**settings)


_POOL_SETTINGS = ("kernel_size", "stride", "padding", "dilation")


def _as_pair(value: object) -> int | tuple[int, int] | list[int] | None:
    """A max-pool setting as torch reads it: an int or two ints as given, one int in a sequence
    stands for both sides; None when it is none of these."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = (value[0], value[0])
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if len(parts) in (1, 2) and all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return value  # type: ignore[return-value]
    return None


def _as_torch_reads(pool: nn.MaxPool2d) -> nn.MaxPool2d | str:
    """``pool``, or a new pool with its settings as torch reads them (an empty stride is the
    kernel size, ``[2]`` is ``(2, 2)``); or why a setting cannot be read."""
    given = {name: getattr(pool, name) for name in _POOL_SETTINGS}
    stride = given["stride"]
    read = dict(given, stride=given["kernel_size"] if stride is None or stride in ([], ()) else stride)
    for name, value in read.items():
        read[name] = _as_pair(value)
        if read[name] is None:
            return f"{name}={given[name]!r} is not one or two ints; left alone"
    if read == given:
        return pool
    return nn.MaxPool2d(**read, return_indices=pool.return_indices, ceil_mode=pool.ceil_mode)


def _has_node(value: object) -> bool:
    found: list[bool] = []
    fx.node.map_arg(value, lambda n: found.append(True) or n)  # type: ignore[arg-type]
    return bool(found)


@register_pass
@dataclass
class SwapMaxPool(Pass):
    """Swap each 2-D max-pool (``nn.MaxPool2d``, ``F.max_pool2d``) for :class:`~fxlab.nn.MeasuredMaxPool2d`:
    the same settings, whose CPU inference runs the faster of torch's max-pool and the elementwise
    maximum of the window's strided views, chosen by measurement (exactly the same values).

    A pool with padding, ``ceil_mode`` or ``return_indices``, or settings computed in the graph,
    is left alone (recorded, with the reason). A swapped module takes the pool module's place (no
    state: state-dict keys stay); an ``F.max_pool2d`` call becomes a call of a new module named
    after its node.

    >>> import fxlab, torch
    >>> from fxlab.passes import SwapMaxPool
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 5), torch.nn.MaxPool2d(2)).eval()
    >>> gm = fxlab.apply(model, [SwapMaxPool()])
    >>> print(fxlab.format_graph(gm))
    %input_1 = input
    %_0 = 0:Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))(%input_1)
    %_1 = 1:MeasuredMaxPool2d(k=2, stride=2)(%_0)
    return %_1
    >>> x = torch.randn(4, 1, 28, 28)
    >>> torch.equal(gm(x), model(x))
    True
    """

    name = "swap-max-pool"
    kind = "exact"

    def call(self, gm: fx.GraphModule) -> PassResult:
        sites.looked(gm)
        uses = ModuleUses(gm)
        changed = False
        for node in list(gm.graph.nodes):
            module = module_of(gm, node)
            if type(module) is nn.MaxPool2d:
                x, pool = single_input(node), module
                if x is None:
                    sites.skipped(gm, node.name, "called with more than its input")
                    continue
            else:
                found = _functional_pool(node)
                if found is None:
                    continue
                if isinstance(found, str):
                    sites.skipped(gm, node.name, found)
                    continue
                x, pool = found
            pool = _as_torch_reads(pool)
            if isinstance(pool, str):
                sites.skipped(gm, node.name, pool)
                continue
            why = views_fit(pool)
            if why is not None:
                sites.skipped(gm, node.name, f"{why}: torch's max-pool is the only kernel; left alone")
                continue
            if not sites.allow(gm, node.name):
                continue
            swapped = MeasuredMaxPool2d.from_pool(pool)
            if module is not None:
                uses.swap_module(node, swapped, "fast")
            else:
                path = fresh_name(gm, node.name)
                gm.add_submodule(path, swapped)
                node.op, node.target, node.args, node.kwargs = "call_module", path, (x,), {}
            sites.rewrote(gm, node.name)
            changed = True
        return PassResult(gm, changed)
