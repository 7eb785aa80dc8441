"""Quantization passes: swap ``nn.Linear`` (and fused ``LinearReLU``) for quantized Linears.

In the style of torchao's ``quantize_(model, Config(), filter_fn)``: *what* to do is a small
config object (:mod:`.configs`), *how* is a handler registered for that config's type
(:mod:`.handlers`). A mode name maps to a config; adding a scheme is adding a config, its handler
and its name — nothing else changes::

    @dataclass(frozen=True)
    class MyConfig(QuantConfig):
        budget: ClassVar[float] = 0.3

    @register_handler(MyConfig)
    def _my_handler(gm, nodes, config, calibration): ...

    MODES["my-mode"] = MyConfig()

Static int8 runs in three steps, in the shape of torchao's ``prepare_pt2e`` / ``convert_pt2e``:
``quantize-prepare`` inserts min/max observers (:mod:`.prepare`), the caller runs calibration
batches through the prepared model, ``quantize-convert`` turns the observed ranges into int8 scales
(:mod:`.convert`). ``quantize-linear{mode=static}`` with ``calibration=`` does all three in one call.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import fx, nn

from ...core import Selector, describe_selector, module_text, select, target_name
from ...errors import PassError, did_you_mean
from ...nn.fused import LinearReLU
from ...nn.lowbit import GROUP_SIZES, Float8WeightLinear, Int2WeightOnlyLinear, Int4WeightOnlyLinear
from ...nn.quantized import HalfLinear, Int8DynamicLinear, Int8StaticLinear, Int8WeightOnlyLinear
from ...pipeline import Pass, register_pass
from .._rewrite import require_finite, require_float32, require_values
from .configs import (
    MODES,
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
from .convert import convert_observed
from .handlers import Handler, quantize_linears, register_handler, swap_linears  # noqa: F401
from .qat import FakeQuantLinear, has_fake_quant, register_fake_quant, train_quantized
from .prepare import check_one_call_each, insert_observers
from .report import report_left_alone
from .sensitivity import check_max_drop, within_max_drop
from .conv import CONV_MODES, ConvHandler, QuantizeConv, register_conv_handler  # noqa: E402

__all__ = [
    "CONV_MODES",
    "ConvHandler",
    "FakeQuantLinear",
    "Float8WeightConfig",
    "GROUPED_MODES",
    "HalfConfig",
    "Int2WeightOnlyConfig",
    "Int4WeightOnlyConfig",
    "Int8Int4Config",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "Int8WeightOnlyConfig",
    "QuantConfig",
    "QuantizeConv",
    "QuantizeConvert",
    "QuantizeLinear",
    "QuantizePrepare",
    "QAT_MODES",
    "quantize_linears",
    "register_conv_handler",
    "register_fake_quant",
    "register_handler",
]


#: The modes quantization-aware training (``qat_epochs``) applies to: those with a fake quantizer.
QAT_MODES = tuple(m for m, c in MODES.items() if has_fake_quant(c))
#: The modes whose weights are quantized in groups: the modes ``group_size`` applies to.
GROUPED_MODES = tuple(m for m, c in MODES.items() if any(f.name == "group_size" for f in dataclasses.fields(c)))


class _DefaultGroupSize(int):
    """``group_size``'s default, 32: equal to 32, and told apart from a ``group_size=32`` someone gave."""


_DEFAULT_GROUP_SIZE = _DefaultGroupSize(32)


def _selectors_set(options: dict[str, Any]) -> dict[str, Any]:
    """Options without ``targets`` / ``exclude`` left at None (the default: every Linear; exclude nothing)."""
    return {k: v for k, v in options.items() if not (k in ("targets", "exclude") and v is None)}


