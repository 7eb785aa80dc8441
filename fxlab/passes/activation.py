"""Passes that insert activations (kind ``changes``: they make a new model on purpose)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.fx as fx
from torch import nn

from ..errors import PassError
from ..core import Selector, select
from ..models.mlp import ACTIVATIONS  # activations known by name (in pipeline text too)
from ..pipeline import Pass, register_pass, sites

__all__ = ["ACTIVATIONS", "InsertActivation", "InsertRelu", "insert_activation"]


Activation = Union[str, Callable[..., Any], nn.Module]


def insert_activation(gm: fx.GraphModule, nodes: list[fx.Node], fn: Activation) -> fx.GraphModule:
    """Apply ``fn`` to the output of each node in ``nodes``; every former user reads the result.

    This is the transform of torch.fx's own examples: ``inserting_after`` the node, then
    ``replace_all_uses_with`` on every user but the new node. Each node is a site
    (:mod:`fxlab.pipeline.sites`): reported as rewritten, or left alone beyond ``apply``'s ``limit``.
    """
    if isinstance(fn, str):
        if fn not in ACTIVATIONS:
            raise PassError(f"unknown activation {fn!r}; choose one of {', '.join(ACTIVATIONS)} or pass a callable")
        fn = ACTIVATIONS[fn]
    sites.looked(gm)
    for node in nodes:
        if node.op == "output":
            raise PassError("cannot insert an activation after the output node; select the node it returns")
        if not sites.allow(gm, node.name):
            continue
        with gm.graph.inserting_after(node):
            if isinstance(fn, nn.Module):
                path = _free_attr(gm, f"{node.name}_activation")
                gm.add_submodule(path, fn if len(nodes) == 1 else _clone(fn))
                act = gm.graph.call_module(path, args=(node,))
            elif callable(fn):
                act = gm.graph.call_function(fn, args=(node,))
            else:
                raise PassError(f"activation must be a name, a callable or an nn.Module, got {type(fn).__name__}")
        node.replace_all_uses_with(act, delete_user_cb=lambda user, act=act: user is not act)
        sites.rewrote(gm, node.name)
    return gm


def _free_attr(gm: fx.GraphModule, name: str) -> str:
    candidate, i = name, 1
    while hasattr(gm, candidate):
        candidate, i = f"{name}_{i}", i + 1
    return candidate


def _clone(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


@register_pass
@dataclass
class InsertActivation(Pass):
    """Insert an activation after the selected nodes; every former user reads the activated value.

    ``fn`` is a name (relu, gelu, sigmoid, tanh, silu), a function, or an ``nn.Module``.

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> from fxlab.passes import InsertActivation
    >>> model = build("mymodule")
    >>> gm = fxlab.apply(model, [InsertActivation(after="layer2", fn="gelu")])
    >>> x = torch.randn(2, 1, 28, 28)
    >>> h = torch.nn.functional.gelu(model.layer2(torch.relu(model.layer1(x.flatten(1)))))
    >>> torch.allclose(gm(x), model.layer3(torch.relu(h)))
    True
    """

    name = "insert-activation"
    kind = "changes"

    after: Selector
    fn: Activation = "relu"

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        return insert_activation(gm, select(gm, self.after), self.fn)


@register_pass
@dataclass
class InsertRelu(Pass):
    """Insert ``torch.relu`` after the selected nodes (``insert-activation`` with ``fn=relu``).

    >>> import fxlab, torch
    >>> from fxlab.models import build
    >>> from fxlab.passes import InsertRelu
    >>> model = build("mymodule")
    >>> gm = fxlab.apply(model, [InsertRelu("layer3")])
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.equal(gm(x), torch.relu(model(x)))
    True
    """

    name = "insert-relu"
    kind = "changes"

    after: Selector

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        return insert_activation(gm, select(gm, self.after), torch.relu)
