"""Train and evaluate on MNIST: fast, exact, and the same under ``torchrun``.

>>> from fxlab.models import build
>>> from fxlab.train import fit, evaluate
>>> model = build("mymodule")
>>> history = fit(model, "../shared/data", epochs=1)   # doctest: +SKIP
>>> evaluate(model, "../shared/data").accuracy           # doctest: +SKIP
97.4

Data are tensors held on the training device (``fxlab.data``); a batch is an index into them, so
an epoch has no DataLoader and no per-sample Python. The recipe is the seeds' (Adam, cross-entropy)
with a one-cycle learning-rate schedule. Under ``torch.distributed`` (e.g. ``torchrun``) ``fit``
wraps the model in DistributedDataParallel and each rank trains on its shard of every batch.

Command line::

    python -m fxlab.train --model mymodule --out model.pth
    torchrun --nproc-per-node 2 -m fxlab.train --model mymodule --out model.pth
"""

from __future__ import annotations

from .._util import default_device, model_device
from .checkpoints import CHECKPOINT_FORMAT, checkpoint_path, load_checkpoint, pretrained, save_checkpoint
from .loop import correct_images, evaluate, fit, fit_recipe
from .recipe import DEFAULT_RECIPE, RECIPES, Evaluation, History, Recipe, recipe_for
from .runtime import init_distributed, peak_memory_mb

__all__ = [
    "CHECKPOINT_FORMAT", "DEFAULT_RECIPE", "RECIPES", "Evaluation", "History", "Recipe", "checkpoint_path", "correct_images",
    "default_device", "evaluate", "fit", "fit_recipe", "init_distributed", "load_checkpoint", "model_device", "peak_memory_mb",
    "pretrained", "recipe_for", "save_checkpoint",
]