@register_pass
@dataclass
class QuantizeLinear(Pass):
    """Swap nn.Linear (and fused LinearReLU) modules for quantized ones: int8, int4, int2, fp8 or half.

    ``mode`` is one of ``dynamic``, ``weight-only``, ``bf16``, ``fp16``, ``static``, ``int4``,
    ``int8-int4``, ``fp8``, ``int2`` (see ``MODES``); ``group_size`` (32, 64, 128 or None: per
    output channel; default 32) is the scale group of the grouped modes (``GROUPED_MODES``: int4,
    int8-int4, int2), and an error with any other mode, whatever its value;
    ``targets`` selects the Linears (default: all), ``exclude`` keeps some in float;
    ``calibration`` (static mode) is an iterable of input batches, or of ``(inputs, labels)``:
    static mode is then ``quantize-prepare``, those batches, ``quantize-convert`` in one call.
    ``qat_epochs`` (modes ``QAT_MODES``: all but static, bf16, fp16; default 0) fine-tunes the model for that many MNIST
    epochs with the selected Linears computing through the mode's quantizer (straight-through
    gradients), then converts (:mod:`.qat`); ``data`` is the training data then (what
    ``fxlab.data.load()`` returns, or an MNIST root; ``fxlab.verify`` supplies it).
    The accuracy ``budget`` depends on the mode (``MODES[mode].budget``; README, "Quantization").
    ``max_drop`` (accuracy points) makes the pass accuracy-aware:
    on evaluation ``data`` (``fxlab.data.load()``'s MNIST or an MNIST root; ``fxlab.verify``
    supplies it) it ranks the Linears by the accuracy lost with each one alone quantized and keeps
    the most sensitive in float until the drop is within ``max_drop``, which is then the budget
    (:mod:`.sensitivity`); it measures on the whole MNIST test split, or on its first
    ``eval_images`` images. With both, the Linears ``max_drop`` chose are the ones trained through.

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
    >>> fxlab.apply(model, "quantize-linear{mode=int4 group_size=64}").layer1
    Int4WeightOnlyLinear(784→128, group=64)
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
    max_drop: float | None = None
    eval_images: int | None = None
    group_size: int | None = _DEFAULT_GROUP_SIZE
    qat_epochs: float = 0
    data: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise PassError(
                f"quantize-linear: unknown mode {self.mode!r}{did_you_mean(str(self.mode), MODES)}; "
                f"modes: {', '.join(MODES)}"
            )
        check_max_drop(self.name, self.max_drop, self.eval_images)
        if self.group_size not in GROUP_SIZES or isinstance(self.group_size, bool):
            raise PassError(f"quantize-linear: group_size={self.group_size!r}: give 32, 64, 128 or none (per channel)")
        if self.mode not in GROUPED_MODES and not isinstance(self.group_size, _DefaultGroupSize):
            raise PassError(f"quantize-linear: group_size applies to the grouped modes ({', '.join(GROUPED_MODES)}), "
                            f"not to mode={self.mode}: leave it out")
        epochs = self.qat_epochs
        if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not math.isfinite(epochs) or epochs < 0:
            raise PassError(f"quantize-linear: qat_epochs={epochs!r}: give a number of epochs ≥ 0 (fractions allowed)")
        if epochs > 0 and self.mode not in QAT_MODES:
            raise PassError(f"quantize-linear: mode={self.mode} is not trained through (qat_epochs): "
                            f"quantization-aware training applies to {', '.join(QAT_MODES)}")

    @property
    def budget(self) -> float:  # type: ignore[override]
        """The accuracy drop (points) this pass may cost: ``max_drop`` when set, else the mode's budget."""
        return MODES[self.mode].budget if self.max_drop is None else self.max_drop

    @property
    def config(self) -> QuantConfig:
        """The config of this pass's mode (with this pass's ``group_size`` for the grouped modes)."""
        config = MODES[self.mode]
        if self.mode in GROUPED_MODES:
            config = dataclasses.replace(config, group_size=None if self.group_size is None else int(self.group_size))
        return config

    def options(self) -> dict[str, Any]:
        """Options as pipeline text knows them: calibration and evaluation data are inputs, not part
        of the pipeline, and a selector left at None means the default (every Linear; exclude nothing)."""
        options = super().options()
        del options["calibration"], options["data"]
        return _selectors_set(options)

    def with_data(self, data: Any) -> QuantizeLinear:
        """A copy of this pass with ``data=data`` (quantization-aware training's MNIST; same pipeline text)."""
        other = copy.copy(self)
        other.data = data
        return other

    def calibrated(self, batches: Any) -> QuantizeLinear:
        """A copy of this pass with ``calibration=batches`` (same options, same pipeline text)."""
        other = copy.copy(self)
        other.calibration = batches
        return other

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes, excluded = select_linears(gm, self.targets, self.exclude)
        chosen, calibration = nodes, self.calibration
        if nodes and self.max_drop is not None:
            calibration = None if calibration is None else list(calibration)  # every trial calibrates
            chosen = within_max_drop(self, gm, nodes, lambda g, ns: quantize_linears(g, ns, self.config, calibration))
        if chosen and self.qat_epochs > 0:
            if self.data is None:
                raise PassError(
                    f"quantize-linear: qat_epochs={self.qat_epochs:g} needs MNIST training data: give "
                    "QuantizeLinear(..., data=fxlab.data.load()) (or an MNIST root), or run the pipeline "
                    "through fxlab.verify, which supplies it"
                )
            gm = train_quantized(gm, chosen, self.config, self.qat_epochs, self.data)
        if chosen:
            gm = quantize_linears(gm, chosen, self.config, calibration)
        report_left_alone(gm, self.name, nodes, excluded, self.exclude, quantizes=_is_linear, targets=self.targets)
        return gm


