"""Tracing a model into a GraphModule, with errors that say where and what to try."""

from __future__ import annotations

import linecache
import os
import traceback
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch.fx as fx
from torch import nn

from ..errors import TraceError
from .provenance import record_base

_TORCH_FX_DIR = os.path.dirname(fx.__file__)


class LeafModule:
    """Mixin for fxlab's own modules (``fxlab.nn``): the tracer keeps them as one node."""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_modules: Iterable[type | str] = ()) -> None:
        super().__init__()
        leaves = tuple(leaf_modules)
        self._leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self._leaf_paths = {p for p in leaves if isinstance(p, str)}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, LeafModule) or isinstance(m, self._leaf_types):
            return True
        if module_qualified_name in self._leaf_paths:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(
    model: nn.Module,
    *,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Symbolically trace ``model`` into a ``GraphModule`` that shares its submodules.

    ``leaf_modules`` lists module types or module paths to keep as single opaque nodes;
    ``concrete_args`` fixes arguments that select a branch of Python control flow.

    >>> import fxlab, torch
    >>> gm = fxlab.trace(torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()))
    >>> [n.op for n in gm.graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"trace expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, fx.GraphModule):
        return model
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # torch raises TraceError, TypeError, RuntimeError... all mean 'untraceable'
        raise TraceError(_explain_trace_failure(model, exc)) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    record_base(gm, model)
    return gm


def _explain_trace_failure(model: nn.Module, exc: BaseException) -> str:
    """Name the module and the source line where tracing broke, and what to try."""
    where = ""
    culprit = type(model).__name__
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        if _TORCH_FX_DIR in filename or filename.startswith("<"):
            continue
        owner = _receiver(frame)
        if isinstance(owner, nn.Module) and frame.f_code.co_name == "forward":
            culprit = type(owner).__name__
            source = linecache.getline(filename, lineno).strip()
            where = f" at {filename}:{lineno} ({source!r})"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    data_dependent = "control flow" in reason or "iterate" in reason or "bool" in reason
    hint = (
        "this forward uses data-dependent control flow; fix the branch with "
        "concrete_args={'arg': value}, or keep the module whole with leaf_modules=[ItsClass]"
        if data_dependent
        else "keep the offending module whole with leaf_modules=[ItsClass], or fix arguments "
        "with concrete_args"
    )
    return f"cannot trace {culprit}.forward{where}: {reason}; {hint}"


def _receiver(frame: FrameType) -> Any:
    """The object a method's frame runs on: its first argument, whatever its name (``self``, ``s``, ...)."""
    code = frame.f_code
    if code.co_argcount == 0:
        return None
    return frame.f_locals.get(code.co_varnames[0])
