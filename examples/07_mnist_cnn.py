"""The classic PyTorch MNIST CNN, from the state dict its training script saves to a verified pipeline.

People who trained ``pytorch/examples/mnist`` have a ``mnist_cnn.pt`` next to them: a bare state
dict (``torch.save(model.state_dict(), "mnist_cnn.pt")``). This example makes that file (training
``fxlab.models.MnistCNN`` briefly with ``fxlab.train``), loads it back through ``fxlab.load`` —
recognised as ``mnist-cnn`` by its keys and shapes — and verifies the conv pipeline
``remove-dropout,dce,fuse-conv-relu,quantize-conv{mode=weight-only}`` on real MNIST: three exact
passes, then int8 weights for the convolutions (fused ReLUs kept) within their accuracy budget.

    python examples/07_mnist_cnn.py

Environment: FXLAB_DATA (MNIST root; fetched if missing), FXLAB_OUT (output folder, default
./out), FXLAB_QUICK=1 (150 training steps instead of one epoch).
"""

import os
from dataclasses import replace
from pathlib import Path

import torch

import fxlab
from fxlab.data import load
from fxlab.models import MnistCNN
from fxlab.serialization import load_file
from fxlab.train import evaluate, fit_recipe, recipe_for

QUICK = os.environ.get("FXLAB_QUICK") == "1"
OUT = Path(os.environ.get("FXLAB_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

mnist = load(device="cpu")  # FXLAB_DATA, else fxlab's cache folder (fetched once)

# 1. what the classic training script leaves behind ------------------------------------------------
torch.manual_seed(0)
model = MnistCNN()
recipe = replace(recipe_for("mnist-cnn"), epochs=1, seed=0)  # its own recipe, one epoch
fit_recipe(model, mnist, recipe, max_steps=150 if QUICK else None, progress=False, device="cpu",
           evaluate_each_epoch=False)
path = OUT / "mnist_cnn.pt"
torch.save(model.state_dict(), path)
print(f"wrote {path}: a bare state dict of {len(model.state_dict())} tensors")

# 2. loaded back: recognised by its keys and shapes -----------------------------------------------
loaded = load_file(path)
print(loaded.description)
assert loaded.arch == "mnist-cnn"
print(f"test accuracy: {evaluate(loaded.model, mnist).accuracy:.2f}%")

# 3. the conv pipeline, verified on MNIST -----------------------------------------------------------
pipeline = "remove-dropout,dce,fuse-conv-relu,quantize-conv{mode=weight-only}"
report = fxlab.verify(loaded.model, pipeline, data=mnist, device="cpu", name="mnist_cnn.pt")
print(report.table())
print(report.summary())
assert report.ok