#: The modes whose quantization is fixed by observed ranges: the modes ``quantize-prepare`` takes.
OBSERVED_MODES = ("static",)


@register_pass
@dataclass
class QuantizePrepare(Pass):
    """Insert min/max observers around the Linears that static int8 quantization will convert.

    The first of three steps (torchao's ``prepare_pt2e`` / ``convert_pt2e`` shape): after this
    pass, run calibration batches through the returned GraphModule in eval mode, then apply
    ``quantize-convert``. ``targets`` / ``exclude`` select the Linears as in ``quantize-linear``.
    The observers pass their input through unchanged.

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> model = build("mymodule").eval()
    >>> prepared = fxlab.apply(model, "quantize-prepare{exclude=layer3}")
    >>> prepared.layer1_input_observer
    MinMaxObserver(per-tensor)
    >>> with torch.no_grad():
    ...     for _ in range(4):
    ...         _ = prepared(torch.randn(64, 1, 28, 28))
    >>> gm = fxlab.apply(prepared, "quantize-convert")
    >>> gm.layer1, type(gm.layer3).__name__
    (Int8StaticLinear(784→128, per-channel), 'Linear')
    """

    name = "quantize-prepare"
    kind = "approximate"
    calibrates: ClassVar[bool] = True
    MODES: ClassVar[tuple[str, ...]] = OBSERVED_MODES

    mode: str = "static"
    targets: Selector | None = None
    exclude: Selector | None = None

    def __post_init__(self) -> None:
        if self.mode not in OBSERVED_MODES:
            hint = f": use quantize-linear{{mode={self.mode}}}" if self.mode in MODES else ""
            raise PassError(
                f"quantize-prepare: mode {self.mode!r} is not calibrated{hint}; "
                f"quantize-prepare takes mode {', '.join(OBSERVED_MODES)}"
            )

    @property
    def budget(self) -> float:  # type: ignore[override]
        """The accuracy drop (points) the prepared quantization may cost: the mode's budget."""
        return MODES[self.mode].budget

    def options(self) -> dict[str, Any]:
        """Options as pipeline text knows them (a selector left at None is the default)."""
        return _selectors_set(super().options())

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        nodes, excluded = select_linears(gm, self.targets, self.exclude, label=self.name)
        check_one_call_each(nodes, self.name)
        gm = insert_observers(gm, nodes)
        report_left_alone(gm, self.name, nodes, excluded, self.exclude, quantizes=_is_linear, targets=self.targets)
        return gm


