"""``quantize-conv``: swap ``nn.Conv2d`` / ``nn.Conv1d`` for the quantized convs of :mod:`fxlab.nn`.

The modes are quantize-linear's configs (:mod:`.configs`) minus static; how each applies to a conv
is a handler registered for the config's type, as for the Linears. Adding a scheme is a config, a
conv handler and a name in ``CONV_MODES``::

    @register_conv_handler(MyConfig)
    def _my_conv(conv: nn.Module, config: MyConfig) -> nn.Module: ...

    CONV_MODES["my-mode"] = MyConfig()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import fx, nn

from ..._util import set_submodule
from ...core import Selector, describe_selector, select
from ...errors import PassError, did_you_mean
from ...nn.fused import ConvReLU
from ...nn.quantized_conv import (
    HalfConv1d,
    HalfConv2d,
    Int8DynamicConv1d,
    Int8DynamicConv2d,
    Int8WeightOnlyConv1d,
    Int8WeightOnlyConv2d,
    conv_geometry,
)
from ...pipeline import Pass, register_pass, sites
from .._rewrite import require_finite, require_float32, require_values
from .configs import MODES, HalfConfig, Int8DynamicConfig, Int8WeightOnlyConfig, QuantConfig
from .report import report_left_alone
from .sensitivity import check_max_drop, within_max_drop

__all__ = ["CONV_MODES", "ConvHandler", "QuantizeConv", "register_conv_handler"]

#: ``handler(conv, config) -> module``: the quantized module standing for one float conv.
ConvHandler = Callable[[nn.Module, Any], nn.Module]
_CONV_HANDLERS: dict[type, ConvHandler] = {}

#: Mode name → config, for ``quantize-conv`` (quantize-linear's configs and budgets; no static).
CONV_MODES: dict[str, QuantConfig] = {name: MODES[name] for name in ("dynamic", "weight-only", "bf16", "fp16")}

_CONVS = (nn.Conv1d, nn.Conv2d)


def register_conv_handler(config_type: type) -> Callable[[ConvHandler], ConvHandler]:
    """Decorator: ``handler`` makes the quantized conv for configs of ``config_type``."""

    def decorate(handler: ConvHandler) -> ConvHandler:
        _CONV_HANDLERS[config_type] = handler
        return handler

    return decorate


def _two(conv: nn.Module, one: type, two: type) -> type:
    return one if len(conv.kernel_size) == 1 else two


@register_conv_handler(Int8DynamicConfig)
def _dynamic(conv: nn.Module, config: Int8DynamicConfig) -> nn.Module:
    return _two(conv, Int8DynamicConv1d, Int8DynamicConv2d).from_float(conv)


@register_conv_handler(Int8WeightOnlyConfig)
def _weight_only(conv: nn.Module, config: Int8WeightOnlyConfig) -> nn.Module:
    return _two(conv, Int8WeightOnlyConv1d, Int8WeightOnlyConv2d).from_float(conv)


@register_conv_handler(HalfConfig)
def _half(conv: nn.Module, config: HalfConfig) -> nn.Module:
    return _two(conv, HalfConv1d, HalfConv2d).from_float(conv, dtype=config.dtype)


def is_float_conv(module: nn.Module | None) -> bool:
    """A plain ``nn.Conv1d`` / ``nn.Conv2d`` (not a subclass with its own forward), or one fused with
    its ReLU by ``fuse-conv-relu`` (``ConvReLU``; the quantized module keeps the ReLU)."""
    return type(module) in _CONVS or (type(module) is ConvReLU and len(module.kernel_size) in (1, 2))


@register_pass
@dataclass
class QuantizeConv(Pass):
    """Swap nn.Conv2d and nn.Conv1d modules for quantized ones: int8 or half precision.

    ``mode`` is ``dynamic`` (int8 weights per output channel, int8 activations with one scale per
    sample, int32 GEMM), ``weight-only`` (int8 weights, float activations), ``bf16`` or ``fp16``
    (half weights); the budgets are quantize-linear's (0.3 points int8, 0.1 half). ``targets``
    selects the convs (default: all), ``exclude`` keeps some in float. A grouped conv, or one
    whose padding the int8 path cannot express, is left in float32 and reported as skipped.
    ``max_drop`` and ``data`` keep the most sensitive convs in float, as in quantize-linear.

    >>> import fxlab, torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
    ...                             torch.nn.Flatten(), torch.nn.Linear(8 * 28 * 28, 10)).eval()
    >>> gm = fxlab.apply(model, "quantize-conv{mode=dynamic}")
    >>> gm.get_submodule("0")
    Int8DynamicConv2d(1→8, k=3, padding=1, per-channel)
    >>> print(fxlab.records(gm).left_alone())
    quantize-conv: _3: Linear left in float32 (quantize-conv quantizes nn.Conv1d / nn.Conv2d; use quantize-linear)
    """

    name = "quantize-conv"
    kind = "approximate"

    mode: str
    targets: Selector | None = None
    exclude: Selector | None = None
    max_drop: float | None = None
    eval_images: int | None = None
    data: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in CONV_MODES:
            hint = " (static int8 is for Linears: quantize-linear{mode=static})" if self.mode == "static" else ""
            raise PassError(
                f"quantize-conv: unknown mode {self.mode!r}{hint}{did_you_mean(str(self.mode), CONV_MODES)}; "
                f"modes: {', '.join(CONV_MODES)}"
            )
        check_max_drop(self.name, self.max_drop, self.eval_images)

    @property
    def budget(self) -> float:  # type: ignore[override]
        """The accuracy drop (points) this pass may cost: ``max_drop`` when set, else the mode's budget
        (as quantize-linear's)."""
        return CONV_MODES[self.mode].budget if self.max_drop is None else self.max_drop

    @property
    def config(self) -> QuantConfig:
        """The config of this pass's mode."""
        return CONV_MODES[self.mode]

    def options(self) -> dict[str, Any]:
        """Options as pipeline text knows them (a selector left at None is the default; evaluation
        data is an input, not part of the pipeline)."""
        return {k: v for k, v in super().options().items()
                if k != "data" and not (k in ("targets", "exclude") and v is None)}

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes, excluded = self._select(gm)
        require_float32(self.name, [(str(n.target), gm.get_submodule(str(n.target))) for n in nodes])
        refused = {}
        for node in nodes:
            reason = conv_geometry(gm.get_submodule(str(node.target)))
            if isinstance(reason, str):
                refused[node] = reason
        chosen = [n for n in nodes if n not in refused]
        modules = [(str(n.target), gm.get_submodule(str(n.target))) for n in chosen]
        require_values(self.name, modules)
        require_finite(self.name, modules)
        quantized = chosen
        if chosen and self.max_drop is not None:
            quantized = within_max_drop(self, gm, chosen, lambda g, ns: quantize_convs(g, ns, self.config))
        quantize_convs(gm, quantized, self.config)
        report_left_alone(gm, self.name, chosen, excluded, self.exclude, refused,
                          quantizes=is_float_conv, targets=self.targets)
        return gm

    def _select(self, gm: fx.GraphModule) -> tuple[list[fx.Node], list[fx.Node]]:
        def conv(n: fx.Node) -> bool:
            return n.op == "call_module" and is_float_conv(gm.get_submodule(str(n.target)))

        if self.targets is None:
            nodes = [n for n in gm.graph.nodes if conv(n)]
        else:
            matched = select(gm, self.targets)
            nodes = [n for n in matched if conv(n)]
            if not nodes:
                raise PassError(f"quantize-conv: targets={describe_selector(self.targets)} matches no "
                                f"nn.Conv1d / nn.Conv2d, only {', '.join(n.name for n in matched[:5])}")
        excluded: list[fx.Node] = []
        if self.exclude is not None:
            dropped = set(select(gm, self.exclude))
            excluded = [n for n in nodes if n in dropped]
            nodes = [n for n in nodes if n not in dropped]
        return nodes, excluded


def quantize_convs(gm: fx.GraphModule, nodes: list[fx.Node], config: QuantConfig) -> fx.GraphModule:
    """Swap the conv module of each node for the one ``config``'s conv handler makes (asking
    :func:`fxlab.pipeline.sites.allow` first; a module called from several nodes is swapped once)."""
    handler = _CONV_HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(t.__name__ for t in _CONV_HANDLERS)
        raise PassError(f"no conv quantization handler for {type(config).__name__}; handlers exist for {known}")
    by_path: dict[str, list[fx.Node]] = {}
    for node in nodes:
        by_path.setdefault(str(node.target), []).append(node)
    for path, calls in by_path.items():
        if not sites.allow(gm, calls[0].name):
            continue
        set_submodule(gm, path, handler(gm.get_submodule(path), config))
        sites.rewrote(gm, *(n.name for n in calls))
    return gm
