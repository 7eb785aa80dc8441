"""The built-in CNNs train with fxlab.train, and verify runs on them by name."""

from __future__ import annotations

from pathlib import Path

import torch

from fxlab.data import load
from fxlab.models import build
from fxlab.train import RECIPES, evaluate, fit, recipe_for
from fxlab.train.recipe import DEFAULT_RECIPE


def test_lenet5_learns_in_a_few_hundred_steps(mnist_root: Path) -> None:
    ds = load(mnist_root, device="cpu")
    torch.manual_seed(0)
    model = build("lenet5")
    fit(model, ds, epochs=1, max_steps=300, seed=0, progress=False, device="cpu", evaluate_each_epoch=False)
    assert evaluate(model, ds).accuracy > 95.0


def test_mnist_cnn_learns_and_its_loss_is_the_nll(mnist_root: Path) -> None:
    ds = load(mnist_root, device="cpu")
    torch.manual_seed(0)
    model = build("mnist-cnn")
    recipe = recipe_for("mnist-cnn")  # batch 128, torch's threads: a conv net's settings
    fit(model, ds, epochs=1, lr=recipe.lr, batch_size=recipe.batch_size, threads=recipe.threads, max_steps=120, seed=0,
        progress=False, device="cpu", evaluate_each_epoch=False)
    ev = evaluate(model, ds)
    assert ev.accuracy > 93.0
    model.eval()
    with torch.no_grad():
        x, y = ds.test.images[:2000], ds.test.labels[:2000]
        nll = torch.nn.functional.nll_loss(model(x), y).item()
    assert 0 < ev.loss < 1 and abs(nll - ev.loss) < 0.1  # cross-entropy of log-probs is their NLL


def test_the_cnns_have_recipes_of_their_own() -> None:
    assert set(RECIPES) == {"mnist-cnn", "lenet5"}
    assert recipe_for("mymodule") is DEFAULT_RECIPE and DEFAULT_RECIPE.epochs == 6
