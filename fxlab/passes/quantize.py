"""Quantization passes: swap ``nn.Linear`` (and fused ``LinearReLU``) for quantized Linears.

In the style of torchao's ``quantize_(model, Config(), filter_fn)``: *what* to do is a small
config object, *how* is a handler registered for that config's type. A mode name maps to a
config; adding a scheme is adding a config, its handler and its name — nothing else changes::

    @dataclass(frozen=True)
    class MyConfig(QuantConfig):
        budget: ClassVar[float] = 0.3

    @register_handler(MyConfig)
    def _my_handler(gm, nodes, config, calibration): ...

    MODES["my-mode"] = MyConfig()

Static mode needs calibration batches; :func:`structure_only` rebuilds the structure of a
static model without them (placeholder scales that a following ``load_state_dict`` replaces).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import PassError, did_you_mean
from ..core import Selector, describe_selector, module_text, select, target_name
from ..nn.fused import LinearReLU
from ..nn.quantized import (
    HalfLinear,
    Int8Table,
    Int8DynamicLinear,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    MinMaxObserver,
)
from ..pipeline import Pass, register_pass

__all__ = [
    "HalfConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "Int8WeightOnlyConfig",
    "QuantConfig",
    "QuantizeLinear",
    "quantize_linears",
    "register_handler",
    "structure_only",
]


# --------------------------------------------------------------------------------------------
# configs: what each mode does


@dataclass(frozen=True)
class QuantConfig:
    """Base of the mode configs; ``budget`` is the accuracy drop (points) the mode may cost."""

    budget: ClassVar[float] = 0.0


@dataclass(frozen=True)
class Int8DynamicConfig(QuantConfig):
    """int8 weights per output channel; activations quantized per row at run time."""

    budget: ClassVar[float] = 0.3


@dataclass(frozen=True)
class Int8WeightOnlyConfig(QuantConfig):
    """int8 weights per output channel; activations stay float."""

    budget: ClassVar[float] = 0.3


@dataclass(frozen=True)
class HalfConfig(QuantConfig):
    """Weights in a half dtype (bias float32); input and output float32."""

    budget: ClassVar[float] = 0.1
    dtype: torch.dtype = torch.bfloat16


@dataclass(frozen=True)
class Int8StaticConfig(QuantConfig):
    """int8 weights and activations, activation scales fixed by calibration (min/max observers)."""

    budget: ClassVar[float] = 0.5


#: Mode name (as in ``QuantizeLinear(mode=...)`` and pipeline text) → its config.
MODES: dict[str, QuantConfig] = {
    "dynamic": Int8DynamicConfig(),
    "weight-only": Int8WeightOnlyConfig(),
    "bf16": HalfConfig(torch.bfloat16),
    "fp16": HalfConfig(torch.float16),
    "static": Int8StaticConfig(),
}

#: ``handler(gm, nodes, config, calibration) -> gm``: how a config is applied to the selected nodes.
Handler = Callable[[fx.GraphModule, list[fx.Node], Any, Any], fx.GraphModule]
_HANDLERS: dict[type, Handler] = {}


def register_handler(config_type: type) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` applies configs of ``config_type``."""

    def decorate(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        return handler

    return decorate


# --------------------------------------------------------------------------------------------
# structure-only rebuilding (for loaders that re-run a pipeline, then load the state dict)

_STRUCTURE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("fxlab_quantize_structure_only", default=False)


@contextlib.contextmanager
def structure_only() -> Iterator[None]:
    """Within this block, static quantization needs no calibration and uses placeholder scales.

    For rebuilding a saved model: re-run its pipeline here, then ``load_state_dict`` the saved
    weights, which brings the real scales (every scale and zero point is a state-dict buffer).

    >>> import fxlab
    >>> from fxlab.models import build
    >>> from fxlab.passes import QuantizeLinear
    >>> with structure_only():
    ...     gm = fxlab.apply(build("mymodule"), "quantize-linear{mode=static}")
    """
    token = _STRUCTURE_ONLY.set(True)
    try:
        yield
    finally:
        _STRUCTURE_ONLY.reset(token)


# --------------------------------------------------------------------------------------------
# the pass


def _is_linear(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Linear, LinearReLU))


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


