"""What the renderings show of a graph: output shapes and dtypes, parameter counts and FLOPs per node.

Shapes come from running the model once (``torch.fx.passes.shape_prop.ShapeProp``, eval mode, no
grad, fxlab's fused CPU kernels off so that torch sees every op) on the first of
:func:`fxlab._util.example_inputs` it runs on, or on the caller's ``example_input``.

FLOPs are counted by torch's :class:`~torch.utils.flop_counter.FlopCounterMode` around each node's
op during that run: matrix multiplies (``mm``, ``addmm``, ``bmm``, ``baddbmm``, and
``torch._int_mm``, which fxlab adds), convolutions and attention; a multiply-add counts 2;
elementwise ops, reductions and normalisations count 0 (shown blank). A module with a
``flops(input_shape)`` method (fxlab's quantized Linears, :class:`fxlab.nn.LinearReLU`) reports
its own count instead: its int8 or oneDNN path may run ops the counter does not see.

>>> from fxlab.models import build
>>> a = analyze(build("mymodule"))
>>> a.by_name["layer1"].shape, a.by_name["layer1"].flops, a.by_name["relu"].flops
([1, 128], 200704, None)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._util import MNIST_SHAPE, eval_mode, example_inputs, first_line
from ..core import args_text, module_text, target_name, trace
from ..errors import ExportError

__all__ = ["MNIST_BATCH", "Analysis", "NodeInfo", "analyze", "as_graph_module", "shape_text"]

#: The dummy input shape propagation runs on unless given ``example_input``.
MNIST_BATCH = MNIST_SHAPE

_STATS = {"running_mean", "running_var", "num_batches_tracked"}


@dataclass
class NodeInfo:
    """One node as the renderings show it."""

    name: str
    op: str
    target: str
    args: str
    inputs: list[str]
    shape: Any = None  # list of ints, or a list of those for tuple outputs; None: unknown
    dtype: str = ""
    params: int | None = None
    flops: int | None = None
    change: str | None = None  # "added", "changed" or "replaced" in a diff

    def shape_text(self) -> str:
        """The output shape as ``[1, 128]`` (``?`` when unknown)."""
        return shape_text(self.shape)


@dataclass
class Analysis:
    """A graph with shapes, parameter counts and FLOPs per node."""

    gm: fx.GraphModule
    nodes: list[NodeInfo]
    input_shape: list[int] | None
    input_dtype: str
    shape_error: str | None = None
    params: int = 0
    weight_bytes: int = 0
    flops: int = 0
    by_name: dict[str, NodeInfo] = field(default_factory=dict, repr=False)


def shape_text(shape: Any) -> str:
    """``[1, 128]`` for a shape, ``[1, 2], [1, 3]`` for a tuple of them, ``?`` for None.

    >>> shape_text([[1, 2], [3]])
    '[1, 2], [3]'
    """
    if shape is None:
        return "?"
    if shape and isinstance(shape[0], list):
        return ", ".join(shape_text(s) for s in shape)
    return "[" + ", ".join(str(d) for d in shape) + "]"


def as_graph_module(model: nn.Module) -> fx.GraphModule:
    """``model`` itself when it is a GraphModule, else ``model`` traced by :func:`fxlab.trace`."""
    if isinstance(model, fx.GraphModule):
        return model
    if not isinstance(model, nn.Module):
        raise ExportError(f"render expects an nn.Module or GraphModule, got {type(model).__name__}")
    return trace(model)


# --------------------------------------------------------------------------------------------
# one run: tensor metadata and FLOPs per node


def _int_mm_flops(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``torch._int_mm`` (M, K) @ (K, N), which torch's counter does not know: 2·M·K·N."""
    return 2 * int(a_shape[0]) * int(a_shape[1]) * int(b_shape[1])


def _module_flops(gm: fx.GraphModule, node: fx.Node, args: tuple[Any, ...]) -> int | None:
    """The count of a module with its own ``flops(input_shape)`` method, for this call's input."""
    count = getattr(gm.get_submodule(str(node.target)), "flops", None)
    if not callable(count) or not args or not isinstance(args[0], torch.Tensor):
        return None
    return int(count(tuple(args[0].shape)))


def _propagate(gm: fx.GraphModule, x: torch.Tensor) -> tuple[dict[str, Any], dict[str, int]]:
    """Node name → tensor metadata, and node name → FLOPs, from one run of ``gm`` on ``x``.

    ``gm`` is left as it was: modes restored, nothing written to ``node.meta``."""
    from torch.fx.node import map_aggregate
    from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata
    from torch.utils.flop_counter import FlopCounterMode

    from ..nn import kernels

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten._int_mm: _int_mm_flops})
    metas: dict[str, Any] = {}
    flops: dict[str, int] = {}

    class _ShapeProp(ShapeProp):
        # ShapeProp.run_node without fake-tensor support and contiguity queries (both import sympy,
        # ~1 s of startup) and without writing node.meta: the metadata is collected aside.
        def run_node(self, n: fx.Node) -> Any:
            start = counter.get_total_flops()
            result = fx.Interpreter.run_node(self, n)
            own = _module_flops(gm, n, self.fetch_args_kwargs_from_env(n)[0]) if n.op == "call_module" else None
            flops[n.name] = own if own is not None else counter.get_total_flops() - start
            found = False

            def extract(obj: Any) -> Any:
                nonlocal found
                if isinstance(obj, torch.Tensor):
                    found = True
                    return _extract_tensor_metadata(obj, include_contiguity=False)
                return obj

            meta = map_aggregate(result, extract)
            metas[n.name] = meta if found else None
            return result

    with eval_mode(gm), torch.no_grad(), kernels.disabled(), _dynamo_left_unloaded(), counter:
        _ShapeProp(gm).propagate(x)
    return metas, flops


