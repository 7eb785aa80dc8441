"""Fine-tuning after a ``changes`` step: how many epochs and steps, and the run itself."""

from __future__ import annotations

import math
from typing import Any

import torch.fx as fx

from ..errors import FxlabError, VerifyError

__all__ = ["RETRAIN_BATCH", "RETRAIN_LR", "retrain", "retrain_plan"]

#: Peak learning rate of the fine-tuning after a ``changes`` step (one-cycle schedule, Adam).
RETRAIN_LR = 1e-3

#: Batch size of the fine-tuning.
RETRAIN_BATCH = 128


def retrain_plan(epochs: float, n_train: int, batch_size: int = RETRAIN_BATCH) -> tuple[int, int | None]:
    """(whole epochs to run, max optimizer steps or None) for a possibly fractional epoch count.

    >>> retrain_plan(0.1, 60_000, 128)
    (1, 47)
    >>> retrain_plan(2, 60_000, 128)
    (2, None)
    """
    if float(epochs).is_integer():
        return int(epochs), None
    steps_per_epoch = math.ceil(n_train / batch_size)
    return math.ceil(epochs), max(1, round(epochs * steps_per_epoch))


def retrain(
    gm: fx.GraphModule,
    mnist: Any,
    *,
    epochs: float,
    lr: float,
    device: Any,
    seed: int,
    progress: bool,
    what: str,
) -> list[dict[str, Any]]:
    """Fine-tune ``gm`` in place (``fxlab.train.fit``) and leave it in eval mode; return its history.

    Every history entry gains ``epoch_fraction`` (optimizer steps over steps per epoch). A model
    that cannot be trained raises ``VerifyError`` naming ``what`` (the step).
    """
    from ..train import fit

    whole, max_steps = retrain_plan(epochs, len(mnist.train), RETRAIN_BATCH)
    try:
        hist = fit(gm, mnist, epochs=whole, lr=lr, batch_size=RETRAIN_BATCH, device=device, seed=seed,
                   progress=progress, max_steps=max_steps)
    except FxlabError as exc:
        raise VerifyError(f"{what}: cannot retrain: {exc}") from exc
    gm.eval()
    steps_per_epoch = math.ceil(len(mnist.train) / RETRAIN_BATCH)
    return [dict(e, epoch_fraction=e["steps"] / steps_per_epoch) for e in hist.epochs]