@register_pass
@dataclass
class QuantizeLinear(Pass):
    """Swap nn.Linear (and fused LinearReLU) modules for quantized ones: int8 or half precision.

    ``mode`` is one of ``dynamic``, ``weight-only``, ``bf16``, ``fp16``, ``static`` (see ``MODES``);
    ``targets`` selects the Linears (default: all), ``exclude`` keeps some in float;
    ``calibration`` (static mode) is an iterable of input batches, or of ``(inputs, labels)``.
    The accuracy ``budget`` depends on the mode: 0.3 points for int8 dynamic / weight-only, 0.5
    for static, 0.1 for bf16 / fp16.

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> from fxlab.passes import QuantizeLinear
    >>> model = build("mymodule").eval()
    >>> gm = fxlab.apply(model, [QuantizeLinear(mode="dynamic", exclude="layer3")])
    >>> gm.layer1
    Int8DynamicLinear(784→128, per-channel)
    >>> x = torch.randn(64, 1, 28, 28)
    >>> bool((gm(x) - model(x)).abs().max() < 0.1)
    True
    >>> calib = [torch.randn(64, 1, 28, 28) for _ in range(4)]
    >>> gm = fxlab.apply(model, [QuantizeLinear(mode="static", calibration=calib)])
    >>> print(fxlab.format_graph(gm).splitlines()[2])
    %layer1_input_quant = layer1.input_quant:Quantize(int8, per-tensor)(%flatten)
    """

    name = "quantize-linear"
    kind = "approximate"

    mode: str
    targets: Selector | None = None
    exclude: Selector | None = None
    calibration: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise PassError(
                f"quantize-linear: unknown mode {self.mode!r}{did_you_mean(str(self.mode), MODES)}; "
                f"modes: {', '.join(MODES)}"
            )

    @property
    def budget(self) -> float:  # type: ignore[override]
        """The accuracy drop (points) this pass may cost: the mode's budget."""
        return MODES[self.mode].budget

    @property
    def config(self) -> QuantConfig:
        """The config of this pass's mode."""
        return MODES[self.mode]

    def options(self) -> dict[str, Any]:
        """Options as pipeline text knows them: calibration data is an input, not part of the
        pipeline, and a selector left at None means the default (every Linear; exclude nothing)."""
        options = super().options()
        del options["calibration"]
        return {k: v for k, v in options.items() if not (k in ("targets", "exclude") and v is None)}

    def calibrated(self, batches: Any) -> QuantizeLinear:
        """A copy of this pass with ``calibration=batches`` (same options, same pipeline text)."""
        other = copy.copy(self)
        other.calibration = batches
        return other

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes = select_linears(gm, self.targets, self.exclude)
        return quantize_linears(gm, nodes, self.config, self.calibration)