@contextlib.contextmanager
def _dynamo_left_unloaded() -> Iterator[None]:
    """Count FLOPs without importing ``torch._dynamo``.

    torch wraps every dispatch mode's ``__torch_dispatch__`` (FlopCounterMode's included) in
    ``torch._disable_dynamo``, which imports ``torch._dynamo`` on its first call: 0.8–1.9 s here,
    more than the rest of ``fxlab show``. Disabling dynamo matters only inside ``torch.compile``,
    and nothing is compiled while fxlab counts, so while dynamo is not loaded the wrapper is handed
    the raw dispatch as its already-disabled form for the count, and torch's attribute is removed
    afterwards. Should torch change the wrapper, the counter just imports dynamo as before.
    """
    from torch.utils import flop_counter

    mode = getattr(flop_counter, "_FlopCounterMode", None)
    raw = getattr(getattr(mode, "__dict__", {}).get("__torch_dispatch__"), "__wrapped__", None)
    if raw is None or "torch._dynamo" in sys.modules or hasattr(raw, "__dynamo_disable"):
        yield
        return
    setattr(raw, "__dynamo_disable", raw)
    try:
        yield
    finally:
        delattr(raw, "__dynamo_disable")


def _meta_shape(meta: Any) -> tuple[Any, str]:
    if meta is None:
        return None, ""
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return list(meta.shape), str(meta.dtype).replace("torch.", "")
    if isinstance(meta, (list, tuple)):
        parts = [_meta_shape(m) for m in meta]
        shapes = [s for s, _ in parts if s is not None]
        dtypes = sorted({d for _, d in parts if d})
        return (shapes or None), ",".join(dtypes)
    return None, ""


def _run(gm: fx.GraphModule, example_input: torch.Tensor | None
         ) -> tuple[dict[str, Any], dict[str, int], torch.Tensor | None, str | None]:
    """Metadata and FLOPs from the first input ``gm`` runs on; the input used; the first failure."""
    error = None
    for x in [example_input] if example_input is not None else example_inputs(gm):
        try:
            metas, flops = _propagate(gm, x)
            return metas, flops, x, None
        except Exception as exc:  # any failure of the model on this input: shapes stay unknown
            cause = exc.__cause__ or exc
            reason = first_line(cause) if str(cause).strip() else ""
            batch = f"{list(x.shape)} {str(x.dtype).replace('torch.', '')}"
            error = error or f"shape propagation on a {batch} batch failed: {type(cause).__name__}: {reason}"
    return {}, {}, None, error


# --------------------------------------------------------------------------------------------
# the analysis


def _count(module: nn.Module) -> int:
    """Parameters plus weight-like buffers (quantized weights, scales); not BatchNorm statistics."""
    total = sum(p.numel() for p in module.parameters())
    total += sum(b.numel() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1] not in _STATS)
    return total


def _params(gm: fx.GraphModule, node: fx.Node, info: Analysis, seen: set[int]) -> int | None:
    """The node's parameter count (added to ``info.params`` the first time its owner is seen)."""
    owner: Any = None
    if node.op == "call_module":
        owner = gm.get_submodule(str(node.target))
        params = _count(owner)
    elif node.op == "get_attr":
        owner = _get_attr(gm, str(node.target))
        if not isinstance(owner, torch.Tensor):
            return None
        params = owner.numel()
    else:
        return None
    if id(owner) not in seen:
        seen.add(id(owner))
        info.params += params
    return params


def analyze(model: nn.Module, example_input: torch.Tensor | None = None) -> Analysis:
    """Shapes, dtypes, parameter counts and FLOPs of every node of ``model`` (traced if needed)."""
    gm = as_graph_module(model)
    metas, flops, used, error = _run(gm, example_input)
    info = Analysis(gm, [], list(used.shape) if used is not None else None,
                    str(used.dtype).replace("torch.", "") if used is not None else "", error)
    seen: set[int] = set()
    for node in gm.graph.nodes:
        shape, dtype = _meta_shape(metas.get(node.name))
        params = _params(gm, node, info, seen)
        count = flops.get(node.name) or None
        info.flops += count or 0
        item = NodeInfo(node.name, node.op, _target_text(gm, node), args_text(node),
                        [a.name for a in node.all_input_nodes], shape, dtype, params, count)
        info.nodes.append(item)
        info.by_name[node.name] = item
    storages = {}
    for t in list(gm.parameters()) + list(gm.buffers()):
        storages[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
    info.weight_bytes = sum(storages.values())
    return info


def _get_attr(gm: fx.GraphModule, target: str) -> Any:
    owner: Any = gm
    for part in target.split("."):
        owner = getattr(owner, part, None)
    return owner


def _target_text(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target}: {module_text(gm.get_submodule(str(node.target)))}"
    if node.op == "call_method":
        return f".{node.target}"
    if node.op == "call_function":
        return target_name(node)
    return str(node.target)
