"""Small helpers that every part of fxlab uses, written once.

Files are written atomically: a temporary file in the same folder, then a rename. A reader sees
the old file or the new one, never half of one; on any failure the temporary file is removed and
the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules import module as _module

from .core.trace import LeafModule


def default_mode() -> int:
    """The permissions a new file gets here (0o666 less the umask); mkstemp's own are 0o600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def kept_mode(path: Path) -> int:
    """The permissions a write to ``path`` leaves: an existing file keeps its own, a new one gets
    :func:`default_mode`."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return default_mode()


def write_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to ``path`` replaces: ``path`` itself, or for a symbolic link the file it points
    to (the link stays a link)."""
    out = Path(path)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` name one file: the same file on disk when both exist (hard and symbolic
    links included), else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def check_output(path: str | os.PathLike[str]) -> Path:
    """Check, before any work is done, that ``path`` can be written; return it.

    Its folder (for a symbolic link: its target's) must exist (fxlab never creates folders for an
    output: a mistyped folder is reported, not made), be a folder and be writable (a temporary file
    is created there and removed), and ``path`` must not be a folder. Raises ``WriteError`` with one
    line naming the path and what is wrong.
    """
    from .errors import WriteError

    out = Path(path)
    target = write_target(out)
    folder = target.parent if str(target.parent) else Path(".")
    if out.is_dir():
        raise WriteError(f"cannot write {out}: it is a folder; give a file name")
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise WriteError(f"cannot write {out}: {parent} is a file, not a folder")
            break
    if not folder.is_dir():
        raise WriteError(f"cannot write {out}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write {out}: folder {folder} is not writable")
    # permissions do not tell everything (/proc, a read-only mount, root's access): try, as the
    # write will, with a temporary file that is removed at once
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{target.stem}.", suffix=".probe")
    except OSError as exc:
        raise WriteError(f"cannot write {out}: {exc.strerror or exc}") from exc
    os.close(fd)
    Path(probe).unlink(missing_ok=True)
    return out


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes | Callable[[str], None],
    *,
    make_dirs: bool = False,
    check: Callable[[str], None] | None = None,
) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    ``data`` is text (UTF-8), bytes, or a function that writes the file at the path it is given
    (``torch.save``, ``fig.savefig``, an exporter). The temporary file keeps ``path``'s suffix, so
    writers that look at the extension behave. ``check`` (if given) is called with the temporary
    file's path before the rename: whatever it raises leaves ``path`` as it was. ``make_dirs``
    creates missing parent folders (caches); outputs the user names are checked with
    :func:`check_output` instead. An operating-system error (full disk, permissions, ...) becomes
    ``WriteError`` naming the path and the reason; the old file is never touched. A file that exists
    keeps its permissions; a symbolic link is written through: the file it points to is replaced.
    """
    from .errors import WriteError

    out = Path(path)
    target = write_target(out)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        if make_dirs:
            folder.mkdir(parents=True, exist_ok=True)
        else:
            check_output(out)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.stem}.", suffix=f".tmp{out.suffix}")
    except OSError as exc:
        raise WriteError(f"cannot write {out}: {exc.strerror or exc}") from exc
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
                fh.flush()
                os.fsync(fh.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, kept_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) or _is_write_failure(exc):
            raise WriteError(f"cannot write {out}: {getattr(exc, 'strerror', None) or first_line(exc)}") from exc
        raise
    return out


def _is_write_failure(exc: BaseException) -> bool:
    """torch's zip writer reports a full disk or a vanished file as a RuntimeError, not an OSError."""
    return isinstance(exc, RuntimeError) and any(
        text in str(exc) for text in ("PytorchStreamWriter failed", "file write failed", "unexpected pos")
    )


# --------------------------------------------------------------------------------------------
# messages


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# modules


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (``""`` is ``root`` itself)."""
    return root.get_submodule(path) if path else root


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``path`` under ``root``, replacing what was there."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_submodule(root, parent_path), name, module)


def child(module: nn.Module, name: str) -> Any:
    """``module.<name>`` for a child module, read from ``_modules`` without ``Module.__getattr__``
    (~0.8 µs a lookup, which a batch-1 forward pays at every ``self.<child>``); anything else
    (a parameter, a buffer, a missing name) goes through ``Module.__getattr__`` as before."""
    found = module.__dict__["_modules"].get(name)
    return found if found is not None else nn.Module.__getattr__(module, name)


def child_property(name: str) -> property:
    """A class attribute for the child ``name``: :func:`child`, found on the class before
    ``Module.__getattr__`` runs. Assigning and deleting a child still go through
    ``Module.__setattr__`` / ``__delattr__`` into ``_modules``, which it reads."""
    return property(lambda module: child(module, name), doc=f"the child module {name!r}")


_MODULE_CALL = nn.Module.__call__
_get_tracing_state = torch._C._get_tracing_state


def hooks_set(module: nn.Module) -> bool:
    """Whether a call of ``module`` runs hooks: its own (forward, forward-pre, backward,
    backward-pre) or global ones (``register_module_forward_hook`` and the like)."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
        or _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
    )


def module_call(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``self(*args, **kwargs)``: ``self.forward`` directly when nothing else would run, else
    ``nn.Module.__call__``, looked up at each call.

    ``nn.Module.__call__`` passes through two more Python frames (``_wrapped_call_impl``,
    ``_call_impl``) before it finds that no hook is set. Skipping them saves 0.8–2.1 µs per batch-1
    forward of a quantized seed MLP (5–8 module calls; 2-core EPYC), 3–9 % of it. Whatever would
    make ``nn.Module.__call__`` do more sends the call there instead: a hook on the module or a
    global one, a compiled call (``Module.compile``), TorchScript tracing, or torch.fx's tracer,
    which patches ``nn.Module.__call__`` while it traces.
    """
    if nn.Module.__call__ is not _MODULE_CALL:  # torch.fx's tracer patches it while it traces
        node = _leaf_node(self, args, kwargs)
        return node if node is not None else nn.Module.__call__(self, *args, **kwargs)
    if hooks_set(self) or self._compiled_call_impl is not None or _get_tracing_state():
        return nn.Module.__call__(self, *args, **kwargs)
    return self.forward(*args, **kwargs)


def _leaf_node(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> fx.Proxy | None:
    """While a torch.fx tracer that does not know ``module`` as a leaf traces it (the default
    ``torch.fx.symbolic_trace`` keeps only ``torch.nn``'s own modules whole), the one
    ``call_module`` node fxlab's tracer would record, instead of tracing into a forward whose
    kernel choice and in-place updates cannot be traced; None otherwise."""
    proxy = next((a for a in (*args, *kwargs.values()) if isinstance(a, fx.Proxy)), None)
    if proxy is None or not isinstance(module, LeafModule):  # an applied GraphModule is traced through
        return None
    tracer = proxy.tracer
    path = tracer.path_of_module(module)
    if tracer.is_leaf_module(module, path):
        return None  # the tracer records it itself (with its module-stack metadata)
    return tracer.create_proxy("call_module", path, args, kwargs)


class DirectCall:
    """Mixin, before ``nn.Module`` in the bases, for fxlab's leaf modules: calls go through
    :func:`module_call`, and any torch.fx tracer keeps the module as one node."""

    __call__ = module_call


def fresh_name(root: nn.Module, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first name not yet an attribute of ``root``."""
    name, i = base, 0
    while hasattr(root, name):
        i += 1
        name = f"{base}_{i}"
    return name


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode within the block; every submodule's own mode is restored after."""
    with saved_modes(model):
        model.eval()
        yield model


@contextlib.contextmanager
def saved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the caller may switch modes freely; every submodule's mode is restored after."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


# --------------------------------------------------------------------------------------------
# devices


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device that exists here; ``None`` or ``"auto"``: CUDA when present, else CPU.

    Raises ``UsageError`` naming the device and what this machine has.
    """
    from .errors import UsageError

    if device is None or device == "auto":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"{device!r} is not a device: use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {device!r}: CUDA is not available on this machine; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu" and not (dev.type == "mps" and torch.backends.mps.is_available()):
        raise UsageError(f"device {device!r} is not supported here: use cpu or cuda")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# example inputs

#: The shape fxlab feeds a model when it needs an example: one MNIST image batch.
MNIST_SHAPE = (1, 1, 28, 28)


def example_inputs(model: nn.Module, batch: int = 1) -> list[torch.Tensor]:
    """Candidate example inputs for ``model``, most likely first; seeded, on the model's device.

    An MNIST batch ``(batch, 1, 28, 28)`` (then ``(batch, in_features)`` of the first module with
    ``in_features`` when that is not 784), each in float32 and then in the parameters' other dtypes.
    """
    dtypes = [torch.float32]
    dtypes += sorted({p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float32}, key=str)
    shapes = [(batch, *MNIST_SHAPE[1:])]
    first = next((m for m in model.modules() if isinstance(getattr(m, "in_features", None), int)), None)
    width = getattr(first, "in_features", None)
    if width is not None and width != MNIST_SHAPE[2] * MNIST_SHAPE[3]:
        shapes.append((batch, width))
    device = model_device(model)
    out = []
    for shape in shapes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        out += [x.to(dtype) for dtype in dtypes]
    return out


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """The first of :func:`example_inputs` that ``model`` runs on (in eval mode, without gradients).

    Raises ``UsageError`` saying which inputs were tried when none runs.
    """
    from .errors import UsageError

    tried = []
    for x in example_inputs(model, batch):
        try:
            with torch.no_grad(), eval_mode(model):
                model(x)
            return x
        except Exception as exc:  # wrong shape or dtype for this model: try the next
            tried.append(f"{tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}: {first_line(exc)}")
    raise UsageError(f"the model runs on none of the example inputs fxlab tried ({'; '.join(tried)})")
