"""Loading every model file people have, safely; saving transformed models; ONNX and torch.export.

What :func:`load` reads (``torch.load(weights_only=True)`` for all of it; no code from a file runs
unless you pass ``trust=True``):

- a bare state dict (``torch.save(model.state_dict(), path)``, seeds 000/001): the architecture
  is a seed model of :mod:`fxlab.models` when the keys and shapes match one, else a generic
  :class:`MLP` rebuilt with the same parameter names (Linear, BatchNorm1d, LayerNorm; ReLU
  between, or ``act=``), loaded with ``strict=True``;
- checkpoint dicts: seed 002's (``model_state_dict``, ``optimizer_state_dict``, ``history``, ...),
  fxlab's training checkpoints (``fxlab.train``: ``format``, ``model``, ``model_state_dict``), and
  any dict holding a ``state_dict`` / ``model_state_dict`` with an optional ``model`` name;
- fxlab's own model files (:func:`save`): base architecture, pipeline text and state dict; the base
  is rebuilt, the pipeline re-run, then the weights loaded strictly;
- a whole pickled module (``torch.save(model)``, seeds 003/004): unpickling runs code, so it is
  refused unless ``trust=True`` (CLI ``--trust``).

Anything else — a missing, empty, truncated or corrupt file, a file that is not a torch file,
a state dict that is no MLP, a pickle that calls anything but tensor constructors — raises
:class:`~fxlab.errors.LoadError` with a one-line reason.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io as _io
import logging
import os
import pickle
import pickletools
import tempfile
import types
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import _util as files
from .errors import ExportError, FxlabError, LoadError, did_you_mean

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "MLP",
    "Loaded",
    "arch_of",
    "build_arch",
    "example_batch",
    "export_onnx",
    "export_program",
    "load",
    "load_file",
    "load_source",
    "model_from_state_dict",
    "save",
    "write_atomic",
]

#: The format tag of fxlab's transformed-model files (:func:`save`).
FORMAT = "fxlab.model/1"

#: The example batch used to export and check models: MNIST-shaped, batch 2 (torch.export
#: specialises a dimension whose example size is 1, so the dynamic batch axis needs 2).
EXAMPLE_SHAPE = (2, 1, 28, 28)

_PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# writing files atomically


def write_atomic(path: _PathLike, data: str | bytes | Callable[[str], None]) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`fxlab._util.write_atomic`); the folder must exist."""
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"cannot write {out}: folder {folder} does not exist")
    return files.write_atomic(out, data, make_dirs=False)


# --------------------------------------------------------------------------------------------
# the generic MLP


