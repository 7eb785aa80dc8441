"""Architectures by name, and recognising one from a state dict by its keys and shapes.

An architecture is ``(name, kwargs)``: a seed model of :mod:`fxlab.models.seeds`, or ``"mlp"``
with the spec of a generic :class:`~fxlab.models.mlp.MLP`. fxlab's own models say theirs
(``model.fxlab_arch``); a bare state dict carries none, so :func:`match_seed` and
:func:`mlp_spec` read it from the keys and shapes.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import FxlabError, LoadError, closest, did_you_mean
from .mlp import MLP
from .seeds import MODELS
from .spec import USER, build_user, construct, is_user_spec

__all__ = ["arch_of", "arch_text", "build_arch", "load_strict", "match_seed", "mlp_spec", "model_from_state_dict"]

Arch = tuple[str, dict[str, Any]]


# -- architectures by name ----------------------------------------------------------------------


def build_arch(arch: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A fresh model of architecture ``arch``: a built-in model name, ``"mlp"`` (a generic :class:`MLP`),
    or ``"user:package.module:Class"`` (a user class, :func:`fxlab.models.spec.build_user`)."""
    kwargs = dict(kwargs or {})
    if arch == "mlp":
        return construct(MLP, kwargs, "a generic MLP")
    if is_user_spec(arch):
        return build_user(arch, kwargs)
    if arch not in MODELS:
        near = closest(arch, [*MODELS, "mlp"])
        known = [*near, *(n for n in [*MODELS, "mlp"] if n not in near)]
        raise LoadError(f"unknown model {arch!r}{did_you_mean(arch, [*MODELS, 'mlp'])}; known models: {', '.join(known)} "
                        "(or a class of your own: package.module:Class, path/to/file.py:Class)")
    return construct(MODELS[arch], kwargs, repr(arch))


def arch_text(arch: str, kwargs: Mapping[str, Any]) -> str:
    """An architecture for messages: ``mymnist(hidden_layers=(64,))``, ``generic MLP``."""
    if arch == "mlp":
        return "generic MLP"
    if arch.startswith(USER):
        arch = arch.removeprefix(USER)
    args = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in kwargs.items())
    return f"{arch}({args})" if args else arch


def arch_of(model: nn.Module) -> Arch | None:
    """``(name, kwargs)`` of ``model`` if it is, or was traced from, one of fxlab's own models.

    The one source: the model's ``fxlab_arch`` (seed models, the generic MLP), or for a
    ``GraphModule`` what tracing recorded of its base (``fxlab.core.provenance.base``).
    """
    from ..core.provenance import base

    found = getattr(model, "fxlab_arch", None)
    if found is None:
        recorded = base(model)
        found = recorded.get("arch") if isinstance(recorded, Mapping) else None
    if isinstance(found, (tuple, list)) and len(found) == 2 and isinstance(found[0], str):
        return found[0], dict(found[1] or {})
    return None


# -- recognising a state dict -------------------------------------------------------------------


