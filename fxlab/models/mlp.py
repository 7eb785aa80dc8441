"""The generic MLP: a plain MLP rebuilt from a state dict, with the state dict's own parameter names.

Its spec (``layers``, ``sequence``, ``act``) is plain data, so that ``fxlab.save`` can write it
and ``fxlab.load`` rebuild it; ``model.fxlab_arch`` is ``("mlp", spec)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._util import get_submodule, set_submodule
from ..errors import LoadError, did_you_mean

__all__ = ["ACTIVATIONS", "MLP", "activation"]

#: Activations known by name (in pipeline text, and between the blocks of a generic MLP).
ACTIVATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": F.silu,
}


def activation(name: str) -> Callable[..., torch.Tensor]:
    """The activation called ``name``; ``LoadError`` listing the known ones otherwise."""
    if name not in ACTIVATIONS:
        raise LoadError(
            f"unknown activation {name!r}{did_you_mean(name, ACTIVATIONS)}; choose one of {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _add_path(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` at dotted ``path``, creating empty parent modules on the way."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        try:
            get_submodule(root, prefix)
        except AttributeError:
            set_submodule(root, prefix, nn.Module())
    set_submodule(root, path, module)


def _layer(spec: Mapping[str, Any]) -> nn.Module:
    kind = spec["kind"]
    if kind == "linear":
        return nn.Linear(spec["in"], spec["out"], bias=spec.get("bias", True))
    if kind == "batchnorm":
        return nn.BatchNorm1d(spec["size"], affine=spec.get("affine", True),
                              track_running_stats=spec.get("track_running_stats", True))
    if kind == "layernorm":
        return nn.LayerNorm(spec["size"], elementwise_affine=spec.get("affine", True), bias=spec.get("bias", True))
    raise LoadError(f"unknown layer kind {kind!r} in an MLP spec")


def _layer_text(spec: Mapping[str, Any]) -> str:
    if spec["kind"] == "linear":
        return f"{spec['path']} Linear({spec['in']}→{spec['out']})"
    name = "BatchNorm1d" if spec["kind"] == "batchnorm" else "LayerNorm"
    return f"{spec['path']} {name}({spec['size']})"


class MLP(nn.Module):
    """A plain MLP rebuilt from a state dict, with the state dict's own parameter names.

    ``layers`` lists the layers in registration order as plain dicts (``kind`` ``linear``,
    ``batchnorm`` or ``layernorm``, ``path``, sizes); ``sequence`` gives their order in the
    forward pass (default: ``layers`` order). The input is flattened; ``act`` (a name of
    :data:`ACTIVATIONS`) runs between blocks, a block being a Linear and the norms after it.

    >>> m = MLP([{"kind": "linear", "path": "fc1", "in": 784, "out": 32},
    ...          {"kind": "linear", "path": "fc2", "in": 32, "out": 10}])
    >>> m(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3, 10])
    >>> m.describe()
    'fc1 Linear(784→32) → relu → fc2 Linear(32→10)'
    >>> m.fxlab_arch[0]
    'mlp'
    """

    def __init__(self, layers: list[dict[str, Any]], sequence: list[str] | None = None, act: str = "relu") -> None:
        super().__init__()
        self._fxlab_spec = {
            "layers": [dict(s) for s in layers],
            "sequence": list(sequence or [s["path"] for s in layers]),
            "act": act,
        }
        self._fxlab_act = activation(act)
        by_path: dict[str, nn.Module] = {}
        for spec in layers:
            module = _layer(spec)
            try:
                _add_path(self, spec["path"], module)
            except (KeyError, TypeError) as exc:
                raise LoadError(f"cannot rebuild layer {spec['path']!r}: {exc}") from exc
            by_path[spec["path"]] = module
        kinds = {s["path"]: s["kind"] for s in layers}
        blocks: list[list[nn.Module]] = []
        for path in self._fxlab_spec["sequence"]:
            if kinds[path] == "linear" or not blocks:
                blocks.append([])
            blocks[-1].append(by_path[path])
        self._fxlab_blocks = blocks

    @property
    def fxlab_arch(self) -> tuple[str, dict[str, Any]]:
        """``("mlp", spec)``: the keyword arguments that rebuild this MLP."""
        return "mlp", copy.deepcopy(self._fxlab_spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for i, block in enumerate(self._fxlab_blocks):
            if i:
                x = self._fxlab_act(x)
            for layer in block:
                x = layer(x)
        return x

    def describe(self) -> str:
        """The layers in forward order, e.g. ``fc1 Linear(784→128) → relu → fc2 Linear(128→10)``."""
        specs = {s["path"]: s for s in self._fxlab_spec["layers"]}
        parts: list[str] = []
        for path in self._fxlab_spec["sequence"]:
            if specs[path]["kind"] == "linear" and parts:
                parts.append(self._fxlab_spec["act"])
            parts.append(_layer_text(specs[path]))
        return " → ".join(parts)

    def extra_repr(self) -> str:
        return f"act={self._fxlab_spec['act']}"
