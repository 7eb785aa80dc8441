"""fxlab's graph printout: one stable line per node (golden tests and diffs read it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .trace import LeafModule


def target_name(node: fx.Node) -> str:
    """The target of a node as text: module path, qualified function name, or method name."""
    if node.op == "call_function":
        target = node.target
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__name__", None) or str(target)
        if module in ("_operator", "operator"):
            return f"operator.{name}"
        if getattr(F, name, None) is target:
            return f"F.{name}"
        if getattr(torch, name, None) is target:
            return f"torch.{name}"
        return f"{module}.{name}" if module else name
    return str(node.target)


def _arg_text(arg: Any) -> str:
    if isinstance(arg, fx.Node):
        return f"%{arg.name}"
    if isinstance(arg, (list, tuple)):
        inner = ", ".join(_arg_text(a) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner}{',' if len(arg) == 1 else ''})"
    if isinstance(arg, dict):
        return "{" + ", ".join(f"{k}: {_arg_text(v)}" for k, v in arg.items()) + "}"
    if isinstance(arg, torch.dtype):
        return str(arg)
    return repr(arg)


def args_text(node: fx.Node) -> str:
    """The arguments of a node as text, nodes written ``%name``."""
    parts = [_arg_text(a) for a in node.args]
    parts += [f"{k}={_arg_text(v)}" for k, v in node.kwargs.items()]
    return ", ".join(parts)


def module_text(module: nn.Module) -> str:
    """One-line description of a module: ``Linear(784→128)``, ``ReLU()``, our modules' repr."""
    if isinstance(module, LeafModule):  # fxlab's own modules (LinearReLU is an nn.Linear too)
        text = repr(module)
        return text if "\n" not in text else f"{type(module).__name__}(…)"
    if isinstance(module, nn.Linear):
        bias = "" if module.bias is not None else ", bias=False"
        return f"Linear({module.in_features}→{module.out_features}{bias})"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{type(module).__name__}({module.num_features})"
    if isinstance(module, nn.Dropout):
        return f"Dropout(p={module.p})"
    text = repr(module)
    return text if "\n" not in text else f"{type(module).__name__}(…)"


def submodules(root: nn.Module) -> Callable[[str], nn.Module]:
    """A lookup of ``root``'s submodules by dotted path that resolves each path prefix once.

    ``root.get_submodule(path)`` walks the path with ``getattr`` on every call; a printout or a
    selection over a graph of n ``call_module`` nodes asks for n paths, so this lookup keeps
    that to one ``dict`` access per path. Build one per walk over a graph (it caches what it
    saw). A path that is not a registered submodule goes to ``get_submodule`` (torch's error).
    """
    found: dict[str, nn.Module] = {"": root}

    def get(path: str) -> nn.Module:
        module = found.get(path)
        if module is None:
            parent, _, name = path.rpartition(".")
            try:
                module = get(parent)._modules.get(name)
            except AttributeError:
                module = None
            if not isinstance(module, nn.Module):
                module = root.get_submodule(path)  # torch's error, naming the whole path
            found[path] = module
        return module

    return get


def node_line(gm: fx.GraphModule, node: fx.Node, modules: Callable[[str], nn.Module] | None = None) -> str:
    """One line of fxlab's graph printout for ``node`` (``modules``: a :func:`submodules` lookup of ``gm``)."""
    if node.op == "placeholder":
        return f"%{node.name} = input"
    if node.op == "output":
        return f"return {args_text(node)}"
    if node.op == "get_attr":
        return f"%{node.name} = get_attr {node.target}"
    if node.op == "call_module":
        module = module_text((modules or gm.get_submodule)(str(node.target)))
        return f"%{node.name} = {node.target}:{module}({args_text(node)})"
    if node.op == "call_method":
        return f"%{node.name} = .{node.target}({args_text(node)})"
    return f"%{node.name} = {target_name(node)}({args_text(node)})"


def format_graph(gm: fx.GraphModule) -> str:
    """fxlab's compact, stable graph printout (used by golden tests and diffs).

    >>> import fxlab, torch
    >>> print(format_graph(fxlab.trace(torch.nn.Sequential(torch.nn.Linear(4, 2)))))
    %input_1 = input
    %_0 = 0:Linear(4→2)(%input_1)
    return %_0
    """
    modules = submodules(gm)
    return "\n".join(node_line(gm, n, modules) for n in gm.graph.nodes)

