"""What the quantization passes left alone, and why: the skipped sites of their pass records.

``fxlab.records(gm).left_alone()`` then reads, for a CNN run through ``quantize-linear``::

    quantize-linear: conv1: Conv2d left in float32 (quantize-linear quantizes nn.Linear; use quantize-conv)
    quantize-linear: fc2: excluded by exclude='fc2'
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx, nn

from ...core import Selector, describe_selector
from ...nn.fused import LinearReLU
from ...pipeline import sites

__all__ = ["report_left_alone"]

_LINEARS = (nn.Linear, LinearReLU)
_CONVS = (nn.Conv1d, nn.Conv2d)


def _reason(label: str, module: nn.Module, quantizes: Callable[[nn.Module], bool], targets: Selector | None) -> str | None:
    kind = type(module).__name__
    if quantizes(module):
        return f"not selected by targets={describe_selector(targets)}" if targets is not None else None
    if label == "quantize-conv":
        if type(module) in _LINEARS:
            return f"{kind} left in float32 (quantize-conv quantizes nn.Conv1d / nn.Conv2d; use quantize-linear)"
        if isinstance(module, nn.modules.conv._ConvNd):
            return f"{kind} left in float32 (quantize-conv quantizes nn.Conv1d / nn.Conv2d)"
        return None
    if type(module) in _CONVS:
        return f"{kind} left in float32 ({label} quantizes nn.Linear; use quantize-conv)"
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"{kind} left in float32 ({label} quantizes nn.Linear)"
    return None


def report_left_alone(
    gm: fx.GraphModule,
    label: str,
    chosen: list[fx.Node],
    excluded: list[fx.Node],
    exclude: Selector | None,
    refused: dict[fx.Node, str] | None = None,
    *,
    quantizes: Callable[[nn.Module], bool],
    targets: Selector | None = None,
) -> None:
    """Record, in graph order, every weighted layer the pass ``label`` did not quantize, and why:
    excluded, refused (``refused[node]`` is the reason), not of the kind it quantizes (a conv for
    quantize-linear, a Linear for quantize-conv), or not matched by ``targets``. ``chosen`` nodes
    report themselves (rewritten, or skipped by :func:`fxlab.pipeline.sites.allow`)."""
    sites.looked(gm)
    refused = refused or {}
    done, dropped = set(chosen), set(excluded)
    for node in gm.graph.nodes:
        if node in done or node.op != "call_module":
            continue
        if node in dropped:
            sites.skipped(gm, node.name, f"excluded by exclude={describe_selector(exclude)}")
        elif node in refused:
            sites.skipped(gm, node.name, refused[node])
        else:
            reason = _reason(label, gm.get_submodule(str(node.target)), quantizes, targets)
            if reason is not None:
                sites.skipped(gm, node.name, reason)
