"""What a file is, and what its pickle names, before anything in it runs.

:func:`sniff` tells a torch zip archive, a legacy torch file, a plain pickle, a TorchScript or
``torch.export`` archive and an ONNX file apart by their first bytes. :func:`pickle_globals`
lists the globals (``module.name``) a pickle refers to without calling any of them: for a torch
zip archive with ``torch.serialization.get_unsafe_globals_in_checkpoint``, for other pickles with
an unpickler whose every global is an inert stand-in. :func:`torch_load_safe` is
``torch.load(weights_only=True)`` with one-line errors that name what was refused.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._util import first_line
from ..errors import LoadError

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

#: Modules no model file needs anything from. Messages call a pickle naming one of these (or a
#: builtin other than a container) malicious; trusted loading refuses them without importing them.
NEVER_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "pdb", "bdb",
    "code", "codeop", "ctypes", "webbrowser", "marshal", "pickle", "_pickle", "multiprocessing", "signal",
    "asyncio", "http", "urllib", "ftplib", "smtplib", "telnetlib", "io", "_io", "types", "operator",
    "_operator", "functools", "_functools", "inspect", "platform", "tempfile", "glob", "pathlib", "antigravity",
    "this", "threading", "_thread", "select", "selectors", "zipimport", "pkgutil", "site", "posixpath",
    "ntpath", "shelve", "dbm", "sqlite3", "xmlrpc", "uuid", "timeit", "trace", "cProfile", "profile",
})
#: Builtins a pickle may name: containers and plain values, never eval / exec / getattr / __import__ / open.
BUILTIN_CONTAINERS = frozenset({"set", "frozenset", "slice", "range", "complex", "bytearray", "list", "dict",
                                "tuple", "int", "float", "str", "bytes", "bool"})


def obviously_hostile(qualified: str) -> bool:
    """Whether global ``module.name`` is something no model file calls (judged by name, nothing imported)."""
    module, _, name = qualified.rpartition(".")
    root = module.split(".")[0]
    if root in ("builtins", "__builtin__"):
        return name not in BUILTIN_CONTAINERS
    return root in NEVER_MODULES


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """torch.load's and the exporters' warnings silenced within the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- what a file is -----------------------------------------------------------------------------


@dataclass
class Sniffed:
    """What :func:`sniff` found: ``kind`` and, for pickles, the bytes of the (main) pickle."""

    kind: str  # "zip", "legacy", "pickle", "torchscript", "export", "onnx", "other"
    pickle_bytes: bytes = b""


def _sniff_zip(path: Path) -> Sniffed:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if any(n.endswith("/serialized_exported_program.json") or n.endswith("/models/model.json") for n in names):
                return Sniffed("export")
            if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
                return Sniffed("torchscript")
            bad = zf.testzip()  # reads every member: bytes changed on disk fail their CRC-32
            if bad is not None:
                raise LoadError(f"{path} is corrupt: member {bad} fails its CRC check (the file was damaged "
                                "after it was written); use another copy")
            pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                raise LoadError(f"{path} is a zip archive but not a PyTorch file (no data.pkl inside)")
            return Sniffed("zip", zf.read(pkl))
    except zipfile.BadZipFile as exc:
        raise LoadError(f"{path} is truncated or corrupt: a zip archive that cannot be read ({exc})") from exc
    except (OSError, zipfile.LargeZipFile, EOFError, ValueError, zlib.error) as exc:
        raise LoadError(f"{path} is truncated or corrupt: {exc}") from exc


def sniff(path: Path) -> Sniffed:
    """What ``path`` holds, judged by its first bytes; ``LoadError`` for a missing, empty or unreadable file."""
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
        return _sniff_zip(path)
    if head.startswith(_LEGACY_MAGIC):
        return Sniffed("legacy", path.read_bytes())
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return Sniffed("pickle", path.read_bytes())
    if path.suffix.lower() == ".onnx":
        return Sniffed("onnx")
    return Sniffed("other")


