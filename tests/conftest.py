"""Shared fixtures: golden printouts, MNIST location, seed models."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

# OpenMP workers that spin while waiting stall badly when the 2 CPU cores are shared with other work
# (measured here: 600 training steps of mymodule took 64-83 s with the default policy, 5-6 s with
# PASSIVE). It only takes effect if set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Quantized Linears run the reference torch ops in tests (no timing, the same numbers on every
# machine); tests/unit/test_kernels.py holds every other implementation to them explicitly.
os.environ.setdefault("FXLAB_KERNELS", "torch")

import torch  # noqa: E402

GOLDEN_DIR = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.txt from the current output instead of comparing",
    )


class Golden:
    """Compare a printout with tests/golden/<name>.txt; rewrite only under --update-golden."""

    def __init__(self, update: bool) -> None:
        self.update = update

    def check(self, name: str, text: str) -> None:
        path = GOLDEN_DIR / f"{name}.txt"
        text = text.rstrip("\n") + "\n"
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"no golden file {path.relative_to(REPO)}; run pytest --update-golden to create it")
        expected = path.read_text(encoding="utf-8")
        if expected != text:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(True), text.splitlines(True), f"golden/{name}.txt", "actual"
                )
            )
            pytest.fail(f"printout differs from golden/{name}.txt (pytest --update-golden rewrites it):\n{diff}")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The MNIST root: ``$FXLAB_DATA``, else the user cache that ``python -m fxlab.data fetch`` fills.

    Tests never download: fetching is set-up (the README's test command runs it first).
    """
    from fxlab.data import missing_files, resolve_root

    root = resolve_root()
    if missing_files(root):
        pytest.fail(f"MNIST not found under {root}: run `python -m fxlab.data fetch` first, or set FXLAB_DATA "
                    "to a folder holding MNIST/raw/*-ubyte")
    return root


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist(mnist_root: Path):
    """Real MNIST as tensors on CPU (``fxlab.data.MNIST``: ``.train`` / ``.test`` with ``.images``, ``.labels``)."""
    from fxlab.data import load

    return load(mnist_root, device="cpu", download=False)


class Trained:
    """Seed models trained once per test session with a small budget (2 epochs, one-cycle).

    ``trained["mymodule"]`` is a fresh deep copy (eval mode, CPU) each time, so a test may change it;
    ``trained.accuracy("mymodule")`` is its test accuracy in percent.
    """

    EPOCHS = 2

    def __init__(self, data) -> None:
        self.data = data
        self._models: dict[str, torch.nn.Module] = {}
        self._accuracy: dict[str, float] = {}

    def _train(self, name: str) -> torch.nn.Module:
        if name not in self._models:
            from fxlab.models import build
            from fxlab.train import evaluate, fit

            with torch.random.fork_rng(devices=[]):  # leave the calling test's random state alone
                torch.manual_seed(0)
                model = build(name)
                fit(model, self.data, epochs=self.EPOCHS, device="cpu", seed=0, progress=False,
                    evaluate_each_epoch=False)
            model.eval()
            self._models[name] = model
            self._accuracy[name] = evaluate(model, self.data).accuracy
        return self._models[name]

    def __getitem__(self, name: str) -> torch.nn.Module:
        import copy

        return copy.deepcopy(self._train(name))

    def accuracy(self, name: str) -> float:
        self._train(name)
        return self._accuracy[name]


@pytest.fixture(scope="session")
def trained(mnist) -> Trained:
    """Trained seed models, cached for the session: ``trained["mymodule"]``, ``trained.accuracy(name)``."""
    return Trained(mnist)
