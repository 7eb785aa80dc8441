"""How each config is applied: a handler registered for the config's type.

``handler(gm, nodes, config, calibration) -> gm`` applies ``config`` to the selected Linear
``nodes``. The dynamic, weight-only and half handlers swap modules; the static handler runs the
three steps of :mod:`.prepare` and :mod:`.convert` in one call (observe, calibrate, convert).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx, nn

from ..._util import set_submodule
from ...errors import PassError
from ...nn.fused import LinearReLU
from ...nn.lowbit import Float8WeightLinear, Int2WeightOnlyLinear, Int4WeightOnlyLinear, Int8Int4Linear
from ...nn.quantized import HalfLinear, Int8DynamicLinear, Int8WeightOnlyLinear
from ...pipeline import sites
from .configs import (
    Float8WeightConfig,
    HalfConfig,
    Int2WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8Int4Config,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    QuantConfig,
)
from .convert import convert_observed, observed_sites
from .prepare import calibrate, check_one_call_each, insert_observers

__all__ = ["Handler", "quantize_linears", "register_handler", "swap_linears"]

#: ``handler(gm, nodes, config, calibration) -> gm``: how a config is applied to the selected nodes.
Handler = Callable[[fx.GraphModule, list[fx.Node], Any, Any], fx.GraphModule]
_HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` applies configs of ``config_type``."""

    def decorate(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        return handler

    return decorate


def quantize_linears(
    gm: fx.GraphModule, nodes: list[fx.Node], config: QuantConfig, calibration: Any = None
) -> fx.GraphModule:
    """Apply ``config`` to the Linear ``nodes`` of ``gm`` through the handler of its type."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(t.__name__ for t in _HANDLERS)
        raise PassError(f"no quantization handler for {type(config).__name__}; handlers exist for {known}")
    return handler(gm, nodes, config, calibration)


def swap_linears(
    gm: fx.GraphModule, nodes: list[fx.Node], make: Callable[[nn.Module, bool], nn.Module]
) -> fx.GraphModule:
    """Replace the module of each node by ``make(linear, relu)`` (``relu``: it was a LinearReLU),
    asking :func:`fxlab.pipeline.sites.allow` first (a module called from several nodes: once)."""
    by_path: dict[str, list[fx.Node]] = {}
    for node in nodes:
        by_path.setdefault(str(node.target), []).append(node)
    for path, calls in by_path.items():
        if not sites.allow(gm, calls[0].name):
            continue
        linear = gm.get_submodule(path)
        set_submodule(gm, path, make(linear, isinstance(linear, LinearReLU)))
        sites.rewrote(gm, *(n.name for n in calls))
    return gm


@register_handler(Int8DynamicConfig)
def _dynamic(gm: fx.GraphModule, nodes: list[fx.Node], config: Int8DynamicConfig, calibration: Any) -> fx.GraphModule:
    return swap_linears(gm, nodes, lambda linear, relu: Int8DynamicLinear.from_float(linear, relu=relu))


@register_handler(Int8WeightOnlyConfig)
def _weight_only(
    gm: fx.GraphModule, nodes: list[fx.Node], config: Int8WeightOnlyConfig, calibration: Any
) -> fx.GraphModule:
    return swap_linears(gm, nodes, lambda linear, relu: Int8WeightOnlyLinear.from_float(linear, relu=relu))


@register_handler(HalfConfig)
def _half(gm: fx.GraphModule, nodes: list[fx.Node], config: HalfConfig, calibration: Any) -> fx.GraphModule:
    return swap_linears(gm, nodes, lambda linear, relu: HalfLinear.from_float(linear, relu=relu, dtype=config.dtype))


@register_handler(Int8StaticConfig)
def _static(gm: fx.GraphModule, nodes: list[fx.Node], config: Int8StaticConfig, calibration: Any) -> fx.GraphModule:
    """Observe each Linear, run the calibration batches, convert to int8 with Q/DQ nodes: what
    ``quantize-prepare``, the caller's calibration and ``quantize-convert`` do in three steps."""
    check_one_call_each(nodes, "quantize-linear")
    if calibration is None:
        raise PassError(
            "quantize-linear: mode=static needs calibration data: give QuantizeLinear(mode='static', "
            "calibration=batches) a few batches of real inputs (or (inputs, labels) pairs), or run "
            "quantize-prepare, then calibration batches through the prepared model, then quantize-convert"
        )
    gm = insert_observers(gm, nodes, "quantize-linear")
    calibrate(gm, calibration, "quantize-linear")
    for node, before, after in observed_sites(gm):
        if not (gm.get_submodule(str(before.target)).seen and gm.get_submodule(str(after.target)).seen):
            raise PassError(f"quantize-linear: calibration never reached {node.target}; check the calibration batches")
    return convert_observed(gm, label="quantize-linear", report=False)


@register_handler(Int4WeightOnlyConfig)
def _int4(gm: fx.GraphModule, nodes: list[fx.Node], config: Int4WeightOnlyConfig, calibration: Any) -> fx.GraphModule:
    return swap_linears(
        gm, nodes, lambda linear, relu: Int4WeightOnlyLinear.from_float(linear, relu=relu, group_size=config.group_size)
    )


@register_handler(Int8Int4Config)
def _int8_int4(gm: fx.GraphModule, nodes: list[fx.Node], config: Int8Int4Config, calibration: Any) -> fx.GraphModule:
    return swap_linears(
        gm, nodes, lambda linear, relu: Int8Int4Linear.from_float(linear, relu=relu, group_size=config.group_size)
    )


@register_handler(Float8WeightConfig)
def _fp8(gm: fx.GraphModule, nodes: list[fx.Node], config: Float8WeightConfig, calibration: Any) -> fx.GraphModule:
    return swap_linears(gm, nodes, lambda linear, relu: Float8WeightLinear.from_float(linear, relu=relu))


@register_handler(Int2WeightOnlyConfig)
def _int2(gm: fx.GraphModule, nodes: list[fx.Node], config: Int2WeightOnlyConfig, calibration: Any) -> fx.GraphModule:
    return swap_linears(
        gm, nodes, lambda linear, relu: Int2WeightOnlyLinear.from_float(linear, relu=relu, group_size=config.group_size)
    )
