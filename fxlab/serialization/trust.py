"""Trusted loading (``trust=True``, CLI ``--trust``): an allowlist of what an ``nn.Module`` pickle needs.

Unpickling a whole module runs code from the file, so even a trusted file may only name:

- classes that are ``nn.Module`` subclasses (torch's, fxlab's, and the user's own);
- what torch's weights-only loader allows (tensors, storages, dtypes, ``Parameter``,
  ``torch._utils._rebuild_*``, ``collections.OrderedDict``, ...), ``torch.Size`` / ``torch.device``
  and other torch tensor and storage types, and torch's own ``_rebuild_*`` helpers;
- builtin containers and plain values (``dict``, ``list``, ``set``, ``int``, ...).

Every other global (``os.system``, ``subprocess.call``, ``builtins.eval``, ``pdb.set_trace``,
``functools.partial``, ``torch.fx``'s ``reduce_graph_module`` that executes code strings, ...)
is refused, whether the pickle names it with GLOBAL, STACK_GLOBAL or through ``__reduce__``.
A torch zip archive is checked before anything is unpickled; the unpickler checks every
global again as it reads (so globals a static scan cannot see are refused too).

Importing a module runs its code, so nothing is imported to decide: a global in a module that is not
imported yet is admitted for import only when that module's source defines it with a ``class``
statement (read with :mod:`ast`, not run), and only after every global of the file has passed that
screen. A user's script that defines the model's class is imported (the class needs it); one that
only defines a function the pickle names is never run.
"""

from __future__ import annotations

import _compat_pickle
import ast
import builtins
import collections
import functools
import importlib.machinery
import importlib.util
import io
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._util import first_line
from ..errors import LoadError
from .sniff import BUILTIN_CONTAINERS, NEVER_MODULES, Sniffed, pickle_globals, warnings_quiet

#: Modules of torch's own rebuild helpers (``_rebuild_*``: how tensors and parameters unpickle).
_TORCH_REBUILD_MODULES = frozenset({"torch._utils", "torch._tensor", "torch.storage", "torch.nn.parameter",
                                    "torch.serialization"})


class Refused(Exception):
    """A global the allowlist does not admit (its ``module.name`` is the message)."""


def _torch_allowed() -> set[str]:
    """What torch's weights-only unpickler allows by default and what the user added with add_safe_globals."""
    from torch import _weights_only_unpickler as wou

    return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())


def _admitted(obj: Any, module: str, name: str) -> bool:
    """Whether the imported global ``obj`` (``module.name``) is something an nn.Module pickle needs."""
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return True
    if f"{module}.{name}" in _torch_allowed():
        return True
    if module.split(".")[0] != "torch":
        return False
    if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
        return True
    if isinstance(obj, type):
        from torch.torch_version import TorchVersion

        return issubclass(obj, (torch.Tensor, torch.storage.TypedStorage, torch.UntypedStorage)) or obj in (
            torch.Size, torch.device, torch.dtype, TorchVersion)
    return module in _TORCH_REBUILD_MODULES and name.startswith("_rebuild") and callable(obj)


def refused_by_name(module: str, name: str) -> bool:
    """Refused without importing anything: builtins that are not containers, and every standard-library
    module but ``collections`` unless torch's weights-only loader allows that very name (importing a
    module runs its code, and some stdlib modules act on import: ``antigravity``, ``this``, ...)."""
    root = module.split(".")[0]
    if root in ("builtins", "__builtin__"):
        return name not in BUILTIN_CONTAINERS
    if root in NEVER_MODULES:
        return True
    return root in sys.stdlib_module_names and root != "collections" and f"{module}.{name}" not in _torch_allowed()


