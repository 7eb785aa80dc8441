"""Shared fixtures: golden printouts, MNIST location, seed models."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
import torch

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
    """The MNIST root (FXLAB_DATA, else ../shared/data beside the repo). Tests never download."""
    root = Path(os.environ.get("FXLAB_DATA", REPO.parent / "shared" / "data"))
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found under {root}: set FXLAB_DATA to a folder holding MNIST/raw/*-ubyte")
    return root


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