@register_pass
@dataclass
class QuantizeConvert(Pass):
    """Convert every observed Linear (after quantize-prepare and calibration) to static int8.

    Each Linear with min/max observers around it becomes an ``Int8StaticLinear`` with
    ``Quantize`` / ``Dequantize`` nodes whose scales come from the observed ranges: the graph and
    numbers of ``quantize-linear{mode=static}`` given the same calibration batches. ``chain``
    (default true) keeps activations int8 between int8 Linears (a dequantize → quantize pair is
    dropped, an elementwise function between them becomes an ``Int8Table``); ``chain=false`` keeps
    every step, with the very same outputs. An observer that has seen no data is an error.

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> prepared = fxlab.apply(build("mymodule").eval(), "quantize-prepare")
    >>> with torch.no_grad():
    ...     _ = prepared(torch.randn(64, 1, 28, 28))
    >>> gm = fxlab.apply(prepared, "quantize-convert")
    >>> print(fxlab.format_graph(gm).splitlines()[3])
    %layer1 = layer1:Int8StaticLinear(784→128, per-channel)(%layer1_input_quant)
    """

    name = "quantize-convert"
    kind = "approximate"

    chain: bool = True

    @property
    def budget(self) -> float:  # type: ignore[override]
        """The accuracy drop (points) the converted quantization may cost: static mode's budget."""
        return MODES["static"].budget

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        return convert_observed(gm, chain=self.chain, label=self.name)


# --------------------------------------------------------------------------------------------
# selecting the Linears


def _is_linear(module: nn.Module | None) -> bool:
    return isinstance(module, (nn.Linear, LinearReLU))


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def select_linears(
    gm: fx.GraphModule, targets: Selector | None, exclude: Selector | None, *, label: str = "quantize-linear"
) -> tuple[list[fx.Node], list[fx.Node]]:
    """The float32 Linear nodes to quantize: ``targets`` (default: every Linear) minus ``exclude``;
    and the Linear nodes ``exclude`` kept in float. A model with no Linear at all gives ``([], [])``
    (the pass is a no-op that reports its convs as left alone); explicit ``targets`` that match no
    Linear, an ``exclude`` that leaves none, and a model whose Linears are all quantized already
    are errors."""
    excluded: list[fx.Node] = []
    if targets is None:
        nodes = [n for n in gm.graph.nodes if _is_linear(_module(gm, n))]
        if not nodes:
            reason = _no_linear_reason(gm)
            if reason is not None:
                raise PassError(f"{label}: {reason}")
            return [], []
    else:
        matched = select(gm, targets)
        nodes = [n for n in matched if _is_linear(_module(gm, n))]
        if not nodes:
            what = ", ".join(f"{n.name} ({_describe(gm, n)})" for n in matched[:5])
            raise PassError(f"{label}: targets={describe_selector(targets)} matches no nn.Linear, only {what}")
    if exclude is not None:
        dropped = set(select(gm, exclude))
        excluded = [n for n in nodes if n in dropped]
        nodes = [n for n in nodes if n not in dropped]
        if not nodes:
            raise PassError(f"{label}: exclude={describe_selector(exclude)} leaves no Linear to quantize")
    require_float32(label, [(str(n.target), _module(gm, n)) for n in nodes])
    check_quantizable(gm, nodes, label)
    return nodes, excluded


def check_quantizable(gm: fx.GraphModule, nodes: list[fx.Node], label: str) -> None:
    """Refuse Linears with no values (meta device) or with NaN / inf in their weight or bias."""
    modules = [(str(n.target), gm.get_submodule(str(n.target))) for n in nodes]
    require_values(label, modules)
    require_finite(label, modules)


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    module = _module(gm, node)
    if module is not None:
        return module_text(module)
    return node.op if node.op in ("placeholder", "output") else target_name(node)


def _no_linear_reason(gm: fx.GraphModule) -> str | None:
    """Why a model with no float Linear cannot be quantized: its Linears are quantized already;
    ``None`` when it has no Linear at all (then quantize-linear has nothing to do)."""
    done = [
        f"{path} ({type(m).__name__})"
        for path, m in gm.named_modules()
        if isinstance(m, (Int8DynamicLinear, Int8WeightOnlyLinear, Int8StaticLinear, HalfLinear, Int4WeightOnlyLinear,
                          Int2WeightOnlyLinear, Float8WeightLinear))
    ]
    if done:
        return (
            f"the model has no float nn.Linear left to quantize; already quantized: {', '.join(done[:6])}"
            f"{' …' if len(done) > 6 else ''}"
        )
    return None