def python3_name(module: str, name: str) -> tuple[str, str]:
    """``module.name`` as Python 3 spells it (protocol-2 pickles use Python 2's names, e.g. ``commands.call``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _module_spec(module: str) -> Any:
    """The import spec of ``module``, found without importing it or any package above it that is not
    imported yet (None when there is no such module)."""
    parts = module.split(".")
    spec, path = None, None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None:
            spec, path = getattr(loaded, "__spec__", None), getattr(loaded, "__path__", None)
            continue
        try:
            spec = (importlib.util.find_spec(name) if i == 0  # a top-level name: nothing is imported
                    else importlib.machinery.PathFinder.find_spec(name, path))
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        path = spec.submodule_search_locations
    return spec


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a module or class body, those under ``if`` / ``try`` / ``with`` included."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from _top_level(getattr(node, field, []) if not isinstance(node, (ast.ClassDef, ast.FunctionDef,
                                                                                     ast.AsyncFunctionDef)) else [])
        for handler in getattr(node, "handlers", []):
            yield from _top_level(handler.body)


def _binding(body: list[ast.stmt], name: str) -> str | None:
    """How ``body`` binds ``name``: ``"class"`` for a class statement, ``"other"`` for any other
    binding (def, assignment, import), None when it does not."""
    found = None
    for node in _top_level(body):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return "class"
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            found = "other"
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                (a.asname or a.name.split(".")[0]) == name or a.name == "*" for a in node.names):
            found = "other"
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and any(
                isinstance(t, ast.Name) and t.id == name
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                for t in ast.walk(target)):
            found = "other"
    return found


@functools.lru_cache(maxsize=256)
def _class_in_source(module: str, name: str) -> bool | None:
    """Whether ``module``'s source defines ``name`` (a qualified name: ``Outer.Inner``) with class
    statements, read without running it: True, False (defined otherwise, or the source cannot be
    read), or None when neither the module nor the name exists (a class that is gone).

    Cached for one load (each global is screened before unpickling and again as it is read);
    :func:`torch_load_trusted` clears it, so an edited source is read afresh."""
    spec = _module_spec(module)
    if spec is None:
        return None
    try:
        source = spec.loader.get_source(module) if spec.loader is not None else None
        tree = ast.parse(source) if source is not None else None
    except Exception:
        tree = None
    if tree is None:
        return False
    body: list[ast.stmt] = tree.body
    for part in name.split("."):
        kind = _binding(body, part)
        if kind is None:
            return None
        if kind != "class":
            return False
        body = next(n for n in _top_level(body) if isinstance(n, ast.ClassDef) and n.name == part).body
    return True


def screen(module: str, name: str) -> None:
    """Refuse ``module.name`` (:class:`Refused`) on what can be told without importing anything: the
    names :func:`refused_by_name` refuses, and a global of a module not imported yet that its source
    does not define with a class statement. torch's own modules are not screened (importing them
    runs no code from the file); a name that does not exist passes (it is reported as missing)."""
    module, name = python3_name(module, name)
    if refused_by_name(module, name):
        raise Refused(f"{module}.{name}")
    if module in sys.modules or module.split(".")[0] in ("torch", "builtins", "__builtin__", "collections"):
        return
    if _class_in_source(module, name) is False:
        raise Refused(f"{module}.{name}")


def admit(module: str, name: str, find: Any) -> Any:
    """The global ``module.name`` (imported by ``find(module, name)``) if the allowlist admits it.

    Raises :class:`Refused` for anything else, before importing anything where :func:`screen` can
    tell; ``ImportError`` / ``AttributeError`` from ``find`` (a class that cannot be imported) pass
    through.
    """
    screen(module, name)
    module, name = python3_name(module, name)
    if module.split(".")[0] in ("builtins", "__builtin__"):
        return getattr(builtins, name)
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    obj = find(module, name)
    if not _admitted(obj, module, name):
        raise Refused(f"{module}.{name}")
    return obj


def _refused_globals(path: Path, sniffed: Sniffed) -> list[str]:
    """Every global of the file that the allowlist refuses, found before unpickling: first by
    :func:`screen` (nothing imported), and only when every global passes that, by importing them
    (importable ones only)."""
    names = [qualified.rpartition(".")[::2] for qualified in pickle_globals(path, sniffed)]
    refused = []
    for module, name in names:
        try:
            screen(module, name)
        except Refused as exc:
            refused.append(str(exc))
    if refused:
        return refused
    probe = pickle.Unpickler(io.BytesIO(b""))
    for module, name in names:
        try:
            admit(module, name, probe.find_class)
        except Refused as exc:
            refused.append(str(exc))
        except Exception:  # not importable: a missing class, reported (or stubbed) while unpickling
            continue
    return refused


def _stub_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    raise LoadError(f"class {type(self).__module__}.{type(self).__name__} could not be imported")


def _pickle_module(missing: list[str], stub_missing: bool) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` whose every unpickler (the legacy header's too) checks the allowlist."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return admit(module, name, super().find_class)
            except (AttributeError, ImportError):
                missing.append(f"{module}.{name}")
                if not stub_missing:
                    raise
                return type(name, (nn.Module,), {"__module__": module, "_fxlab_stub": True,
                                                   "forward": _stub_forward})

    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    mod = types.ModuleType("fxlab_trusted_pickle")
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    return mod


def _refusal(path: Path, names: list[str]) -> LoadError:
    return LoadError(f"{path}: refused even with --trust: its pickle calls {', '.join(names)}, which no model "
                     "file needs (fxlab admits nn.Module classes, tensors and torch's rebuild helpers); "
                     "nothing from it was run")


def torch_load_trusted(path: Path, sniffed: Sniffed, *, stub_missing: bool = True) -> tuple[Any, list[str]]:
    """``torch.load(weights_only=False)`` through the allowlist; returns (object, classes that were missing)."""
    _class_in_source.cache_clear()
    refused = _refused_globals(path, sniffed)
    if refused:
        raise _refusal(path, refused)
    missing: list[str] = []
    try:
        with warnings_quiet():
            obj = torch.load(path, map_location="cpu", weights_only=False,
                             pickle_module=_pickle_module(missing, stub_missing))
    except Refused as exc:
        raise _refusal(path, [str(exc)]) from None
    except (AttributeError, ImportError) as exc:
        name = missing[-1] if missing else first_line(exc)
        raise LoadError(
            f"{path} needs class {name}, which cannot be imported: import or define it before loading, "
            "or add --model NAME to load its weights into an fxlab model"
        ) from exc
    except Exception as exc:  # a torn pickle or archive fails in many ways
        raise LoadError(f"{path} is truncated or corrupt: {type(exc).__name__}: {first_line(exc)[:200]}") from exc
    return obj, missing