def _activation(name: str) -> Callable[..., torch.Tensor]:
    from .passes.activation import ACTIVATIONS

    if name not in ACTIVATIONS:
        raise LoadError(
            f"unknown activation {name!r}{did_you_mean(name, ACTIVATIONS)}; choose one of {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    owner = root
    for part in parents:
        child = owner._modules.get(part)
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    owner.add_module(leaf, module)


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
    ``fxlab.passes.ACTIVATIONS``) runs between blocks, a block being a Linear and the norms after it.

    >>> m = MLP([{"kind": "linear", "path": "fc1", "in": 784, "out": 32},
    ...          {"kind": "linear", "path": "fc2", "in": 32, "out": 10}])
    >>> m(torch.zeros(3, 1, 28, 28)).shape
    torch.Size([3, 10])
    >>> m.describe()
    'fc1 Linear(784→32) → relu → fc2 Linear(32→10)'
    """

    def __init__(self, layers: list[dict[str, Any]], sequence: list[str] | None = None, act: str = "relu") -> None:
        super().__init__()
        self.fxlab_spec = {
            "layers": [dict(s) for s in layers],
            "sequence": list(sequence or [s["path"] for s in layers]),
            "act": act,
        }
        self._fxlab_act = _activation(act)
        by_path: dict[str, nn.Module] = {}
        for spec in layers:
            module = _layer(spec)
            try:
                _set_submodule(self, spec["path"], module)
            except (KeyError, TypeError) as exc:
                raise LoadError(f"cannot rebuild layer {spec['path']!r}: {exc}") from exc
            by_path[spec["path"]] = module
        kinds = {s["path"]: s["kind"] for s in layers}
        blocks: list[list[nn.Module]] = []
        for path in self.fxlab_spec["sequence"]:
            if kinds[path] == "linear" or not blocks:
                blocks.append([])
            blocks[-1].append(by_path[path])
        self._fxlab_blocks = blocks

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
        specs = {s["path"]: s for s in self.fxlab_spec["layers"]}
        parts: list[str] = []
        for path in self.fxlab_spec["sequence"]:
            if specs[path]["kind"] == "linear" and parts:
                parts.append(self.fxlab_spec["act"])
            parts.append(_layer_text(specs[path]))
        return " → ".join(parts)

    def extra_repr(self) -> str:
        return f"act={self.fxlab_spec['act']}"


def _group(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        path, _, leaf = key.rpartition(".")
        groups.setdefault(path, {})[leaf] = value
    return groups


def _shape(t: Any) -> list[int]:
    return list(t.shape) if isinstance(t, torch.Tensor) else []


def mlp_spec(state: Mapping[str, torch.Tensor], act: str = "relu") -> dict[str, Any]:
    """The :class:`MLP` keyword arguments that fit ``state``, or ``LoadError`` saying why it is no MLP."""
    layers: list[dict[str, Any]] = []
    for path, params in _group(state).items():
        names = set(params)
        weight = params.get("weight")
        where = f"{path}." if path else ""
        if {"running_mean", "running_var"} <= names and names <= {"weight", "bias", "running_mean", "running_var",
                                                                   "num_batches_tracked"}:
            size = params["running_mean"].numel()
            layers.append({"kind": "batchnorm", "path": path, "size": size, "affine": "weight" in names})
        elif weight is not None and weight.dim() == 2 and names <= {"weight", "bias"}:
            layers.append({"kind": "linear", "path": path, "in": weight.shape[1], "out": weight.shape[0],
                           "bias": "bias" in names})
        elif weight is not None and weight.dim() == 1 and names <= {"weight", "bias"}:
            layers.append({"kind": "layernorm", "path": path, "size": weight.shape[0], "bias": "bias" in names})
        else:
            odd = next((n for n in sorted(names) if n not in ("weight", "bias")), "weight")
            shape = _shape(params.get(odd))
            raise LoadError(
                f"not a state dict of an MLP: {where}{odd} has shape {shape}; fxlab rebuilds Linear, "
                "BatchNorm1d and LayerNorm layers; give the architecture with --model NAME"
            )
        if not path:
            raise LoadError(
                f"parameter {sorted(names)[0]!r} belongs to no named layer: fxlab rebuilds MLPs whose layers "
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


# --------------------------------------------------------------------------------------------
# architectures: seed models by name and kwargs, or the generic MLP


def _linear_dims(get: Callable[[str], Any], path: str) -> tuple[int, int] | None:
    """(in, out) of the Linear-like layer at ``path``, from a module or a state dict."""
    found = get(path)
    if found is None:
        return None
    if isinstance(found, torch.Tensor):
        return (found.shape[1], found.shape[0]) if found.dim() == 2 else None
    i, o = getattr(found, "in_features", None), getattr(found, "out_features", None)
    if isinstance(i, int) and isinstance(o, int):
        return i, o
    weight = getattr(found, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return weight.shape[1], weight.shape[0]
    return None


def _seed_kwargs(name: str, get: Callable[[str], Any]) -> dict[str, Any] | None:
    """The keyword arguments of seed model ``name`` that its layer sizes imply (None: does not fit)."""
    from .models import MODELS

    dims = lambda path: _linear_dims(get, path)  # noqa: E731
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


def build_arch(arch: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A fresh model of architecture ``arch``: a seed model name, or ``"mlp"`` (a generic :class:`MLP`)."""
    from .models import MODELS, build

    kwargs = dict(kwargs or {})
    if arch == "mlp":
        return MLP(**kwargs)
    if arch not in MODELS:
        raise LoadError(f"unknown model {arch!r}{did_you_mean(arch, MODELS)}; known models: {', '.join(MODELS)}, mlp")
    try:
        return build(arch, **kwargs)
    except TypeError as exc:
        raise LoadError(f"cannot build {arch!r} with {kwargs}: {exc}") from exc


def _arch_text(arch: str, kwargs: Mapping[str, Any]) -> str:
    if arch == "mlp":
        return "generic MLP"
    args = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in kwargs.items())
    return f"{arch}({args})" if args else arch


