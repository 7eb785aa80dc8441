"""Small tools the rewriting passes share: module bookkeeping, module matchers, new Linears.

Passes never mutate a module or a tensor they were given: they build new modules and swap
them in, so ``apply(..., inplace=True)`` leaves the caller's parameters as they were.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.parameter import is_lazy

from ..errors import PassError


def module_of(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    """The module a ``call_module`` node calls; ``None`` for anything else."""
    if not isinstance(node, fx.Node) or node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def single_input(node: fx.Node, name: str = "input") -> fx.Node | None:
    """The one tensor a call takes (``f(x)`` or ``f(input=x)``), or ``None`` if it takes more."""
    if len(node.args) == 1 and not node.kwargs:
        arg = node.args[0]
    elif not node.args and set(node.kwargs) == {name}:
        arg = node.kwargs[name]
    else:
        return None
    return arg if isinstance(arg, fx.Node) else None


def plain_linear(gm: fx.GraphModule, node: Any) -> nn.Linear | None:
    """The ``nn.Linear`` a node calls with one input, if it is a plain one (not a subclass
    with its own forward, such as ``LinearReLU`` or a quantized Linear, and not lazy)."""
    module = module_of(gm, node)
    if (
        isinstance(module, nn.Linear)
        and type(module).forward is nn.Linear.forward
        and not is_lazy(module.weight)
        and single_input(node) is not None
    ):
        return module
    return None


def bare_linear(cls: type[nn.Linear], in_features: int, out_features: int) -> nn.Linear:
    """An instance of ``cls`` (``nn.Linear`` or a subclass) with no parameters set yet.

    ``nn.Linear.__init__`` would allocate and randomly initialise a weight only for the pass to
    replace it (≈0.5 ms a module even on the meta device: too slow for 4000-layer models).
    """
    linear = cls.__new__(cls)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = int(in_features), int(out_features)
    return linear


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Linear) -> nn.Linear:
    """A fresh ``nn.Linear`` holding ``weight`` and ``bias`` (new Parameters, nothing initialised),
    with ``like``'s dtype, device, training flag and ``requires_grad``."""
    linear = bare_linear(nn.Linear, *weight.shape[::-1])
    requires_grad = like.weight.requires_grad
    dtype, device = like.weight.dtype, like.weight.device
    linear.weight = nn.Parameter(weight.to(dtype=dtype, device=device), requires_grad=requires_grad)
    linear.register_parameter(
        "bias", None if bias is None else nn.Parameter(bias.to(dtype=dtype, device=device), requires_grad=requires_grad)
    )
    linear.train(like.training)
    return linear


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in float64 where the device has it (folding arithmetic loses less)."""
    t = t.detach()
    return t if t.device.type == "mps" else t.to(torch.float64)


class ModuleUses:
    """Which module paths a graph uses, kept up to date while a pass rewrites the graph.

    One sweep over the graph at the start; every later question and update costs the length
    of a path, so a pass that consults it stays linear in the size of the graph.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.calls: Counter[str] = Counter()  # path -> call_module nodes calling it
        self.reads: Counter[str] = Counter()  # path -> get_attr nodes reading it
        self.below: Counter[str] = Counter()  # path -> used targets strictly inside it
        for node in gm.graph.nodes:
            if node.op == "call_module":
                self._count(str(node.target), self.calls, +1)
            elif node.op == "get_attr":
                self._count(str(node.target), self.reads, +1)

    def _count(self, path: str, counter: Counter[str], step: int) -> None:
        counter[path] += step
        parts = path.split(".")
        for i in range(1, len(parts)):
            self.below[".".join(parts[:i])] += step

    def _used(self, path: str) -> bool:
        return self.calls[path] > 0 or self.reads[path] > 0

    def _ancestor_used(self, path: str) -> bool:
        parts = path.split(".")
        return any(self._used(".".join(parts[:i])) for i in range(1, len(parts)))

    def exclusive(self, node: fx.Node) -> bool:
        """Whether ``node`` is the only user of its module (no other call, no ``get_attr`` into
        it, no used module inside it or around it): then it can be replaced where it is."""
        path = str(node.target)
        return (
            self.calls[path] == 1
            and self.reads[path] == 0
            and self.below[path] == 0
            and not self._ancestor_used(path)
        )

    def swap_module(self, node: fx.Node, module: nn.Module, suffix: str) -> None:
        """Make ``node`` call ``module``: at its own path when it alone uses that path, else at a
        fresh path ``<path>_<suffix>`` (the old module stays for its other users)."""
        if self.exclusive(node):
            self.gm.add_submodule(str(node.target), module)
            return
        base = f"{str(node.target).replace('.', '_')}_{suffix}"
        path, i = base, 1
        while hasattr(self.gm, path) or self._used(path) or self.below[path]:
            path, i = f"{base}_{i}", i + 1
        self.gm.add_submodule(path, module)
        self.release(str(node.target))
        node.target = path
        self._count(path, self.calls, +1)

    def release(self, path: str) -> None:
        """One ``call_module`` node of ``path`` is gone: delete the module once nothing uses it."""
        self._count(path, self.calls, -1)
        if not self._used(path) and self.below[path] == 0 and not self._ancestor_used(path):
            self.gm.delete_submodule(path)

    def erase(self, node: fx.Node) -> None:
        """Erase ``node`` (it must have no users) and drop its module if it was the last user."""
        self.gm.graph.erase_node(node)
        if node.op == "call_module":
            self.release(str(node.target))

    def bypass(self, node: fx.Node, value: fx.Node) -> None:
        """Every user of ``node`` reads ``value`` instead; then ``node`` is erased."""
        node.replace_all_uses_with(value)
        self.erase(node)


