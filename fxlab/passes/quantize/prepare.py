"""Static quantization, first step: min/max observers around each selected Linear, then calibration.

:func:`insert_observers` puts a :class:`~fxlab.nn.quantized.MinMaxObserver` on the input and on
the output of each Linear (or fused ``LinearReLU``); :func:`calibrate` runs batches through the
graph so that the observers record the ranges :mod:`.convert` turns into int8 scales.

>>> import fxlab, torch
>>> from fxlab.models import build
>>> gm = fxlab.trace(build("mymodule").eval())
>>> nodes = [n for n in gm.graph.nodes if n.target == "layer1"]
>>> gm = insert_observers(gm, nodes)
>>> gm.layer1_input_observer
MinMaxObserver(per-tensor)
>>> calibrate(gm, [torch.randn(8, 1, 28, 28)])
>>> gm.layer1_input_observer.seen
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx

from ..._util import eval_mode, fresh_name, model_device
from ...errors import PassError
from ...nn.quantized import MinMaxObserver
from ...pipeline import sites

__all__ = ["calibrate", "check_not_observed", "check_one_call_each", "insert_observers"]


def check_one_call_each(nodes: list[fx.Node], label: str) -> None:
    """Refuse a Linear called more than once: one set of observers, hence scales, per call site."""
    paths = [str(n.target) for n in nodes]
    shared = sorted({p for p in paths if paths.count(p) > 1})
    if shared:
        raise PassError(
            f"{label}: static mode needs one call per Linear, but {', '.join(shared)} is called "
            "more than once; exclude it or quantize it with mode=dynamic"
        )


def _observed(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether an observer reads ``node``'s input or its output already."""
    def observer(n: object) -> bool:
        return (isinstance(n, fx.Node) and n.op == "call_module"
                and isinstance(gm.get_submodule(str(n.target)), MinMaxObserver))

    reads_observed = bool(node.args) and observer(node.args[0])
    return reads_observed or any(observer(u) for u in node.users)


def check_not_observed(gm: fx.GraphModule, nodes: list[fx.Node], label: str) -> None:
    """Refuse Linears that observers watch already: a second set would leave the first in the converted model."""
    observed = [n.name for n in nodes if _observed(gm, n)]
    if observed:
        more = f" and {len(observed) - 3} more" if len(observed) > 3 else ""
        raise PassError(
            f"{label}: observers watch {', '.join(observed[:3])}{more} already (quantize-prepare ran on this graph); "
            "run calibration batches through it and then quantize-convert, or exclude them"
        )


def insert_observers(gm: fx.GraphModule, nodes: list[fx.Node], label: str = "quantize-prepare") -> fx.GraphModule:
    """Observe the input and the output of each Linear node (``<node>_input_observer``, ``<node>_output_observer``),
    asking :func:`fxlab.pipeline.sites.allow` before each; ``PassError`` (naming the pass ``label``)
    if one is observed already."""
    check_not_observed(gm, nodes, label)
    graph = gm.graph
    for node in nodes:
        if not sites.allow(gm, node.name):
            continue
        sites.rewrote(gm, node.name)
        obs_in = _add_observer(gm, f"{node.name}_input_observer")
        obs_out = _add_observer(gm, f"{node.name}_output_observer")
        with graph.inserting_before(node):
            before = graph.call_module(obs_in, (node.args[0],))
        node.args = (before, *node.args[1:])
        with graph.inserting_after(node):
            after = graph.call_module(obs_out, (node,))
        node.replace_all_uses_with(after, delete_user_cb=lambda user, after=after: user is not after)
    gm.recompile()
    return gm


def _add_observer(gm: fx.GraphModule, base: str) -> str:
    name = fresh_name(gm, base)
    gm.add_submodule(name, MinMaxObserver().to(model_device(gm)))
    return name


def _batches(calibration: Any, label: str) -> Iterable[Any]:
    if isinstance(calibration, torch.Tensor):
        return [calibration]
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise PassError(
            f"{label}: calibration must be a tensor or an iterable of input batches, got {type(calibration).__name__}"
        )
    return calibration


@torch.no_grad()
def calibrate(gm: fx.GraphModule, calibration: Any, label: str = "quantize-linear") -> None:
    """Run the calibration batches (tensors, or ``(inputs, labels)`` pairs) through ``gm`` in eval mode.

    Every module's mode is restored afterwards. Raises ``PassError`` for a failing batch or no batch.
    """
    device = next((t.device for t in gm.parameters()), None)
    count = 0
    with eval_mode(gm):
        try:
            for batch in _batches(calibration, label):
                if isinstance(batch, (tuple, list)):  # (inputs, labels) pairs
                    batch = batch[0]
                if isinstance(batch, torch.Tensor) and device is not None:
                    batch = batch.to(device)
                gm(batch)
                count += 1
        except PassError:
            raise
        except Exception as exc:
            raise PassError(f"{label}: running a calibration batch failed: {type(exc).__name__}: {exc}") from exc
    if count == 0:
        raise PassError(f"{label}: the calibration data holds no batch; give at least one input batch")