def _signature(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _meta_state(arch: str, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _signature(build_arch(arch, kwargs).state_dict())


def match_seed(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """The seed model (name, kwargs) whose state dict has exactly ``state``'s keys and shapes."""
    from .models import MODELS

    want = _signature(state)
    for name in MODELS:
        kwargs = _seed_kwargs(name, lambda p: state.get(f"{p}.weight"))
        if kwargs is None:
            continue
        try:
            if _meta_state(name, kwargs) == want:
                return name, kwargs
        except (FxlabError, TypeError, ValueError, RuntimeError):
            continue
    return None


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = _signature(model.state_dict())
        theirs = _signature(state)
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
        reason = "; ".join(parts) or str(exc).splitlines()[0]
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
        _load_strict(model, state, type(model).__name__)
        found = arch_of(model)
        return model, *(found or (type(model).__name__, {}))
    if model is not None:
        if act is not None:
            raise LoadError("act applies to generic MLPs rebuilt from a state dict; it cannot be combined with model")
        kwargs = (_seed_kwargs(model, lambda p: state.get(f"{p}.weight")) or {}) if model != "mlp" else mlp_spec(state)
        built = build_arch(model, kwargs)
        _load_strict(built, state, f"model {model!r}")
        return _match_dtype(built, state), model, kwargs
    if act is None:
        seed = match_seed(state)
        if seed is not None:
            built = build_arch(*seed)
            _load_strict(built, state, f"model {seed[0]!r}")
            return _match_dtype(built, state), seed[0], seed[1]
    spec = mlp_spec(state, act or "relu")
    built = MLP(**spec)
    _load_strict(built, state, "the generic MLP rebuilt from its keys")
    return _match_dtype(built, state), "mlp", spec


def arch_of(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """(architecture name, kwargs) of ``model`` if it is, or was traced from, a known architecture.

    Looks at, in order: ``gm.meta["fxlab.base"]`` (set by :func:`load`), the ``fxlab_base``
    attribute, a ``fxlab_meta["model"]`` name (``fxlab.train.pretrained``), a generic
    :class:`MLP`, and the seed model classes (for a ``GraphModule``: its class name). The kwargs
    of parametrised seed models come from their layer sizes.
    """
    from .models import MODELS

    meta = getattr(model, "meta", None)
    for found in (meta.get("fxlab.base") if isinstance(meta, dict) else None, getattr(model, "fxlab_base", None)):
        if isinstance(found, Mapping) and isinstance(found.get("arch"), str):
            return found["arch"], dict(found.get("kwargs") or {})
    if isinstance(model, MLP):
        return "mlp", copy.deepcopy(model.fxlab_spec)

    def get(path: str) -> Any:
        try:
            return model.get_submodule(path)
        except AttributeError:
            return None

    trained = getattr(model, "fxlab_meta", None)
    if isinstance(trained, Mapping) and trained.get("model") in MODELS:
        name = trained["model"]
        return name, _seed_kwargs(name, get) or {}
    for name, cls in MODELS.items():
        if type(model) is cls or (isinstance(model, fx.GraphModule) and type(model).__name__ == cls.__name__):
            kwargs = _seed_kwargs(name, get)
            if kwargs is not None:
                return name, kwargs
    return None


# --------------------------------------------------------------------------------------------
# reading files: sniffing and pickle inspection (nothing here runs code from the file)

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

#: Globals that no model file needs: a pickle naming one is refused, even with trust=True.
_DANGEROUS_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty",
    "code", "codeop", "ctypes", "webbrowser", "marshal", "pickle", "_pickle", "multiprocessing",
    "signal", "asyncio", "http", "urllib", "ftplib", "smtplib", "telnetlib", "io", "_io", "builtins",
    "__builtin__", "types", "operator", "_operator",
}
_SAFE_BUILTINS = {"set", "frozenset", "slice", "range", "complex", "bytearray", "list", "dict", "tuple",
                  "int", "float", "str", "bytes", "bool", "object"}
_SAFE_OPERATORS = {("_operator", "getitem"), ("operator", "getitem")}


def _dangerous(module: str, name: str) -> bool:
    root = module.split(".")[0]
    if root in ("builtins", "__builtin__"):
        return name not in _SAFE_BUILTINS
    if (module, name) in _SAFE_OPERATORS:
        return False
    return root in _DANGEROUS_MODULES


def _pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals a pickle (or a stream of pickles) refers to, without running it."""
    found: list[str] = []
    memo: dict[int, Any] = {}
    stream = _io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[Any] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL" or op.name == "INST":
                    module, _, name = str(arg).partition(" ")
                    found.append(f"{module}.{name}")
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8",
                                 "SHORT_BINSTRING", "BINSTRING", "STRING"):
                    strings.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = strings[-1] if strings else None
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = strings[-1] if strings else None
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    strings.append(memo.get(int(arg)))
                elif op.name == "STACK_GLOBAL":
                    module, name = (strings[-2:] + [None, None])[:2] if len(strings) >= 2 else (None, None)
                    found.append(f"{module}.{name}")
                elif op.name not in ("MARK", "FRAME", "PROTO"):
                    strings.append(None)
        except Exception:  # a torn pickle: what was read so far is what there is
            break
    return found


@dataclass
class _Sniffed:
    kind: str  # "zip", "legacy", "pickle", "torchscript", "export", "onnx", "other"
    pickle_bytes: bytes = b""


def _sniff(path: Path) -> _Sniffed:
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if path.is_dir():
        raise LoadError(f"{path} is a folder, not a model file")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        raise LoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if size == 0:
        raise LoadError(f"{path} is empty (0 bytes): not a PyTorch file")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if any(n.endswith("/serialized_exported_program.json") or n.endswith("/models/model.json")
                       for n in names):
                    return _Sniffed("export")
                if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
                    return _Sniffed("torchscript")
                pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    raise LoadError(f"{path} is a zip archive but not a PyTorch file (no data.pkl inside)")
                data = zf.read(pkl)
        except zipfile.BadZipFile as exc:
            raise LoadError(f"{path} is truncated or corrupt: a zip archive that cannot be read ({exc})") from exc
        except (OSError, zipfile.LargeZipFile, EOFError, ValueError) as exc:
            raise LoadError(f"{path} is truncated or corrupt: {exc}") from exc
        return _Sniffed("zip", data)
    if head.startswith(_LEGACY_MAGIC):
        return _Sniffed("legacy", path.read_bytes())
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _Sniffed("pickle", path.read_bytes())
    if path.suffix.lower() == ".onnx":
        return _Sniffed("onnx")
    return _Sniffed("other")


def _describe_refusal(path: Path, globals_: list[str]) -> str:
    dangerous = sorted({g for g in globals_ if _dangerous(*g.rsplit(".", 1))})
    if dangerous:
        return (f"{path}: refused: its pickle calls {', '.join(dangerous[:3])}, which no model file needs; "
                "it may be malicious (nothing from it was run)")
    classes = sorted({g for g in globals_ if _looks_like_class(g)})
    own = [g for g in classes if not g.startswith("torch.")] or classes
    if any(g.startswith(("torch.nn.modules.", "torch.fx.graph_module.")) for g in globals_):
        return (f"{path} holds a whole pickled module (class {own[0]}, as torch.save(model) writes); unpickling "
                "it runs code from the file, so it is refused: if you trust the file, pass --trust "
                "(fxlab.load(..., trust=True)), or save model.state_dict() instead")
    if own:
        return (f"{path} holds pickled objects (class {own[0]}) that torch.load(weights_only=True) refuses; "
                "unpickling them runs code from the file: if you trust it, pass --trust")
    names = ", ".join(sorted(set(globals_))[:3]) or "unknown objects"
    return (f"{path} holds objects that torch.load(weights_only=True) refuses ({names}); unpickling them runs "
            "code from the file: if you trust it, pass --trust")


def _looks_like_class(qualified: str) -> bool:
    name = qualified.rsplit(".", 1)[-1]
    return name[:1].isupper() and not name.endswith("Storage") and not qualified.startswith("collections.")


def _torch_load_safe(path: Path, sniffed: _Sniffed) -> Any:
    if sniffed.kind == "export":
        raise LoadError(f"{path} is a torch.export program (.pt2): load it with torch.export.load(path).module()")
    if sniffed.kind == "torchscript":
        raise LoadError(f"{path} is a TorchScript archive: fxlab needs an nn.Module it can trace, not torch.jit.load's")
    if sniffed.kind == "onnx":
        raise LoadError(f"{path} is an ONNX file: fxlab reads PyTorch files (open ONNX files in Netron)")
    if sniffed.kind == "other":
        raise LoadError(f"{path} is not a PyTorch file (torch.save writes a zip archive or a pickle)")
    if sniffed.kind == "pickle":
        globals_ = _pickle_globals(sniffed.pickle_bytes)
        if any(_dangerous(*g.rsplit(".", 1)) for g in globals_ if "." in g):
            raise LoadError(_describe_refusal(path, globals_))
        raise LoadError(f"{path} is a plain Python pickle, not a file written by torch.save")
    try:
        with warnings_quiet(), _safe_extras():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        globals_ = _pickle_globals(sniffed.pickle_bytes)
        if "Unsupported global" in str(exc) or "not an allowed global" in str(exc) or globals_:
            raise LoadError(_describe_refusal(path, globals_)) from exc
        raise LoadError(f"{path} is truncated or corrupt: {_first_line(exc)}") from exc
    except Exception as exc:  # a torn pickle or archive fails in many ways (IndexError, EOFError, ...)
        raise LoadError(f"{path} is truncated or corrupt: {type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _safe_extras() -> contextlib.AbstractContextManager[Any]:
    """Harmless types that checkpoints hold, beyond torch's weights-only defaults: ``torch.__version__``
    (a ``TorchVersion``, a ``str`` subclass) saved as metadata."""
    from torch.torch_version import TorchVersion

    return torch.serialization.safe_globals([TorchVersion])


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- trusted loading: torch.load(weights_only=False) through an unpickler that names what is missing


class _Refused(Exception):
    pass


def _trusting_pickle_module(missing: list[str], stub_missing: bool) -> types.ModuleType:
    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if _dangerous(module, name):
                raise _Refused(f"{module}.{name}")
            try:
                return super().find_class(module, name)
            except (AttributeError, ImportError):
                missing.append(f"{module}.{name}")
                if not stub_missing:
                    raise
                return type(name, (nn.Module,), {"__module__": module, "_fxlab_stub": True,
                                                   "forward": _stub_forward})

    mod = types.ModuleType("fxlab_trusted_pickle")
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = pickle.load  # type: ignore[attr-defined]
    mod.__dict__["__name__"] = "fxlab_trusted_pickle"
    return mod


def _stub_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    raise LoadError(f"class {type(self).__module__}.{type(self).__name__} could not be imported")


def _torch_load_trusted(path: Path, *, stub_missing: bool) -> tuple[Any, list[str]]:
    missing: list[str] = []
    try:
        with warnings_quiet():
            obj = torch.load(path, map_location="cpu", weights_only=False,
                             pickle_module=_trusting_pickle_module(missing, stub_missing))
    except _Refused as exc:
        raise LoadError(
            f"{path}: refused even with --trust: its pickle calls {exc}, which no model file needs"
        ) from None
    except (AttributeError, ImportError) as exc:
        name = missing[-1] if missing else _first_line(exc)
        raise LoadError(
            f"{path} needs class {name}, which cannot be imported: import or define it before loading, "
            "or add --model NAME to load its weights into an fxlab model"
        ) from exc
    except Exception as exc:  # a torn pickle or archive fails in many ways
        raise LoadError(f"{path} is truncated or corrupt: {type(exc).__name__}: {_first_line(exc)}") from exc
    return obj, missing


# --------------------------------------------------------------------------------------------
# load


@dataclass
class Loaded:
    """A model read by :func:`load_file`, with what the file was and where it came from."""

    model: nn.Module
    kind: str  # "state dict", "checkpoint", "fxlab checkpoint", "fxlab model", "pickled module", "seed model"
    arch: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    pipeline: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def description(self) -> str:
        """One line: what the file held and which architecture it became."""
        where = f"{self.path}: " if self.path else ""
        arch = _arch_text(self.arch, self.kwargs) if self.arch else type(self.model).__name__
        if self.arch == "mlp" and isinstance(self.model, MLP):
            arch = f"generic MLP: {self.model.describe()}"
        text = f"{where}{self.kind}, loaded as {arch}" if self.path else f"{arch}: {self.kind}"
        if self.pipeline:
            text += f", pipeline {self.pipeline}"
        return text

    def base(self) -> nn.Module:
        """A fresh model of the base architecture (before the pipeline), in eval mode."""
        if not self.arch:
            raise LoadError(f"{self.path}: the base architecture is unknown")
        return build_arch(self.arch, self.kwargs).eval()


def load(
    path: _PathLike,
    *,
    model: str | nn.Module | None = None,
    trust: bool = False,
    act: str | None = None,
) -> nn.Module:
    """The model in ``path``, in eval mode (see the module docstring for the shapes it reads).

    ``model`` names an ``fxlab.models`` architecture (or is a module) to load the file's weights
    into; ``act`` rebuilds a bare state dict as a generic MLP with that activation; ``trust=True``
    lets a whole pickled module load (its code runs). Raises ``LoadError``.

    >>> import tempfile, torch, fxlab
    >>> from fxlab.models import build
    >>> path = tempfile.mkdtemp() + "/model_state_dict.pth"
    >>> torch.save(build("mymodule").state_dict(), path)
    >>> type(fxlab.load(path)).__name__
    'MyModule'
    """
    return load_file(path, model=model, trust=trust, act=act).model


def load_file(
    path: _PathLike,
    *,
    model: str | nn.Module | None = None,
    trust: bool = False,
    act: str | None = None,
) -> Loaded:
    """Like :func:`load`, returning a :class:`Loaded` that also says what the file was."""
    p = Path(path)
    if act is not None:
        _activation(act)
    sniffed = _sniff(p)
    missing: list[str] = []
    if trust and sniffed.kind in ("zip", "legacy"):
        obj, missing = _torch_load_trusted(p, stub_missing=True)
    else:
        obj = _torch_load_safe(p, sniffed)
    try:
        if isinstance(obj, nn.Module):  # only reachable with trust
            loaded = _from_module(p, obj, missing, model, act)
        else:
            loaded = _from_object(p, obj, model=model, act=act)
    except LoadError as exc:
        if str(exc).startswith(str(p)):
            raise
        raise LoadError(f"{p}: {exc}") from exc
    loaded.path = p
    loaded.model.eval()
    base = {"arch": loaded.arch, "kwargs": loaded.kwargs} if loaded.arch else None
    if base is not None:
        if isinstance(loaded.model, fx.GraphModule):
            loaded.model.meta["fxlab.base"] = base
        else:
            loaded.model.fxlab_base = base  # type: ignore[assignment]
    log.info("loaded %s", loaded.description)
    return loaded


def _from_module(p: Path, obj: nn.Module, missing: list[str], model: str | nn.Module | None,
                 act: str | None) -> Loaded:
    if missing and model is None:
        seed = match_seed(obj.state_dict())
        hint = f"add --model {seed[0]} (its weights fit that fxlab model)" if seed else "add --model NAME"
        raise LoadError(f"{p} needs class {missing[0]}, which cannot be imported: import or define it before "
                        f"loading, or {hint} to load the weights into an fxlab model")
    if missing or model is not None:
        state = obj.state_dict()
        built, arch, kwargs = model_from_state_dict(state, model=model, act=act)
        kind = "pickled module"
        if missing:
            kind += f" ({missing[0]} not importable; weights loaded into {arch})"
        return Loaded(built.eval(), kind, arch, kwargs, path=p)
    found = arch_of(obj)
    loaded = Loaded(obj.eval(), "pickled module", found[0] if found else None, found[1] if found else {}, path=p)
    if isinstance(obj, fx.GraphModule) and obj.meta.get("fxlab.pipeline"):
        loaded.pipeline = obj.meta["fxlab.pipeline"]
    return loaded


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _from_object(p: Path, obj: Any, *, model: str | nn.Module | None, act: str | None) -> Loaded:
    if not isinstance(obj, Mapping):
        raise LoadError(f"{p} holds a {type(obj).__name__}, not a model, state dict or checkpoint")
    if obj.get("format") == FORMAT:
        return _from_fxlab_file(p, obj, model=model)
    if _is_state_dict(obj):
        built, arch, kwargs = model_from_state_dict(obj, model=model, act=act)
        return Loaded(built, "state dict", arch, kwargs)
    key = next((k for k in ("model_state_dict", "state_dict", "model") if _is_state_dict(obj.get(k))), None)
    if key is None:
        keys = ", ".join(sorted(map(str, obj))[:6]) or "none"
        if not obj:
            raise LoadError(f"{p} holds an empty dict: no weights in it")
        raise LoadError(f"{p} holds a dict with keys {keys} but no state dict (expected tensors, or a "
                        "'model_state_dict' / 'state_dict' entry)")
    name = next((obj[k] for k in ("model", "model_name", "arch") if isinstance(obj.get(k), str)), None)
    fmt = obj.get("format")
    if model is None and name is not None and act is None:
        from .models import MODELS

        if name not in MODELS and name != "mlp":
            raise LoadError(f"{p} names model {name!r}, which fxlab does not know{did_you_mean(name, MODELS)}; "
                            "add --model NAME")
        model = name
    built, arch, kwargs = model_from_state_dict(obj[key], model=model, act=act)
    kind = "fxlab checkpoint" if isinstance(fmt, str) and fmt.startswith("fxlab.train") else "checkpoint"
    metadata = {k: v for k, v in obj.items() if k != key and not k.endswith("state_dict")}
    return Loaded(built, kind, arch, kwargs, metadata=metadata)


def _from_fxlab_file(p: Path, obj: Mapping[str, Any], *, model: str | nn.Module | None) -> Loaded:
    try:
        arch, state = obj["arch"], obj["state_dict"]
        kwargs, pipeline = dict(obj.get("kwargs") or {}), obj.get("pipeline", "")
    except KeyError as exc:
        raise LoadError(f"{p} is an fxlab model file without {exc.args[0]!r}: corrupt") from exc
    if isinstance(model, str) and model != arch:
        raise LoadError(f"{p} is an fxlab model of {arch!r}; --model {model} does not apply to it")
    gm = rebuild(arch, kwargs, pipeline, training=bool(obj.get("training", False)))
    _load_strict(gm, state, f"{_arch_text(arch, kwargs)} after pipeline {pipeline!r}" if pipeline else arch)
    metadata = {k: v for k, v in obj.items() if k not in ("state_dict", "format", "arch", "kwargs", "pipeline")}
    return Loaded(gm, "fxlab model", arch, kwargs, pipeline=pipeline, metadata=metadata)


# --------------------------------------------------------------------------------------------
# save


def _rerun(model: nn.Module, pipeline: str) -> nn.Module:
    """``pipeline`` applied to ``model`` with one example batch wherever a pass needs data: as the
    ``calibration`` of a pass whose calibration is None, and through the graph after a pass whose
    class ``calibrates``. The saved state dict, loaded strictly next, brings the real numbers."""
    from ._util import eval_mode, example_input
    from .pipeline import apply, parse_pipeline

    batch = example_input(model)
    current = model
    for p in parse_pipeline(pipeline):
        if dataclasses.is_dataclass(p) and getattr(p, "calibration", "absent") is None:
            p = dataclasses.replace(p, calibration=[batch])
        current = apply(current, [p])
        if type(p).calibrates:
            with torch.no_grad(), eval_mode(current):
                current(batch)
    return current


def rebuild(arch: str, kwargs: Mapping[str, Any], pipeline: str, *, training: bool = False) -> nn.Module:
    """A fresh ``arch`` model with ``pipeline`` re-run on it (weights still random): the skeleton
    that a saved state dict loads into."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = build_arch(arch, kwargs).train(training)
        if not pipeline:
            return base
        try:
            return _rerun(base, pipeline)
        except FxlabError as exc:
            raise LoadError(f"cannot rebuild {_arch_text(arch, kwargs)} with pipeline {pipeline!r}: "
                            f"{_first_line(exc)}") from exc


def _structure(model: nn.Module) -> tuple[str, list[tuple[str, tuple[int, ...], torch.dtype]]]:
    from .core import format_graph, trace

    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    return format_graph(gm), [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


def _base_candidates(model: nn.Module, base: Any) -> list[tuple[str, dict[str, Any]]]:
    from .models import MODELS

    if base is not None:
        if isinstance(base, str):
            return [(base, {})]
        if isinstance(base, tuple) and len(base) == 2:
            return [(base[0], dict(base[1]))]
        if isinstance(base, nn.Module):
            found = arch_of(base)
            if found is None:
                raise ExportError(f"{type(base).__name__} is not an fxlab architecture (fxlab.models or a loaded MLP); "
                                  "fxlab.save rebuilds models from one")
            return [found]
        raise ExportError(f"base must be a model name, (name, kwargs) or an nn.Module, got {type(base).__name__}")
    found = arch_of(model)
    if found is not None:
        return [found]

    def get(path: str) -> Any:
        try:
            return model.get_submodule(path)
        except AttributeError:
            return None

    found_seeds = [(n, kw) for n in MODELS if (kw := _seed_kwargs(n, get)) is not None]
    try:  # a generic MLP, when the pipeline kept the layers' names and shapes
        from .passes.activation import ACTIVATIONS

        spec = mlp_spec(model.state_dict())
        mlps = [("mlp", {**spec, "act": act}) for act in ACTIVATIONS]
    except LoadError:
        mlps = []
    return found_seeds + mlps


def save(model: nn.Module, path: _PathLike, *, base: Any = None, pipeline: str | None = None) -> Path:
    """Write ``model`` (a transformed ``GraphModule`` or a plain model) in fxlab's own format.

    The file is a plain dict (``torch.load(weights_only=True)`` reads it): ``format``, the base
    architecture ``arch`` and ``kwargs``, the ``pipeline`` text, the ``state_dict``, ``training``
    and versions. :func:`load` rebuilds the base, re-runs the pipeline and loads the weights
    strictly. ``base`` (a seed model name, ``(name, kwargs)``, or the original module) is found
    by itself for models from :func:`load`, ``fxlab.models.build`` and their ``fxlab.apply``
    results; ``pipeline`` defaults to the one ``fxlab.apply`` recorded. Before writing, the model
    is rebuilt that way and must come out with the same graph and state-dict shapes
    (``ExportError`` otherwise). The write is atomic.

    >>> import tempfile, torch, fxlab
    >>> from fxlab.models import build
    >>> gm = fxlab.apply(build("mymodule"), "insert-relu{after=layer3}")
    >>> path = fxlab.save(gm, tempfile.mkdtemp() + "/relu.pth")
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.equal(fxlab.load(path)(x), gm.eval()(x))
    True
    """
    from .pipeline import parse_pipeline

    if not isinstance(model, nn.Module):
        raise ExportError(f"fxlab.save expects an nn.Module, got {type(model).__name__}")
    meta = getattr(model, "meta", None)
    text = pipeline if pipeline is not None else (meta.get("fxlab.pipeline", "") if isinstance(meta, dict) else "")
    if text:
        try:
            parse_pipeline(text)
        except FxlabError as exc:
            raise ExportError(
                f"the model's pipeline has no text form ({_first_line(exc)}); fxlab.save re-runs pipelines from "
                "text: use passes with text options, or export with export_program / export_onnx"
            ) from exc
    want = _structure(model)
    tried = []
    chosen: tuple[str, dict[str, Any]] | None = None
    for arch, kwargs in _base_candidates(model, base):
        try:
            got = _structure(rebuild(arch, kwargs, text, training=model.training))
        except FxlabError as exc:
            tried.append(f"{_arch_text(arch, kwargs)}: {_first_line(exc)}")
            continue
        if got == want:
            chosen = (arch, kwargs)
            break
        what = "graph" if got[0] != want[0] else "state dict"
        tried.append(f"{_arch_text(arch, kwargs)} + pipeline gives a different {what}")
    if chosen is None:
        why = "; ".join(tried) if tried else "it is no fxlab architecture"
        raise ExportError(
            f"cannot save {type(model).__name__} in fxlab's format: rebuilding it from a base model and its "
            f"pipeline does not reproduce it ({why}); pass base=NAME, or export with export_program / export_onnx"
        )
    arch, kwargs = chosen
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    record = {
        "format": FORMAT,
        "arch": arch,
        "kwargs": kwargs,
        "pipeline": text,
        "training": bool(model.training),
        "state_dict": state,
        "fxlab_version": _version(),
        "torch_version": str(torch.__version__),
    }
    return write_atomic(path, lambda tmp: torch.save(record, tmp))


def _version() -> str:
    from . import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# export


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode within the block; every submodule's own mode is restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


def example_batch(model: nn.Module, shape: tuple[int, ...] = EXAMPLE_SHAPE) -> torch.Tensor:
    """A seeded random batch of ``shape`` that ``model`` accepts: float32, else its parameters' dtype."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    dtypes = [torch.float32] + sorted({p.dtype for p in params} - {torch.float32}, key=str)
    for dtype in dtypes[:-1]:
        try:
            with torch.no_grad(), eval_mode(model):
                model(x.to(dtype))
            return x.to(dtype)
        except Exception:  # wrong dtype for this model: try the next
            continue
    return x.to(dtypes[-1])


def _example(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    return example_input if example_input is not None else example_batch(model)


def export_program(model: nn.Module, path: _PathLike, *, example_input: torch.Tensor | None = None) -> Path:
    """Export ``model`` with ``torch.export`` (dynamic batch axis) and save it as a ``.pt2`` file.

    ``torch.export.load(path).module()`` runs it. The model is exported in eval mode;
    ``example_input`` defaults to an MNIST-shaped batch of 2. The write is atomic.
    """
    from torch.export import Dim, export
    from torch.export import save as save_program

    with eval_mode(model):
        x = _example(model, example_input)
        try:
            with warnings_quiet():
                program = export(model, (x,), dynamic_shapes=({0: Dim("batch_size")},))
        except Exception as exc:  # torch.export raises many kinds of errors
            raise ExportError(f"torch.export cannot export {type(model).__name__}: {_root_cause(exc)}") from exc
    return write_atomic(path, lambda tmp: save_program(program, tmp))


def export_onnx(
    model: nn.Module,
    path: _PathLike,
    *,
    example_input: torch.Tensor | None = None,
    check: bool = True,
    opset: int | None = None,
) -> Path:
    """Export ``model`` to ONNX like seed 003: input ``images``, output ``numbers``, dynamic batch axis.

    Uses torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, which needs
    ``onnxscript``) and falls back to the TorchScript exporter if that fails. With ``check``
    (default), the file is run with onnxruntime, when installed, on a batch of another size and must
    match PyTorch within 1e-4 (``ExportError`` otherwise). Models whose operations ONNX cannot
    express (e.g. int8 matmuls of quantized modules) raise ``ExportError``. The write is atomic.
    """
    with eval_mode(model):
        x = _example(model, example_input)
        written = write_atomic(path, lambda tmp: _onnx_export(model, x, tmp, opset))
        if check:
            _check_onnx(model, written, x)
    return written


@contextlib.contextmanager
def _quiet_output() -> Iterator[_io.StringIO]:
    """Silence Python's and the C++ side's stdout/stderr (torch's exporters print whole graphs)."""
    sink = _io.StringIO()
    saved = []
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:
                continue
        with tempfile.TemporaryFile() as tmp:
            for fd, _ in saved:
                os.dup2(tmp.fileno(), fd)
            try:
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings_quiet():
                    yield sink
            finally:
                for fd, copy_ in saved:
                    os.dup2(copy_, fd)
    finally:
        for _, copy_ in saved:
            os.close(copy_)


def _root_cause(exc: BaseException) -> str:
    import re

    while exc.__cause__ is not None:
        exc = exc.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", _first_line(exc))


def _onnx_export(model: nn.Module, x: torch.Tensor, tmp: str, opset: int | None) -> None:
    import torch.onnx

    names = {"input_names": ["images"], "output_names": ["numbers"]}
    errors = []
    try:
        import onnxscript  # noqa: F401
        from torch.export import Dim

        with _quiet_output():
            program = torch.onnx.export(model, (x,), None, dynamo=True, verbose=False, report=False,
                                        dynamic_shapes=({0: Dim("batch_size")},), opset_version=opset, **names)
        if program is None:
            raise ExportError("the exporter returned nothing")
        program.save(tmp)
        return
    except ImportError as exc:
        errors.append(f"dynamo exporter unavailable ({exc.name or exc}: pip install 'fxlab[onnx]')")
    except Exception as exc:
        errors.append(f"dynamo exporter: {_root_cause(exc)}")
    log.info("ONNX dynamo export failed (%s); trying the TorchScript exporter", errors[-1])
    try:
        with _quiet_output():
            torch.onnx.export(model, (x,), tmp, dynamo=False, verbose=False, opset_version=opset or 17,
                              dynamic_axes={"images": {0: "batch_size"}, "numbers": {0: "batch_size"}}, **names)
        return
    except Exception as exc:
        errors.append(f"TorchScript exporter: {_root_cause(exc)}")
    raise ExportError(f"ONNX cannot express {type(model).__name__}: {'; '.join(errors)}")


def _check_onnx(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime not installed: ONNX file not checked")
        return
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of {type(model).__name__} is unsupported: onnxruntime cannot run the "
                          f"exported file ({_first_line(exc)})") from exc
    batch = torch.cat([x, x[:1]])  # another batch size than the export's: proves the dynamic axis
    with torch.no_grad():
        want = model(batch).float().cpu().numpy()
    got = session.run(["numbers"], {"images": batch.cpu().float().numpy()})[0]
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-4, rtol=1e-4):
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        path.unlink(missing_ok=True)
        raise ExportError(f"the ONNX model's outputs differ from PyTorch's (max abs diff {diff:.3g}, "
                          f"shapes {got.shape} vs {want.shape})")


def load_source(
    source: str | None,
    *,
    model: str | None = None,
    trust: bool = False,
    act: str | None = None,
) -> Loaded:
    """What the commands show and transform: a model file, or the name of a seed model.

    A path that exists is loaded with :func:`load_file`; otherwise ``source`` may name a seed model
    of ``fxlab.models`` (built with random weights, seeded 0: for looking at an architecture or a
    pipeline); ``source=None`` with ``model=NAME`` does the same.
    """
    from .models import MODELS

    name = None
    if source is None:
        if model is None:
            raise LoadError("name a model file, or a seed model with --model NAME")
        name = model
    elif not Path(source).exists() and source in MODELS:
        if model is not None and model != source:
            raise LoadError(f"{source!r} is a seed model name; --model {model} does not apply to it")
        name = source
    elif not Path(source).exists():
        hint = did_you_mean(source, MODELS)
        raise LoadError(f"{source}: no such file, and not a seed model name{hint}")
    if name is not None:
        if act is not None:
            raise LoadError("--act applies to state dicts rebuilt as generic MLPs, not to seed models")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            built = build_arch(name, {})
        built.eval().fxlab_base = {"arch": name, "kwargs": {}}  # type: ignore[assignment]
        return Loaded(built, "seed model with random weights", name, {})
    assert source is not None
    return load_file(source, model=model, trust=trust, act=act)
