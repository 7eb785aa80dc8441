"""Loading every model file people have, safely.

What :func:`load` reads (``torch.load(weights_only=True)`` for all of it; no code from a file runs
unless you pass ``trust=True``):

- a bare state dict (``torch.save(model.state_dict(), path)``, seeds 000/001): the architecture
  is a seed model of :mod:`fxlab.models` when the keys and shapes match one, else a generic
  :class:`~fxlab.models.MLP` rebuilt with the same parameter names (Linear, BatchNorm1d, LayerNorm;
  ReLU between, or ``act=``), loaded with ``strict=True``;
- checkpoint dicts: seed 002's (``model_state_dict``, ``optimizer_state_dict``, ``history``, ...),
  fxlab's training checkpoints (``fxlab.train``: ``format``, ``model``, ``model_state_dict``), and
  any dict holding a ``state_dict`` / ``model_state_dict`` with an optional ``model`` name;
- fxlab's own model files (:func:`fxlab.save`): base architecture, pipeline text and state dict;
  the base is rebuilt, the pipeline re-run (:func:`~fxlab.serialization.save.rebuild`), then the
  weights loaded strictly;
- a whole pickled module (``torch.save(model)``, seeds 003/004): unpickling runs code, so it is
  refused unless ``trust=True`` (CLI ``--trust``), and even then only ``nn.Module`` classes,
  tensors and torch's rebuild helpers are admitted (:mod:`~fxlab.serialization.trust`).

Anything else — a missing, empty, truncated or corrupt file, a file that is not a torch file,
an fxlab model file with a malformed field or a newer format, a state dict that is no MLP, a
pickle that calls anything but tensor constructors — raises
:class:`~fxlab.errors.LoadError` with a one-line reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LoadError, did_you_mean
from ..models import MLP, MODELS
from ..models.mlp import activation
from ..models.recognize import arch_of, arch_text, build_arch, load_strict, match_seed, model_from_state_dict
from ..models.spec import ModelSpec, build_spec, imported, is_user_spec, resolve
from .save import FORMAT, READABLE_FORMATS, rebuild
from .sniff import sniff, torch_load_safe
from .trust import torch_load_trusted

log = logging.getLogger(__name__)

_PathLike = str | os.PathLike[str]


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
        arch = arch_text(self.arch, self.kwargs) if self.arch else type(self.model).__name__
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
    model: ModelSpec = None,
    trust: bool = False,
    act: str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The model in ``path``, in eval mode (see the module docstring for the shapes it reads).

    ``model`` is the architecture to load the file's weights into: an ``fxlab.models`` name,
    ``"package.module:Class"`` or ``"path/to/file.py:Class"`` (your own class, imported), a class
    or callable (called with ``model_args``), or a module instance (:mod:`fxlab.models.spec`); ``act`` rebuilds a bare state dict as a generic MLP with that activation; ``trust=True``
    lets a whole pickled module load (its code runs). Raises ``LoadError``.

    >>> import tempfile, torch, fxlab
    >>> from fxlab.models import build
    >>> path = tempfile.mkdtemp() + "/model_state_dict.pth"
    >>> torch.save(build("mymodule").state_dict(), path)
    >>> type(fxlab.load(path)).__name__
    'MyModule'
    """
    return load_file(path, model=model, trust=trust, act=act, model_args=model_args).model


