"""Model specs: what ``--model`` and ``fxlab.load(path, model=...)`` accept, turned into a module.

A spec is one of:

- a built-in name (``mymodule``, ``mnist-cnn``, ``lenet5``, ..., or ``mlp``): an fxlab model;
- ``package.module:Class``: the class is imported (``importlib.import_module``);
- ``path/to/file.py:Class``: the class is loaded from that file (``importlib`` spec from the path);
- from Python, a class or any callable returning an ``nn.Module`` (called with the arguments), or
  a module instance (used as it is).

Constructor arguments come as a dict (``--model-args '{"hidden_layers": [256, 32]}'`` on the
command line). Importing the module a spec names runs the user's own code, chosen on their own
command line, so no ``--trust`` is needed; a *file* naming a user class (an fxlab model saved
from one) is rebuilt only when the class is already imported, or with ``trust``.

A model built from a user class records ``fxlab_arch == ("user:<spec>", kwargs)``: ``fxlab.save``
writes that as its base, and :func:`fxlab.models.build_arch` rebuilds it.

>>> build_spec("mymodule").fxlab_arch
('mymodule', {})
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .._util import first_line
from ..errors import FxlabError, LoadError, UsageError, did_you_mean

__all__ = ["USER", "build_spec", "build_user", "canonical", "construct", "import_class", "imported", "is_user_spec",
           "parse_model_args", "resolve"]

#: The prefix of a user class's architecture name: ``user:package.module:Class``.
USER = "user:"

ModelSpec = str | nn.Module | type | Callable[..., nn.Module] | None


def is_user_spec(text: str) -> bool:
    """True when ``text`` names a user class (``pkg.mod:Class``, ``file.py:Class``, ``user:...``)."""
    return text.startswith(USER) or ":" in text  # no built-in name has a colon


def _split(text: str) -> tuple[str, str]:
    """(module or file, class name) of ``pkg.mod:Class`` / ``file.py:Class``; ``UsageError`` if malformed."""
    body = text.removeprefix(USER)
    where, sep, cls = body.rpartition(":")
    if not sep or not where or not cls or not cls.replace("_", "a").replace(".", "a").isalnum():
        raise UsageError(f"model {text!r}: write package.module:Class or path/to/file.py:Class")
    return where, cls


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def canonical(text: str) -> str:
    """The architecture name recorded for a user spec: ``user:pkg.mod:Class``, or ``user:/abs/file.py:Class``."""
    where, cls = _split(text)
    if _is_file(where):
        where = str(Path(where).expanduser().resolve())
    return f"{USER}{where}:{cls}"


def _file_module_name(where: str) -> str:
    """The name a user's model file is imported under (one per absolute path)."""
    path = str(Path(where).expanduser().resolve())
    return f"fxlab_user_{Path(path).stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def _module_from_file(where: str) -> Any:
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        near = [p.name for p in path.parent.glob("*.py")] if path.parent.is_dir() else []
        raise LoadError(f"no such file: {where}{did_you_mean(path.name, near)}")
    name = _file_module_name(where)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot load {where} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise LoadError(f"{where} failed to run: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return module


def _module_by_name(where: str) -> Any:
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        missing = exc.name or where
        if missing != where and not where.startswith(missing + "."):
            raise LoadError(f"importing {where} failed: it needs module {missing!r}, which is not installed") from exc
        parent = missing.rpartition(".")[0]
        pool: list[str] = []
        if parent:
            try:
                pkg = importlib.import_module(parent)
                import pkgutil

                pool = [f"{parent}.{m.name}" for m in pkgutil.iter_modules(getattr(pkg, "__path__", []))]
            except Exception:
                pool = []
        else:
            import pkgutil

            pool = [m.name for m in pkgutil.iter_modules()]
        raise LoadError(f"no module named {missing!r}{did_you_mean(missing, pool)}; is it on PYTHONPATH? "
                        "(or name a file: path/to/file.py:Class)") from exc
    except Exception as exc:
        raise LoadError(f"importing {where} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def import_class(text: str) -> type:
    """The ``nn.Module`` class a user spec names; ``LoadError`` (one line, closest names) otherwise."""
    where, cls_name = _split(text)
    module = _module_from_file(where) if _is_file(where) else _module_by_name(where)
    obj: Any = module
    for part in cls_name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            classes = [k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)]
            near = difflib.get_close_matches(cls_name, classes, n=3, cutoff=0.3)
            hint = f" (closest: {', '.join(near)})" if near else (
                f"; its nn.Module classes: {', '.join(classes[:6])}" if classes else "; it defines no nn.Module class")
            raise LoadError(f"{where} has no class {cls_name!r}{hint}")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        kind = type(obj).__name__ if not isinstance(obj, type) else f"class {obj.__name__}"
        raise LoadError(f"{where}:{cls_name} is a {kind}, not an nn.Module class")
    return obj


def _args_text(kwargs: Mapping[str, Any], width: int = 80) -> str:
    text = json.dumps(dict(kwargs), default=repr)
    return text if len(text) <= width else text[: width - 1] + "…"


def construct(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> Any:
    """``factory(**kwargs)``; whatever the constructor raises becomes one ``LoadError`` line naming ``what``."""
    try:
        return factory(**kwargs)
    except FxlabError:
        raise
    except Exception as exc:
        # a TypeError is about the arguments, and says so; any other type is part of the reason
        reason = first_line(exc) if isinstance(exc, TypeError) else f"{type(exc).__name__}: {first_line(exc)}"
        raise LoadError(f"cannot build {what} with arguments {_args_text(kwargs)}: {reason}") from exc


def _call(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> nn.Module:
    model = construct(factory, kwargs, what)
    if not isinstance(model, nn.Module):
        raise LoadError(f"{what} returned a {type(model).__name__}, not an nn.Module")
    return model


def _record(model: nn.Module, arch: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Set ``model.fxlab_arch`` unless its class says its own."""
    if not hasattr(type(model), "fxlab_arch"):
        model.__dict__["fxlab_arch"] = (arch, dict(kwargs))
    return model


def imported(arch: str) -> bool:
    """True when the user class ``arch`` names lives in a module this process has already imported
    (so rebuilding it runs no code a file chose)."""
    where, _ = _split(arch)
    if _is_file(where):
        return _file_module_name(where) in sys.modules
    return where in sys.modules


def build_user(text: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A fresh model of the user class ``text`` names, built with ``kwargs``; it records its ``fxlab_arch``."""
    kwargs = dict(kwargs or {})
    cls = import_class(text)
    return _record(_call(cls, kwargs, text.removeprefix(USER)), canonical(text), kwargs)


def _class_spec(cls: type) -> str | None:
    """``user:module:Qualname`` when ``cls`` can be imported back by that name, else None."""
    module = sys.modules.get(cls.__module__)
    if module is None or cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        return None
    path = getattr(module, "__file__", None)
    if cls.__module__.startswith("fxlab_user_") and path:
        return f"{USER}{Path(path).resolve()}:{cls.__qualname__}"
    return f"{USER}{cls.__module__}:{cls.__qualname__}"


def build_spec(spec: ModelSpec, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A model from any spec (see the module docstring) and constructor arguments."""
    from .recognize import build_arch

    kwargs = dict(kwargs or {})
    if isinstance(spec, nn.Module):
        if kwargs:
            raise UsageError("model arguments apply to a class or a name, not to a model instance")
        return spec
    if isinstance(spec, str):
        return build_user(spec, kwargs) if is_user_spec(spec) else build_arch(spec, kwargs)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        model = _call(spec, kwargs, spec.__qualname__)
        arch = _class_spec(spec)
        return _record(model, arch, kwargs) if arch else model
    if isinstance(spec, type) or not callable(spec):
        raise LoadError(f"model must be a name, an nn.Module class, a callable or an instance, "
                        f"not {type(spec).__name__ if not isinstance(spec, type) else spec.__name__}")
    return _call(spec, kwargs, getattr(spec, "__qualname__", "the model factory"))


def resolve(spec: ModelSpec, kwargs: Mapping[str, Any] | None = None) -> str | nn.Module | None:
    """What the loaders take as ``model``: a built-in name stays a name (its arguments are then read
    from the weights' shapes) unless ``kwargs`` are given; everything else becomes a module."""
    if spec is None:
        if kwargs:
            raise UsageError("--model-args needs --model")
        return None
    if isinstance(spec, str) and not is_user_spec(spec) and not kwargs:
        return spec
    return build_spec(spec, kwargs)


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args`` JSON: an object of constructor keyword arguments; ``UsageError`` otherwise."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model-args is not valid JSON ({exc.msg} at column {exc.colno}): {text}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"--model-args must be a JSON object of keyword arguments, like '{{\"hidden_layers\": [64]}}', "
                         f"not {type(value).__name__}")
    return value