# --------------------------------------------------------------------------------------------
# refusing modules whose values a pass cannot use


def _own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The module's own parameters and buffers (not its submodules'), by name."""
    return [
        *((n, t) for n, t in module.named_parameters(recurse=False) if t is not None),
        *((n, t) for n, t in module.named_buffers(recurse=False) if t is not None),
    ]


def require_values(label: str, modules: list[tuple[str, nn.Module]]) -> None:
    """Refuse (``PassError``, one line) when a module a pass reads values from is on the meta device.

    ``modules`` are ``(path, module)`` pairs; a meta tensor has a shape but no values, so folding,
    merging or quantizing it would produce nothing real (or torch's internal ``set_data`` message).
    """
    for path, module in modules:
        for name, t in _own_tensors(module):
            if t.is_meta:
                raise PassError(
                    f"{label}: {path}'s {name} is on the meta device (no values); load real weights first "
                    "(e.g. model.to_empty(device='cpu') then load_state_dict)"
                )


def require_float32(label: str, modules: list[tuple[str, nn.Module]]) -> None:
    """Refuse (``PassError``, one line) a layer whose weight is not float32: the quantized modules
    are made from float32 weights and take float32 input."""
    for path, module in modules:
        dtype = module.weight.dtype
        if dtype != torch.float32:
            raise PassError(
                f"{label}: {path} holds {str(dtype).replace('torch.', '')} weights; "
                f"{label} quantizes float32 models: convert with model.float() first"
            )


def nonfinite_counts(t: torch.Tensor) -> str | None:
    """``"3 NaN values"``, ``"1 inf value"``, ``"2 NaN and 1 inf values"``, or ``None`` when all are finite."""
    if not t.is_floating_point() or t.is_meta:
        return None
    if t.element_size() == 1:  # float8: torch has no isfinite for it
        t = t.float()
    if bool(torch.isfinite(t).all()):
        return None
    nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} inf"] if inf else [])
    return f"{' and '.join(parts)} value{'s' if nan + inf > 1 else ''}"


def require_finite(label: str, modules: list[tuple[str, nn.Module]], doing: str = "quantizing",
                   spoils: str = "scales") -> None:
    """Refuse (``PassError``, one line naming every bad layer) a weight or bias holding NaN or inf:
    ``"quantize-linear: layer2: weight has 3 NaN values; quantizing it would make its scales NaN; ..."``.
    """
    problems = []
    for path, module in dict(modules).items():
        for name in ("weight", "bias"):
            t = getattr(module, name, None)
            found = nonfinite_counts(t) if isinstance(t, torch.Tensor) else None
            if found:
                problems.append(f"{path}: {name} has {found}")
    if problems:
        paths = list(dict.fromkeys(p.split(":")[0] for p in problems))
        one = len(paths) == 1
        raise PassError(
            f"{label}: {'; '.join(problems)}; {doing} {'it' if one else 'them'} would make "
            f"{'its' if one else 'their'} {spoils} NaN; fix the weights or "
            f"{f'exclude={paths[0]}' if one else 'exclude those layers'}"
        )
