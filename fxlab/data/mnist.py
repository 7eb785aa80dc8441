"""MNIST on disk and in memory: where it lives, whether its four IDX files are intact, and the
decoded, normalised tensors (cached per process and device). See :mod:`fxlab.data`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .._util import resolve_device
from ..errors import DataError

log = logging.getLogger(__name__)

#: Normalisation used by the seeds (and everyone): mean and std of the training pixels in [0, 1].
MEAN = 0.1307
STD = 0.3081

#: The four official uncompressed IDX files and their MD5s.
MD5S: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


# --------------------------------------------------------------------------------------------
# where


def cache_dir() -> Path:
    """fxlab's user cache directory: ``$XDG_CACHE_HOME/fxlab`` or ``~/.cache/fxlab``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fxlab"


def default_root() -> Path:
    """``$FXLAB_DATA`` if set, else ``<cache_dir()>/data``."""
    env = os.environ.get("FXLAB_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The MNIST root as torchvision wants it (the folder holding ``MNIST/raw``).

    Forgiving: a path to ``.../MNIST`` or ``.../MNIST/raw`` is taken to mean its parent root.
    """
    path = Path(root).expanduser() if root is not None else default_root()
    path = path.resolve()
    if path.name == "raw" and path.parent.name == "MNIST":
        return path.parent.parent
    if path.name == "MNIST" and (path / "raw").is_dir():
        return path.parent
    return path


def raw_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/MNIST/raw``, where the four IDX files live."""
    return resolve_root(root) / "MNIST" / "raw"


_WRITABLE_FIX = "point --root / --data or FXLAB_DATA at a folder you can write to"


def writable_raw_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """``<root>/MNIST/raw``, created if missing; ``DataError`` when it cannot be created or written to.

    Fetching writes there, through a temporary folder beside it (in ``<root>/MNIST``).
    """
    raw = raw_dir(root)
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create MNIST folder {raw}: {_os_reason(exc, raw)}; {_WRITABLE_FIX}") from exc
    for folder in (raw, raw.parent):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DataError(f"cannot write to MNIST folder {folder}: permission denied; {_WRITABLE_FIX}")
    return raw


def _os_reason(exc: OSError, path: Path) -> str:
    """Why creating ``path`` failed: the OS's words, and the part of the path that stood in the way."""
    reason = exc.strerror or str(exc)
    blocking = next((p for p in [*reversed(path.parents), path] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"{reason} ({blocking} is a file)"
    if exc.filename and Path(exc.filename) != path:
        return f"{reason} (at {exc.filename})"
    return reason


# --------------------------------------------------------------------------------------------
# check


def md5(path: str | os.PathLike[str]) -> str:
    """The MD5 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fix(root: Path) -> str:
    return (
        f"fix: run `python -m fxlab.data fetch --root {root}` (it replaces missing or corrupt files), "
        "or point --data / FXLAB_DATA at a folder holding MNIST/raw/*-ubyte"
    )


def missing_files(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the four IDX files absent under ``<root>/MNIST/raw``."""
    raw = raw_dir(root)
    return [name for name in MD5S if not (raw / name).is_file()]


def check(root: str | os.PathLike[str] | None = None) -> Path:
    """Verify the four IDX files against the official MD5s; return the resolved root.

    Raises ``DataError`` naming the file, the MD5 expected and found, and the fix.
    """
    root_path = resolve_root(root)
    raw = raw_dir(root_path)
    missing = missing_files(root_path)
    if missing:
        raise DataError(f"MNIST not found: {raw / missing[0]} is missing ({len(missing)} of 4 files); {_fix(root_path)}")
    for name, expected in MD5S.items():
        found = md5(raw / name)
        if found != expected:
            raise DataError(
                f"MNIST file {raw / name} is corrupt: MD5 {found}, expected {expected}; {_fix(root_path)}"
            )
    return root_path


# --------------------------------------------------------------------------------------------
# hold in memory


@dataclass(frozen=True)
class Split:
    """One split of MNIST as tensors: ``pixels`` (N, 28, 28) uint8 as stored, ``labels`` (N,) int64.

    ``images`` is the whole split normalised, (N, 1, 28, 28) float32, made on first use and kept;
    ``batch(idx)`` and ``batches(...)`` normalise only the rows they return, so training never holds
    the float copy of the 60 000 training images (4× the uint8 size).
    """

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @functools.cached_property
    def images(self) -> torch.Tensor:
        """All images normalised as the seeds do, (N, 1, 28, 28) float32 (computed once)."""
        return normalise(self.pixels)

    def batch(self, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised images, labels) of the rows ``index`` selects (a tensor of indices or a slice)."""
        if isinstance(index, torch.Tensor) and index.dtype != torch.bool:  # index_select: a third of advanced indexing's cost here
            return normalise(self.pixels.index_select(0, index)), self.labels.index_select(0, index)
        return normalise(self.pixels[index]), self.labels[index]

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) batches by indexing (a permutation when ``shuffle``); no per-sample Python."""
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=generator).to(self.pixels.device)
            for i in range(0, n, batch_size):
                yield self.batch(order[i : i + batch_size])
        else:
            for i in range(0, n, batch_size):
                yield self.batch(slice(i, i + batch_size))

    def to(self, device: str | torch.device) -> Split:
        """The split on another device."""
        return Split(self.pixels.to(device), self.labels.to(device))


@dataclass(frozen=True)
class MNIST:
    """MNIST decoded once: ``train`` (60 000) and ``test`` (10 000) ``Split``s on ``device``."""

    train: Split
    test: Split
    root: Path
    device: torch.device

    def to(self, device: str | torch.device) -> MNIST:
        """The same data on another device (cached like ``load``)."""
        return load(self.root, device=device, download=False)

    def __repr__(self) -> str:
        return f"MNIST(root='{self.root}', train={len(self.train)}, test={len(self.test)}, device={self.device})"


_CACHE: dict[tuple[str, str], MNIST] = {}
_LOCK = threading.RLock()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, 28, 28) → float32 (N, 1, 28, 28): ToTensor's x / 255, then Normalize(MEAN, STD)."""
    x = pixels.to(torch.float32)  # one float copy, then in place
    return x.div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)