def load_file(
    path: _PathLike,
    *,
    model: ModelSpec = None,
    trust: bool = False,
    act: str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Loaded:
    """Like :func:`load`, returning a :class:`Loaded` that also says what the file was."""
    p = Path(path)
    model = resolve(model, model_args)
    if act is not None:
        activation(act)
    sniffed = sniff(p)
    missing: list[str] = []
    if trust and sniffed.kind in ("zip", "legacy"):
        obj, missing = torch_load_trusted(p, sniffed)
    else:
        obj = torch_load_safe(p, sniffed)
    try:
        if isinstance(obj, nn.Module):  # only reachable with trust
            loaded = _from_module(p, obj, missing, model, act)
        else:
            loaded = _from_object(p, obj, model=model, act=act, trust=trust)
    except LoadError as exc:
        if str(exc).startswith(str(p)):
            raise
        raise LoadError(f"{p}: {exc}") from exc
    loaded.path = p
    loaded.model.eval()
    log.info("loaded %s", loaded.description)
    _warn_non_finite(p, loaded.model)
    return loaded


def _warn_non_finite(p: Path, model: nn.Module) -> None:
    """A warning (logged, not raised: such a model can still be looked at) naming the NaN/inf tensors."""
    bad = [k for k, v in model.state_dict().items()
           if v.is_floating_point() and not bool(torch.isfinite(v if v.element_size() > 1 else v.float()).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        log.warning("%s: %s hold%s NaN or inf values; the model's outputs will be NaN/inf", p,
                    ", ".join(bad[:5]) + more, "s" if len(bad) == 1 else "")


def load_source(
    source: str | None,
    *,
    model: ModelSpec = None,
    trust: bool = False,
    act: str | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Loaded:
    """What the commands show and transform: a model file, or the name of a seed model.

    A path that exists is loaded with :func:`load_file`; otherwise ``source`` may name a seed model
    of ``fxlab.models`` (built with random weights, seeded 0: for looking at an architecture or a
    pipeline); ``source=None`` with ``model=NAME`` does the same, and so with ``model`` naming a class
    of the user's (``pkg.mod:Class``, ``file.py:Class``: built with ``model_args``, random weights).
    """
    name = None
    if source is None and model is not None and not (isinstance(model, str) and model in MODELS and not model_args):
        if act is not None:
            raise LoadError("--act applies to state dicts rebuilt as generic MLPs, not to --model")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            built = build_spec(model, model_args)
        found = arch_of(built)
        return Loaded(built.eval(), "model with random weights", found[0] if found else None,
                      found[1] if found else {})
    if source is None:
        if model is None:
            raise LoadError("name a model file, or a seed model with --model NAME")
        name = model
    elif not Path(source).exists() and source in MODELS:
        if model is not None and model != source:
            raise LoadError(f"{source!r} is a seed model name; --model {model} does not apply to it")
        name = source
    elif not Path(source).exists():
        raise LoadError(f"{source}: no such file, and not a seed model name{did_you_mean(source, MODELS)}")
    if name is None:
        assert source is not None
        return load_file(source, model=model, trust=trust, act=act, model_args=model_args)
    if act is not None:
        raise LoadError("--act applies to state dicts rebuilt as generic MLPs, not to seed models")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        built = build_arch(name, {})
    return Loaded(built.eval(), "seed model with random weights", name, {})


def _from_module(p: Path, obj: nn.Module, missing: list[str], model: str | nn.Module | None,
                 act: str | None) -> Loaded:
    if missing and model is None:
        seed = match_seed(obj.state_dict())
        hint = f"add --model {seed[0]} (its weights fit that fxlab model)" if seed else "add --model NAME"
        raise LoadError(f"{p} needs class {missing[0]}, which cannot be imported: import or define it before "
                        f"loading, or {hint} to load the weights into an fxlab model")
    if missing or model is not None:
        built, arch, kwargs = model_from_state_dict(obj.state_dict(), model=model, act=act)
        kind = "pickled module"
        if missing:
            kind += f" ({missing[0]} not importable; weights loaded into {arch})"
        return Loaded(built.eval(), kind, arch, kwargs, path=p)
    found = arch_of(obj)
    return Loaded(obj.eval(), "pickled module", found[0] if found else None, found[1] if found else {}, path=p)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _check_user_arch(p: Path, arch: str, trust: bool) -> None:
    """A file naming a user class rebuilds it only if that class's module is imported already (or with trust)."""
    if is_user_spec(arch) and not trust and not imported(arch):
        spec = arch.removeprefix("user:")
        raise LoadError(f"{p} is built on your class {spec}: import its module first, or pass --model {spec} "
                        "(or --trust) to let fxlab import it")


def _from_object(p: Path, obj: Any, *, model: str | nn.Module | None, act: str | None,
                 trust: bool = False) -> Loaded:
    if not isinstance(obj, Mapping):
        raise LoadError(f"{p} holds a {type(obj).__name__}, not a model, state dict or checkpoint")
    if _is_fxlab_model(obj):
        return _from_fxlab_file(p, obj, model=model, trust=trust)
    if _is_state_dict(obj):
        built, arch, kwargs = model_from_state_dict(obj, model=model, act=act)
        return Loaded(built, "state dict", arch, kwargs)
    key = next((k for k in ("model_state_dict", "state_dict", "model") if _is_state_dict(obj.get(k))), None)
    if key is None:
        if not obj:
            raise LoadError(f"{p} holds an empty dict: no weights in it")
        keys = ", ".join(sorted(map(str, obj))[:6])
        raise LoadError(f"{p} holds a dict with keys {keys} but no state dict (expected tensors, or a "
                        "'model_state_dict' / 'state_dict' entry)")
    name = next((obj[k] for k in ("model", "model_name", "arch") if isinstance(obj.get(k), str)), None)
    if model is None and name is not None and act is None and is_user_spec(name):
        _check_user_arch(p, name, trust)
        args = obj.get("model_args")
        model = build_spec(name, args if isinstance(args, Mapping) else None)
    if model is None and name is not None and act is None:
        if name not in MODELS and name != "mlp":
            raise LoadError(f"{p} names model {name!r}, which fxlab does not know{did_you_mean(name, MODELS)}; "
                            "add --model NAME")
        model = name
    built, arch, kwargs = model_from_state_dict(obj[key], model=model, act=act)
    fmt = obj.get("format")
    kind = "fxlab checkpoint" if isinstance(fmt, str) and fmt.startswith("fxlab.train") else "checkpoint"
    metadata = {k: v for k, v in obj.items() if k != key and not k.endswith("state_dict")}
    return Loaded(built, kind, arch, kwargs, metadata=metadata)


@dataclass
class _ModelRecord:
    """The fields of an fxlab model file (:func:`fxlab.save`), each checked for its type."""

    arch: str
    kwargs: dict[str, Any]
    pipeline: str
    training: bool
    state_dict: Mapping[str, torch.Tensor]
    dtype: torch.dtype | None


_MODEL_TAG = FORMAT.rpartition("/")[0] + "/"  # "fxlab.model/"


def _is_fxlab_model(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is fxlab.save's dict: its format tag says so, or, the tag damaged, its fields do."""
    fmt = obj.get("format")
    if isinstance(fmt, str):
        return fmt.startswith(_MODEL_TAG)
    return "format" in obj and {"arch", "pipeline"} <= obj.keys()


def _invalid(field_name: str, problem: str) -> LoadError:
    return LoadError(f"not a valid fxlab model file: {field_name} {problem}")


def _kind(value: Any) -> str:
    """``a str ('garbage')``: what a field holds, for messages."""
    text, name = repr(value), type(value).__name__
    article = "an" if name[0].lower() in "aeiou" else "a"
    return f"{article} {name} ({text if len(text) <= 40 else text[:39] + '…'})"


def _check_format(p: Path, fmt: Any) -> None:
    """``LoadError`` unless ``fmt`` is a format tag this fxlab reads (a newer one is named as such)."""
    readable = ", ".join(READABLE_FORMATS)
    if fmt in READABLE_FORMATS:
        return
    if not isinstance(fmt, str):
        raise _invalid("format", f"is {_kind(fmt)}, not a format tag like {FORMAT!r}")
    version = fmt.removeprefix(_MODEL_TAG)
    newest = max(int(f.removeprefix(_MODEL_TAG)) for f in READABLE_FORMATS)
    if version.isdigit() and int(version) > newest:
        raise LoadError(f"{p} was written by a newer fxlab format ({fmt}); this fxlab reads {readable}: "
                        "upgrade fxlab to load it")
    raise _invalid("format", f"{fmt!r} is unknown; this fxlab reads {readable}")


_REQUIRED = object()


def _field(obj: Mapping[str, Any], name: str, types: type | tuple[type, ...], what: str,
           default: Any = _REQUIRED) -> Any:
    """``obj[name]`` when it is of ``types`` (``default`` when absent, if given); else ``LoadError``."""
    if name not in obj:
        if default is _REQUIRED:
            raise _invalid(name, "is missing")
        return default
    value = obj[name]
    if not isinstance(value, types):
        raise _invalid(name, f"is {_kind(value)}, not {what}")
    return value


def _model_record(p: Path, obj: Mapping[str, Any]) -> _ModelRecord:
    """Every field of an fxlab model file checked, in one place; ``LoadError`` naming the first bad one."""
    _check_format(p, obj.get("format"))
    arch = _field(obj, "arch", str, "a model name")
    if not arch:
        raise _invalid("arch", "is empty, not a model name")
    kwargs = _field(obj, "kwargs", dict, "a dict of constructor arguments", default={})
    odd_keys = [k for k in kwargs if not isinstance(k, str)]
    if odd_keys:
        raise _invalid("kwargs", f"has key {odd_keys[0]!r}, not an argument name")
    state = _field(obj, "state_dict", Mapping, "a state dict")
    odd_entries = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd_entries:
        raise _invalid("state_dict", f"entry {odd_entries[0]!r} is {_kind(state[odd_entries[0]])}, not a named tensor")
    return _ModelRecord(
        arch=arch,
        kwargs=dict(kwargs),
        pipeline=_field(obj, "pipeline", str, "pipeline text", default=""),
        training=_field(obj, "training", bool, "True or False", default=False),
        state_dict=state,
        dtype=_dtype_field(obj.get("dtype")),
    )


def _dtype_field(name: Any) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise _invalid("dtype", f"is {_kind(name)}, not the name of a float dtype")
    return dtype


def _from_fxlab_file(p: Path, obj: Mapping[str, Any], *, model: str | nn.Module | None,
                     trust: bool = False) -> Loaded:
    record = _model_record(p, obj)
    arch, kwargs, pipeline = record.arch, record.kwargs, record.pipeline
    if isinstance(model, str) and model != arch:
        raise LoadError(f"{p} is an fxlab model of {arch!r}; --model {model} does not apply to it")
    _check_user_arch(p, arch, trust)
    gm = rebuild(arch, kwargs, pipeline, training=record.training, dtype=record.dtype)
    load_strict(gm, record.state_dict, f"{arch_text(arch, kwargs)} after pipeline {pipeline!r}" if pipeline else arch)
    metadata = {k: v for k, v in obj.items()
                if k not in ("state_dict", "format", "arch", "kwargs", "pipeline", "dtype")}
    return Loaded(gm, "fxlab model", arch, kwargs, pipeline=pipeline, metadata=metadata)