def _group(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        path, _, leaf = key.rpartition(".")
        groups.setdefault(path, {})[leaf] = value
    return groups


def _shape(t: Any) -> list[int]:
    return list(t.shape) if isinstance(t, torch.Tensor) else []


def _layer_spec(path: str, params: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """One layer of an MLP spec from its parameters, or ``LoadError`` saying why it is none."""
    names = set(params)
    weight = params.get("weight")
    if {"running_mean", "running_var"} <= names and names <= {"weight", "bias", "running_mean", "running_var",
                                                               "num_batches_tracked"}:
        size = params["running_mean"].numel()
        return {"kind": "batchnorm", "path": path, "size": size, "affine": "weight" in names}
    if weight is not None and weight.dim() == 2 and names <= {"weight", "bias"}:
        return {"kind": "linear", "path": path, "in": weight.shape[1], "out": weight.shape[0], "bias": "bias" in names}
    if weight is not None and weight.dim() == 1 and names <= {"weight", "bias"}:
        return {"kind": "layernorm", "path": path, "size": weight.shape[0], "bias": "bias" in names}
    odd = next((n for n in sorted(names) if n not in ("weight", "bias")), "weight")
    where = f"{path}." if path else ""
    raise LoadError(
        f"not a state dict of an MLP: {where}{odd} has shape {_shape(params.get(odd))}; fxlab rebuilds Linear, "
        "BatchNorm1d and LayerNorm layers; give the architecture with --model NAME"
    )


def mlp_spec(state: Mapping[str, torch.Tensor], act: str = "relu") -> dict[str, Any]:
    """The :class:`MLP` keyword arguments that fit ``state``, or ``LoadError`` saying why it is no MLP."""
    layers: list[dict[str, Any]] = []
    for path, params in _group(state).items():
        layers.append(_layer_spec(path, params))
        if not path:
            raise LoadError(
                f"parameter {sorted(params)[0]!r} belongs to no named layer: fxlab rebuilds MLPs whose layers "
                "have names; give the architecture with --model NAME"
            )
    linears = [s for s in layers if s["kind"] == "linear"]
    if not linears:
        raise LoadError("not a state dict of an MLP: it has no Linear layer (2-D weight)")
    chain = _chain(linears)
    blocks: dict[str, list[dict[str, Any]]] = {s["path"]: [] for s in chain}
    for i, spec in enumerate(layers):
        if spec["kind"] == "linear":
            continue
        before = [s for s in layers[:i] if s["kind"] == "linear" and s["out"] == spec["size"]]
        fits = before[-1:] or [s for s in chain if s["out"] == spec["size"]][:1]
        if not fits:
            raise LoadError(
                f"not a state dict of an MLP: {spec['path']} normalises {spec['size']} features, "
                "but no Linear layer has that many outputs"
            )
        blocks[fits[0]["path"]].append(spec)
    sequence = [p for s in chain for p in [s["path"], *(n["path"] for n in blocks[s["path"]])]]
    return {"layers": layers, "sequence": sequence, "act": act}


def _chain(linears: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Linear layers in the order their sizes chain (registration order when it does)."""
    if all(a["out"] == b["in"] for a, b in zip(linears, linears[1:], strict=False)):
        return linears
    outs = {s["out"] for s in linears}
    starts = [s for s in linears if s["in"] not in outs] or linears[:1]
    order = [starts[0]]
    left = [s for s in linears if s is not starts[0]]
    while left:
        nxt = next((s for s in left if s["in"] == order[-1]["out"]), None)
        if nxt is None:
            sizes = ", ".join(f"{s['path']} {s['in']}→{s['out']}" for s in linears)
            raise LoadError(f"not a state dict of an MLP: its Linear layers do not chain ({sizes})")
        order.append(nxt)
        left.remove(nxt)
    return order


def _linear_dims(state: Mapping[str, torch.Tensor], path: str) -> tuple[int, int] | None:
    """(in, out) of the Linear layer at ``path`` of a state dict."""
    weight = state.get(f"{path}.weight")
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[1], weight.shape[0]
    return None


def seed_kwargs(name: str, state: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """The non-default keyword arguments of seed model ``name`` that ``state``'s sizes imply (None: no fit)."""
    dims: Callable[[str], tuple[int, int] | None] = lambda path: _linear_dims(state, path)  # noqa: E731
    kwargs: dict[str, Any]
    if name == "neuralnetwork":
        a, b = dims("fc1"), dims("fc2")
        if a is None or b is None:
            return None
        kwargs = {"input_size": a[0], "num_classes": b[1]}
    elif name == "simplenn":
        a, c = dims("fc1"), dims("fc3")
        if a is None or c is None:
            return None
        kwargs = {"input_size": a[0], "hidden_size": a[1], "num_classes": c[1]}
    elif name == "mymnist":
        hidden = []
        while (d := dims(f"_hidden_layer_{len(hidden)}")) is not None:
            hidden.append(d[1])
        kwargs = {"hidden_layers": hidden}
    else:
        kwargs = {}
    defaults = {k: p.default for k, p in inspect.signature(MODELS[name]).parameters.items()
                if p.default is not inspect.Parameter.empty}
    same = lambda a, b: list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b  # noqa: E731
    return {k: v for k, v in kwargs.items() if not (k in defaults and same(v, defaults[k]))}


def _signature(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _meta_state(arch: str, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _signature(build_arch(arch, kwargs).state_dict())


def match_seed(state: Mapping[str, torch.Tensor]) -> Arch | None:
    """The seed model (name, kwargs) whose state dict has exactly ``state``'s keys and shapes."""
    want = _signature(state)
    for name in MODELS:
        kwargs = seed_kwargs(name, state)
        if kwargs is None:
            continue
        try:
            if _meta_state(name, kwargs) == want:
                return name, kwargs
        except (FxlabError, TypeError, ValueError, RuntimeError):
            continue
    return None


# -- loading a state dict into an architecture --------------------------------------------------


def _mismatch(own: dict[str, tuple[int, ...]], theirs: dict[str, tuple[int, ...]]) -> str:
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    sizes = [f"{k} {list(theirs[k])} vs {list(own[k])}" for k in own if k in theirs and own[k] != theirs[k]]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''}")
    if extra:
        parts.append(f"unexpected {', '.join(extra[:4])}{' …' if len(extra) > 4 else ''}")
    if sizes:
        parts.append(f"shapes differ: {', '.join(sizes[:3])}{' …' if len(sizes) > 3 else ''}")
    return "; ".join(parts)


def _without_data(state: Mapping[str, torch.Tensor]) -> str:
    """Why a tensor of ``state`` cannot be copied into a model (meta or sparse), or ''."""
    for key, value in state.items():
        if value.is_meta:
            return f"{key} is a meta tensor: meta tensors hold no data; save the weights of a model on a real device"
        if value.layout != torch.strided:
            layout = str(value.layout).removeprefix("torch.")
            return f"{key} is a {layout} tensor; save dense weights (tensor.to_dense())"
    return ""


_COPY_FAILED = re.compile(r'While copying the parameter named "(?P<key>[^"]+)".*an exception occurred : '
                          r"\(['\"](?P<why>.*)['\"],\)")


def _torch_detail(exc: BaseException) -> str:
    """The first detail of torch's ``load_state_dict`` error, whose first line is only a heading."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
    copy_failed = _COPY_FAILED.search(detail)
    return f"{copy_failed['key']}: {copy_failed['why']}" if copy_failed else detail


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state, strict=True)``; ``LoadError`` naming the keys that do not fit."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reason = (_mismatch(_signature(model.state_dict()), _signature(state)) or _without_data(state)
                  or _torch_detail(exc))
        raise LoadError(f"the weights do not fit {what}: {reason}") from exc


def _match_dtype(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1 and (dtype := dtypes.pop()) != torch.float32:
        model.to(dtype)
    return model


def model_from_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    model: str | nn.Module | None = None,
    act: str | None = None,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """(model with ``state`` loaded strictly, architecture name, its kwargs).

    ``model`` names a seed model (or is a module) to load into; otherwise a seed model whose keys
    and shapes match, else a generic :class:`MLP` (with ``act`` between its blocks, default relu).
    An explicit ``act`` always rebuilds a generic MLP.
    """
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise LoadError(f"not a state dict: entry {bad[0]!r} is not a named tensor")
    if not state:
        raise LoadError("the state dict is empty: no weights to load")
    if isinstance(model, nn.Module):
        load_strict(model, state, type(model).__name__)
        return model, *(arch_of(model) or (type(model).__name__, {}))
    if model is not None:
        if act is not None:
            raise LoadError("act applies to generic MLPs rebuilt from a state dict; it cannot be combined with model")
        kwargs = (seed_kwargs(model, state) or {}) if model in MODELS else mlp_spec(state) if model == "mlp" else {}
        built = build_arch(model, kwargs)
        load_strict(built, state, f"model {model!r}")
        return _match_dtype(built, state), model, kwargs
    if act is None:
        seed = match_seed(state)
        if seed is not None:
            built = build_arch(*seed)
            load_strict(built, state, f"model {seed[0]!r}")
            return _match_dtype(built, state), seed[0], seed[1]
    spec = mlp_spec(state, act or "relu")
    built = MLP(**spec)
    load_strict(built, state, "the generic MLP rebuilt from its keys")
    return _match_dtype(built, state), "mlp", spec