# -- what a pickle names ------------------------------------------------------------------------


class _Inert:
    """Stands in for every global while listing them: accepts any arguments and state, does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass


class _Lister(pickle.Unpickler):
    """Reads a pickle calling nothing from it: every global (GLOBAL, STACK_GLOBAL, ...) is :class:`_Inert`."""

    def __init__(self, stream: io.BytesIO, found: list[str]) -> None:
        super().__init__(stream)
        self.found = found

    def find_class(self, module: str, name: str) -> Any:
        self.found.append(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        return None


def _list_globals(data: bytes) -> list[str]:
    """The globals of a pickle, or of a stream of pickles (a legacy torch file), calling none of them."""
    found: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        try:
            _Lister(stream, found).load()
        except Exception:  # the raw tensor bytes after a legacy file's pickles, or a torn pickle
            break
    return found


def pickle_globals(path: Path, sniffed: Sniffed) -> list[str]:
    """The ``module.name`` globals the file's pickle refers to (those torch's weights-only loader
    does not allow, for a torch zip archive), in first-seen order; nothing from the file runs."""
    if sniffed.kind == "zip":
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # opcodes torch's static scan does not know (a hand-made pickle): list them ourselves
            pass
    return list(dict.fromkeys(_list_globals(sniffed.pickle_bytes)))


# -- loading without trust ----------------------------------------------------------------------


def _looks_like_class(qualified: str) -> bool:
    name = qualified.rsplit(".", 1)[-1]
    return name[:1].isupper() and not name.endswith("Storage") and not qualified.startswith("collections.")


def describe_refusal(path: Path, globals_: list[str]) -> str:
    """One line: why ``torch.load(weights_only=True)`` refused the file, and what to do."""
    hostile = sorted({g for g in globals_ if obviously_hostile(g)})
    if hostile:
        return (f"{path}: refused: its pickle calls {', '.join(hostile[:3])}, which no model file needs; "
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


def refuse_non_torch(path: Path, sniffed: Sniffed) -> None:
    """``LoadError`` for every kind of file that is not a torch.save file (zip or legacy)."""
    if sniffed.kind == "export":
        raise LoadError(f"{path} is a torch.export program (.pt2): load it with torch.export.load(path).module()")
    if sniffed.kind == "torchscript":
        raise LoadError(f"{path} is a TorchScript archive: fxlab needs an nn.Module it can trace, not torch.jit.load's")
    if sniffed.kind == "onnx":
        raise LoadError(f"{path} is an ONNX file: fxlab reads PyTorch files (open ONNX files in Netron)")
    if sniffed.kind == "other":
        raise LoadError(f"{path} is not a PyTorch file (torch.save writes a zip archive or a pickle)")
    if sniffed.kind == "pickle":
        globals_ = pickle_globals(path, sniffed)
        if any(obviously_hostile(g) for g in globals_):
            raise LoadError(describe_refusal(path, globals_))
        raise LoadError(f"{path} is a plain Python pickle, not a file written by torch.save")


def torch_load_safe(path: Path, sniffed: Sniffed) -> Any:
    """``torch.load(path, weights_only=True)`` (plus ``TorchVersion`` metadata); one-line ``LoadError``s."""
    from torch.torch_version import TorchVersion

    refuse_non_torch(path, sniffed)
    try:
        with warnings_quiet(), torch.serialization.safe_globals([TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        globals_ = pickle_globals(path, sniffed)
        if "Unsupported global" in str(exc) or "not an allowed global" in str(exc) or globals_:
            raise LoadError(describe_refusal(path, globals_)) from exc
        raise LoadError(f"{path} is truncated or corrupt: {first_line(exc)[:200]}") from exc
    except Exception as exc:  # a torn pickle or archive fails in many ways (IndexError, EOFError, ...)
        raise LoadError(f"{path} is truncated or corrupt: {type(exc).__name__}: {first_line(exc)[:200]}") from exc