def quantize_linears(
    gm: fx.GraphModule, nodes: list[fx.Node], config: QuantConfig, calibration: Any = None
) -> fx.GraphModule:
    """Apply ``config`` to the Linear ``nodes`` of ``gm`` through the handler of its type."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(t.__name__ for t in _HANDLERS)
        raise PassError(f"no quantization handler for {type(config).__name__}; handlers exist for {known}")
    return handler(gm, nodes, config, calibration)


def select_linears(gm: fx.GraphModule, targets: Selector | None, exclude: Selector | None) -> list[fx.Node]:
    """The float32 Linear nodes to quantize: ``targets`` (default: every Linear) minus ``exclude``."""
    if targets is None:
        nodes = [n for n in gm.graph.nodes if _is_linear(_module(gm, n))]
        if not nodes:
            raise PassError(f"quantize-linear: {_no_linear_reason(gm)}")
    else:
        matched = select(gm, targets)
        nodes = [n for n in matched if _is_linear(_module(gm, n))]
        if not nodes:
            what = ", ".join(f"{n.name} ({_describe(gm, n)})" for n in matched[:5])
            raise PassError(
                f"quantize-linear: targets={describe_selector(targets)} matches no nn.Linear, only {what}"
            )
    if exclude is not None:
        dropped = set(select(gm, exclude))
        nodes = [n for n in nodes if n not in dropped]
        if not nodes:
            raise PassError(
                f"quantize-linear: exclude={describe_selector(exclude)} leaves no Linear to quantize"
            )
    for n in nodes:
        weight = _module(gm, n).weight
        if weight.dtype != torch.float32:
            raise PassError(
                f"quantize-linear: {n.target} holds {str(weight.dtype).replace('torch.', '')} weights; "
                "quantize-linear quantizes float32 models: convert with model.float() first"
            )
    return nodes


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    module = _module(gm, node)
    if module is not None:
        return module_text(module)
    return node.op if node.op in ("placeholder", "output") else target_name(node)


def _no_linear_reason(gm: fx.GraphModule) -> str:
    done = [
        f"{path} ({type(m).__name__})"
        for path, m in gm.named_modules()
        if isinstance(m, (Int8DynamicLinear, Int8WeightOnlyLinear, Int8StaticLinear, HalfLinear))
    ]
    if done:
        return (
            f"the model has no float nn.Linear left to quantize; already quantized: {', '.join(done[:6])}"
            f"{' …' if len(done) > 6 else ''}"
        )
    kinds = sorted({type(m).__name__ for p, m in gm.named_modules() if p})
    return f"the model has no nn.Linear to quantize (its modules: {', '.join(kinds) or 'none'})"


# --------------------------------------------------------------------------------------------
# handlers: how each config is applied


def swap_linears(
    gm: fx.GraphModule, nodes: list[fx.Node], make: Callable[[nn.Module, bool], nn.Module]
) -> fx.GraphModule:
    """Replace the module of each node by ``make(linear, relu)`` (``relu``: it was a LinearReLU)."""
    for path in dict.fromkeys(str(n.target) for n in nodes):
        linear = gm.get_submodule(path)
        _set_submodule(gm, path, make(linear, isinstance(linear, LinearReLU)))
    return gm


def _set_submodule(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


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
    """Insert min/max observers around each Linear, calibrate, then convert to int8 with Q/DQ nodes."""
    paths = [str(n.target) for n in nodes]
    shared = sorted({p for p in paths if paths.count(p) > 1})
    if shared:
        raise PassError(
            f"quantize-linear: static mode needs one call per Linear, but {', '.join(shared)} is called "
            "more than once; exclude it or quantize it with mode=dynamic"
        )
    structure_only_ = _STRUCTURE_ONLY.get()
    if calibration is None and not structure_only_:
        raise PassError(
            "quantize-linear: mode=static needs calibration data: QuantizeLinear(mode='static', "
            "calibration=batches) with a few batches of real inputs (or (inputs, labels) pairs); "
            "to rebuild a saved model's structure without data, run it under "
            "fxlab.passes.quantize.structure_only()"
        )
    graph = gm.graph
    observed: list[tuple[fx.Node, fx.Node, fx.Node]] = []
    for node in nodes:
        obs_in = _add_module(gm, f"{node.name}_input_observer", MinMaxObserver())
        obs_out = _add_module(gm, f"{node.name}_output_observer", MinMaxObserver())
        with graph.inserting_before(node):
            before = graph.call_module(obs_in, (node.args[0],))
        node.args = (before, *node.args[1:])
        with graph.inserting_after(node):
            after = graph.call_module(obs_out, (node,))
        node.replace_all_uses_with(after, delete_user_cb=lambda user, after=after: user is not after)
        observed.append((node, before, after))
    gm.recompile()

    if not structure_only_:
        _calibrate(gm, calibration)

    for node, before, after in observed:
        path = str(node.target)
        linear = gm.get_submodule(path)
        obs_in, obs_out = gm.get_submodule(str(before.target)), gm.get_submodule(str(after.target))
        if not structure_only_ and not (obs_in.seen and obs_out.seen):
            raise PassError(f"quantize-linear: calibration never reached {path}; check the calibration batches")
        ranges = {}
        if not structure_only_:
            ranges = {
                "input_range": (float(obs_in.min_val), float(obs_in.max_val)),
                "output_range": (float(obs_out.min_val), float(obs_out.max_val)),
            }
        _set_submodule(gm, path, Int8StaticLinear.from_float(linear, relu=isinstance(linear, LinearReLU), **ranges))
        with graph.inserting_before(before):
            quant = graph.call_module(f"{path}.input_quant", before.args)
        before.replace_all_uses_with(quant)
        with graph.inserting_before(after):
            dequant = graph.call_module(f"{path}.output_dequant", after.args)
        after.replace_all_uses_with(dequant)
        for obs in (before, after):
            graph.erase_node(obs)
            gm.delete_submodule(str(obs.target))
    paths = {str(node.target) for node, _, _ in observed}
    _chain_int8(gm, paths)
    _int8_tables(gm, paths)
    return gm


def _chain_int8(gm: fx.GraphModule, paths: set[str]) -> None:
    """Drop each ``output_dequant → input_quant`` pair between two int8 Linears.

    Where one int8 Linear's output feeds only the next one, both observers saw the same tensor,
    so the two modules hold the same scale and zero point and quantize(dequantize(q)) is q: the
    int8 values flow straight on, and the graph keeps a quantize node where float enters the int8
    chain and a dequantize node where it leaves (or forks, or meets a float op such as GELU).
    """
    graph = gm.graph
    for quant in list(graph.nodes):
        if quant.op != "call_module" or not str(quant.target).endswith(".input_quant"):
            continue
        dequant = quant.args[0]
        if not (isinstance(dequant, fx.Node) and dequant.op == "call_module" and len(dequant.users) == 1):
            continue
        producer, _, kind = str(dequant.target).rpartition(".")
        if kind != "output_dequant" or producer not in paths or str(quant.target).rpartition(".")[0] not in paths:
            continue
        out_q, in_q = gm.get_submodule(str(dequant.target)), gm.get_submodule(str(quant.target))
        if not (torch.equal(out_q.scale, in_q.scale) and torch.equal(out_q.zero_point, in_q.zero_point)):
            continue
        quant.replace_all_uses_with(dequant.args[0])
        graph.erase_node(quant)
        graph.erase_node(dequant)


#: Elementwise float functions that may run between two int8 Linears as a 256-entry table.
_TABLE_FUNCTIONS: dict[Any, str] = {
    F.gelu: "gelu", F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
    F.silu: "silu", F.mish: "mish", F.elu: "elu", F.selu: "selu", F.leaky_relu: "leaky_relu",
    F.hardtanh: "hardtanh", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.softplus: "softplus",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
}
_TABLE_MODULES = (nn.GELU, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Mish, nn.ELU, nn.SELU, nn.LeakyReLU, nn.Hardtanh,
                  nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Sigmoid, nn.Tanh)
_TABLE_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}


def _table_function(gm: fx.GraphModule, node: fx.Node) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]] | None:
    """``(name, fn)`` if ``node`` applies a known elementwise function to its first argument only."""
    inputs: list[fx.Node] = []
    fx.node.map_arg((node.args[1:], node.kwargs), inputs.append)
    if inputs:  # other tensors take part: not a function of this one alone
        return None
    args, kwargs = node.args[1:], dict(node.kwargs)
    if node.op == "call_function" and node.target in _TABLE_FUNCTIONS:
        target = node.target
        return _TABLE_FUNCTIONS[target], lambda x: target(x, *args, **kwargs)
    if node.op == "call_method" and node.target in _TABLE_METHODS:
        method = str(node.target)
        return _TABLE_METHODS[method], lambda x: getattr(x, method)(*args, **kwargs)
    if node.op == "call_module" and not args and not kwargs:
        module = gm.get_submodule(str(node.target))
        if type(module) in _TABLE_MODULES:
            return type(module).__name__.lower(), module
    return None


def _int8_tables(gm: fx.GraphModule, paths: set[str]) -> None:
    """Replace ``output_dequant → elementwise fn → input_quant`` between two int8 Linears by an
    :class:`~fxlab.nn.quantized.Int8Table`: ``quantize(fn(dequantize(q)))`` for all 256 codes, equal
    to the three steps on every input, so the activations stay int8 across a GELU and the like."""
    graph = gm.graph
    for quant in list(graph.nodes):
        if quant.op != "call_module" or not str(quant.target).endswith(".input_quant"):
            continue
        if str(quant.target).rpartition(".")[0] not in paths:
            continue
        op = quant.args[0]
        if not (isinstance(op, fx.Node) and len(op.users) == 1 and op.args and isinstance(op.args[0], fx.Node)):
            continue
        dequant = op.args[0]
        producer, _, kind = str(dequant.target).rpartition(".")
        if not (dequant.op == "call_module" and kind == "output_dequant" and producer in paths and len(dequant.users) == 1):
            continue
        found = _table_function(gm, op)
        if found is None:
            continue
        name, fn = found
        table = Int8Table.build(name, fn, gm.get_submodule(str(dequant.target)), gm.get_submodule(str(quant.target)))
        path = _add_module(gm, f"{op.name}_int8", table)
        with graph.inserting_before(quant):
            lookup = graph.call_module(path, (dequant.args[0],))
        quant.replace_all_uses_with(lookup)
        old_module = str(op.target) if op.op == "call_module" else None
        for node in (quant, op, dequant):
            graph.erase_node(node)
        if old_module and not any(n.op == "call_module" and n.target == old_module for n in graph.nodes):
            gm.delete_submodule(old_module)


def _add_module(gm: fx.GraphModule, name: str, module: nn.Module) -> str:
    candidate, i = name, 1
    while hasattr(gm, candidate):
        candidate, i = f"{name}_{i}", i + 1
    gm.add_submodule(candidate, module)
    return candidate


def _batches(calibration: Any) -> Iterable[Any]:
    if isinstance(calibration, torch.Tensor):
        return [calibration]
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable):
        raise PassError(
            f"quantize-linear: calibration must be a tensor or an iterable of input batches, "
            f"got {type(calibration).__name__}"
        )
    return calibration


@torch.no_grad()
def _calibrate(gm: fx.GraphModule, calibration: Any) -> None:
    """Run the calibration batches through ``gm`` in eval mode (then restore each module's mode)."""
    modes = {m: m.training for m in gm.modules()}
    device = next((t.device for t in gm.parameters()), None)
    gm.eval()
    count = 0
    try:
        for batch in _batches(calibration):
            if isinstance(batch, (tuple, list)):  # (inputs, labels) pairs
                batch = batch[0]
            if isinstance(batch, torch.Tensor) and device is not None:
                batch = batch.to(device)
            gm(batch)
            count += 1
    except PassError:
        raise
    except Exception as exc:
        raise PassError(f"quantize-linear: running a calibration batch failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for module, training in modes.items():
            module.training = training
    if count == 0:
        raise PassError("quantize-linear: the calibration data holds no batch; give at least one input batch")
