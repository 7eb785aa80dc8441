"""fxlab.train's recipe and loop pieces that need no MNIST: cache keys, the optimizer, epoch statistics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fxlab.data import MNIST, Split, normalise
from fxlab.models import build
from fxlab.train import DEFAULT_RECIPE, RECIPES, Recipe, fit
from fxlab.train.optim import adam as _adam


def _old_key(**fields) -> str:
    """Recipe.key as written before ``label_smoothing`` existed."""
    base = {"epochs": 8, "lr": 3e-3, "batch_size": 128, "schedule": "onecycle", "weight_decay": 0.0, "seed": 0}
    text = json.dumps({**base, **fields}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def test_recipes_without_label_smoothing_keep_their_cache_keys() -> None:
    assert RECIPES["mnist-cnn"].key() == _old_key(epochs=4, lr=2e-3)
    assert RECIPES["lenet5"].key() == _old_key(epochs=6, lr=3e-3)
    assert Recipe(epochs=8, lr=3e-3, batch_size=128, label_smoothing=0.0, threads=None).key() == _old_key()
    assert Recipe(threads=1).key() != Recipe(threads=None).key()
    # label smoothing is part of the key when it is used
    assert Recipe(label_smoothing=0.05).key() != Recipe(label_smoothing=0.1).key()
    assert DEFAULT_RECIPE.label_smoothing > 0 and DEFAULT_RECIPE.key() != Recipe(label_smoothing=0.0).key()


def test_adam_uses_the_fused_kernel_on_cpu() -> None:
    opt = _adam(list(torch.nn.Linear(3, 2).parameters()), 1e-3, 0.0)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["fused"] is True


def _tiny_mnist(n: int = 300) -> MNIST:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    split = Split(pixels, labels)
    return MNIST(train=split, test=split, root=Path("."), device=torch.device("cpu"))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_epoch_statistics_are_those_of_the_whole_epoch(smoothing: float) -> None:
    # lr 0 leaves the model as it is, so the epoch's mean loss and accuracy are the model's on the set
    data = _tiny_mnist()
    model = build("mymodule")
    with torch.no_grad():
        out = model(normalise(data.train.pixels))
    expected_loss = float(F.cross_entropy(out, data.train.labels, label_smoothing=smoothing))
    expected_acc = 100.0 * float((out.argmax(1) == data.train.labels).float().mean())
    h = fit(model, data, epochs=1, lr=0.0, batch_size=64, schedule="constant", label_smoothing=smoothing,
            device="cpu", seed=0, progress=False, evaluate_each_epoch=False)
    rec = h.final
    assert rec["steps"] == 5  # 300 images at batch 64: the last batch holds 44
    assert rec["train_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert rec["train_accuracy"] == pytest.approx(expected_acc)


def test_training_threads_are_set_while_fitting_and_restored() -> None:
    data = _tiny_mnist(64)
    seen: list[int] = []
    before = torch.get_num_threads()
    fit(build("mymodule"), data, epochs=2, batch_size=64, threads=1, device="cpu", seed=0, progress=False,
        evaluate_each_epoch=False, on_epoch=lambda record: seen.append(torch.get_num_threads()))
    assert seen == [1, 1] and torch.get_num_threads() == before