def _decode(root: Path, train: bool, device: torch.device) -> Split:
    from torchvision.datasets import MNIST as TorchvisionMNIST

    ds = TorchvisionMNIST(str(root), train=train, download=False)
    return Split(ds.data.to(device), ds.targets.to(torch.int64).to(device))


def load(
    root: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    download: bool = True,
) -> MNIST:
    """MNIST as normalised tensors on ``device`` (default CPU), decoded once per (root, device) per process.

    Missing files are fetched when ``download`` (see ``fetch``); corrupt files raise ``DataError``.
    """
    root_path = resolve_root(root)
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    key = (str(root_path), str(dev))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        cpu_key = (str(root_path), "cpu")
        if dev.type != "cpu" and cpu_key in _CACHE:
            cpu = _CACHE[cpu_key]
            train, test = cpu.train.to(dev), cpu.test.to(dev)
        else:
            if download and missing_files(root_path):
                from .download import fetch  # fetching needs this module: imported when used

                fetch(root_path)
            check(root_path)
            train, test = _decode(root_path, True, dev), _decode(root_path, False, dev)
        data = MNIST(train=train, test=test, root=root_path, device=dev)
        _CACHE[key] = data
        log.info("loaded %r", data)
        return data


def as_mnist(data: MNIST | str | os.PathLike[str] | None, device: str | torch.device | None = None) -> MNIST:
    """``data`` as an ``MNIST`` on ``device``: an ``MNIST`` (moved if needed), a root directory, or None (default root)."""
    if isinstance(data, MNIST):
        if device is None or resolve_device(device) == data.device:
            return data
        return data.to(device)
    return load(data, device=device)


def forget(root: str | os.PathLike[str]) -> None:
    """Drop the tensors decoded from ``root`` (after its files were replaced)."""
    with _LOCK:
        for key in [k for k in _CACHE if k[0] == str(Path(root))]:
            del _CACHE[key]
