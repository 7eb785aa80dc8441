"""Static quantization, last step: each observed Linear becomes int8, with Quantize / Dequantize nodes.

An observed site is a Linear (or fused ``LinearReLU``) whose input comes through a
:class:`~fxlab.nn.quantized.MinMaxObserver` and whose only user is another one (what
:func:`~fxlab.passes.quantize.prepare.insert_observers` leaves). :func:`convert_observed` swaps
each for an :class:`~fxlab.nn.quantized.Int8StaticLinear` whose scales come from the observed
ranges, and then, unless ``chain=False``, keeps activations int8 between int8 Linears: a
``dequantize → quantize`` pair is dropped (:func:`chain_int8`), and ``dequantize → elementwise fn →
quantize`` becomes an :class:`~fxlab.nn.quantized.Int8Table` (:func:`int8_tables`). Both give the
very outputs of the graph with every step in place.

>>> import fxlab, torch
>>> from fxlab.models import build
>>> from fxlab.passes.quantize.prepare import calibrate, insert_observers
>>> gm = fxlab.trace(build("mymodule").eval())
>>> gm = insert_observers(gm, [n for n in gm.graph.nodes if n.target == "layer3"])
>>> calibrate(gm, [torch.randn(8, 1, 28, 28)])
>>> gm = convert_observed(gm)
>>> gm.layer3
Int8StaticLinear(64→10, per-channel)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..._util import fresh_name, set_submodule
from ...core.provenance import FROM, origins
from ...errors import PassError
from ...nn.fused import LinearReLU
from ...nn.quantized import Int8StaticLinear, Int8Table, MinMaxObserver
from ...pipeline import sites as site_records
from .._rewrite import require_finite, require_values

__all__ = ["Site", "chain_int8", "convert_observed", "int8_tables", "observed_sites"]

#: ``(linear, input observer, output observer)`` nodes of one observed Linear.
Site = tuple[fx.Node, fx.Node, fx.Node]


def _module(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return gm.get_submodule(str(node.target))
    return None


def _is_observer(gm: fx.GraphModule, node: Any) -> bool:
    return isinstance(_module(gm, node), MinMaxObserver)


def observed_sites(gm: fx.GraphModule) -> list[Site]:
    """Every float Linear of ``gm`` with an observer on its input and one as its only user, in graph order."""
    sites = []
    for node in gm.graph.nodes:
        if not isinstance(_module(gm, node), (nn.Linear, LinearReLU)) or not node.args:
            continue
        users = list(node.users)
        if _is_observer(gm, node.args[0]) and len(users) == 1 and _is_observer(gm, users[0]):
            sites.append((node, node.args[0], users[0]))
    return sites


def convert_observed(
    gm: fx.GraphModule, *, chain: bool = True, label: str = "quantize-convert", report: bool = True
) -> fx.GraphModule:
    """Convert every observed site of ``gm`` to int8 (see the module docstring); ``label`` names the pass in errors.
    With ``report``, each converted Linear is a rewritten site (:mod:`fxlab.pipeline.sites`), after
    :func:`~fxlab.pipeline.sites.allow`: a site beyond ``apply``'s limit keeps its observers."""
    sites = observed_sites(gm)
    if not sites:
        raise PassError(
            f"{label}: the model has no observed Linear (a MinMaxObserver on its input and output): "
            "run quantize-prepare and calibration batches first"
        )
    linears = [(str(node.target), gm.get_submodule(str(node.target))) for node, _, _ in sites]
    require_values(label, linears)
    require_finite(label, linears)
    for _, before, after in sites:
        for obs in (before, after):
            if not gm.get_submodule(str(obs.target)).seen:
                raise PassError(
                    f"{label}: observer {obs.target} has seen no data: run calibration batches through the "
                    "prepared model before quantize-convert"
                )
    if report:
        allowed = []
        for site in sites:
            if site_records.allow(gm, site[0].name):
                site_records.rewrote(gm, site[0].name)
                allowed.append(site)
        sites = allowed
    for site in sites:
        _convert_site(gm, site)
    paths = {str(node.target) for node, _, _ in sites}
    if chain:
        chain_int8(gm, paths)
        int8_tables(gm, paths)
    gm.recompile()
    return gm


def _convert_site(gm: fx.GraphModule, site: Site) -> None:
    """Swap one Linear for an Int8StaticLinear and its observers for Quantize / Dequantize nodes."""
    node, before, after = site
    graph = gm.graph
    path = str(node.target)
    linear = gm.get_submodule(path)
    obs_in, obs_out = gm.get_submodule(str(before.target)), gm.get_submodule(str(after.target))
    int8 = Int8StaticLinear.from_float(
        linear,
        relu=isinstance(linear, LinearReLU),
        input_range=(float(obs_in.min_val), float(obs_in.max_val)),
        output_range=(float(obs_out.min_val), float(obs_out.max_val)),
    )
    set_submodule(gm, path, int8)
    with graph.inserting_before(before):
        quant = graph.call_module(f"{path}.input_quant", before.args)
    before.replace_all_uses_with(quant)
    with graph.inserting_before(after):
        dequant = graph.call_module(f"{path}.output_dequant", after.args)
    after.replace_all_uses_with(dequant)
    for obs in (before, after):
        graph.erase_node(obs)
        gm.delete_submodule(str(obs.target))


def chain_int8(gm: fx.GraphModule, paths: set[str]) -> None:
    """Drop each ``output_dequant → input_quant`` pair between two int8 Linears of ``paths``.

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


def _table_site(quant: fx.Node, paths: set[str]) -> tuple[fx.Node, fx.Node] | None:
    """``(op, dequant)`` when ``quant`` is the end of ``output_dequant → op → input_quant`` between int8 Linears."""
    if quant.op != "call_module" or not str(quant.target).endswith(".input_quant"):
        return None
    if str(quant.target).rpartition(".")[0] not in paths:
        return None
    op = quant.args[0]
    if not (isinstance(op, fx.Node) and len(op.users) == 1 and op.args and isinstance(op.args[0], fx.Node)):
        return None
    dequant = op.args[0]
    producer, _, kind = str(dequant.target).rpartition(".")
    if not (dequant.op == "call_module" and kind == "output_dequant" and producer in paths and len(dequant.users) == 1):
        return None
    return op, dequant


def int8_tables(gm: fx.GraphModule, paths: set[str]) -> None:
    """Replace ``output_dequant → elementwise fn → input_quant`` between two int8 Linears by an
    :class:`~fxlab.nn.quantized.Int8Table`: ``quantize(fn(dequantize(q)))`` for all 256 codes, equal
    to the three steps on every input, so the activations stay int8 across a GELU and the like."""
    graph = gm.graph
    for quant in list(graph.nodes):
        found = _table_site(quant, paths)
        fn = _table_function(gm, found[0]) if found is not None else None
        if found is None or fn is None:
            continue
        op, dequant = found
        table = Int8Table.build(fn[0], fn[1], gm.get_submodule(str(dequant.target)), gm.get_submodule(str(quant.target)))
        path = fresh_name(gm, f"{op.name}_int8")
        gm.add_submodule(path, table)
        with graph.inserting_before(quant):
            lookup = graph.call_module(path, (dequant.args[0],))
        lookup.meta[FROM] = origins(op)  # the table stands for the function it computes
        quant.replace_all_uses_with(lookup)
        old_module = str(op.target) if op.op == "call_module" else None
        for node in (quant, op, dequant):
            graph.erase_node(node)
        if old_module and not any(n.op == "call_module" and n.target == old_module for n in graph.nodes):
            gm.delete_submodule(old_module)
