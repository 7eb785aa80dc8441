"""Accuracy-aware quantization: which layers stay in float so that the accuracy drop stays within ``max_drop``.

``quantize-linear{mode=dynamic max_drop=0.5}`` (and ``quantize-conv``) measure on evaluation data
(``data=``: what ``fxlab.data.load()`` returns, or an MNIST root; ``fxlab.verify`` and its command
line supply it) before they quantize:

1. the float model's accuracy on the MNIST test split (all 10 000 images, the images
   ``fxlab.verify`` measures the drop on; ``eval_images=N``: the first N, cheaper for models whose
   quantized layers are slow, such as int8 convs on a CPU) and its outputs on the first
   ``ERROR_IMAGES`` of them;
2. for each layer the pass would quantize, a copy with only that layer quantized: its accuracy and
   its output error (relative L2 distance from the float outputs);
3. the ranking: lowest accuracy first, the larger output error first among equal accuracies;
4. the model with every layer quantized; while its drop exceeds ``max_drop``, the next layer of the
   ranking is kept in float and the drop measured again.

Accuracy comes from :func:`fxlab.train.evaluate`, data from :mod:`fxlab.data`; this is the only
quantization module that touches either. The pass records the kept layers as skipped sites
(``kept in float32 by max_drop=0.5 (alone: -86.30 points)``) and the whole measurement as its
record's ``sensitivity`` (:func:`fxlab.pipeline.sites.measured`)::

    >>> import fxlab
    >>> from fxlab.data import load
    >>> from fxlab.passes import QuantizeLinear
    >>> gm = fxlab.apply(model, [QuantizeLinear(mode="dynamic", max_drop=0.5, data=load())])  # doctest: +SKIP
    >>> print(fxlab.records(gm).sensitivity())                                                # doctest: +SKIP
    quantize-linear: max_drop=0.5 on 10000 images: ranking layer1 -83.86 (kept), layer3 +0.00, layer2 +0.03; 94.18% → 94.17% (drop 0.01)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from ..._util import eval_mode, model_device
from ...errors import PassError
from ...pipeline import sites

__all__ = ["ERROR_IMAGES", "check_max_drop", "evaluation_data", "keep_in_float", "kept_reason", "within_max_drop"]

log = logging.getLogger(__name__)

#: How many test images (the first ones) the output error of a layer is measured on.
ERROR_IMAGES = 1000

#: ``quantize(gm, nodes) -> gm``: the pass's own quantization of ``nodes`` (a copy's nodes).
Quantize = Callable[[fx.GraphModule, list[fx.Node]], fx.GraphModule]


def evaluation_data(data: Any, device: torch.device, label: str, images: int | None = None) -> Any:
    """``data`` as ``fxlab.data.MNIST`` on ``device``: a loaded MNIST, or an MNIST root (read, never
    fetched), with only its first ``images`` test images when given. ``None`` raises ``PassError``
    saying how to supply it."""
    from ... import data as mnist_data

    if data is None:
        raise PassError(
            f"{label}: max_drop needs evaluation data: from Python pass data=fxlab.data.load() (or an MNIST "
            f"root directory), or run the pipeline under fxlab.verify / python -m fxlab.verify, which supply MNIST"
        )
    if isinstance(data, mnist_data.MNIST):
        mnist = mnist_data.as_mnist(data, device)
    elif isinstance(data, (str, os.PathLike)):
        mnist = mnist_data.load(data, device=device, download=False)
    else:
        raise PassError(f"{label}: data must be what fxlab.data.load() returns or an MNIST root directory, "
                        f"got {type(data).__name__}")
    if images is None or images >= len(mnist.test):
        return mnist
    test = mnist_data.Split(mnist.test.pixels[:images], mnist.test.labels[:images])
    return dataclasses.replace(mnist, test=test)


def check_max_drop(label: str, max_drop: Any, eval_images: Any = None) -> None:
    """``max_drop`` is None or a number of accuracy points ≥ 0, ``eval_images`` None or a count
    ≥ 1; else ``PassError``."""
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not max_drop >= 0):
        raise PassError(f"{label}: max_drop must be a number of accuracy points ≥ 0 (e.g. max_drop=0.5), "
                        f"got {max_drop!r}")
    if eval_images is not None and (isinstance(eval_images, bool) or not isinstance(eval_images, int)
                                    or eval_images < 1):
        raise PassError(f"{label}: eval_images must be a number of test images ≥ 1, got {eval_images!r}")
    if eval_images is not None and max_drop is None:
        raise PassError(f"{label}: eval_images is the evaluation set of max_drop; give max_drop too, or drop it")


def kept_reason(max_drop: float, alone: float) -> str:
    """The skipped-site reason of a layer kept in float: ``alone`` is its accuracy change (points)
    when it is the only layer quantized."""
    return f"kept in float32 by max_drop={max_drop:g} (alone: {alone:+.2f} points)"


def keep_in_float(
    gm: fx.GraphModule,
    units: list[list[fx.Node]],
    quantize: Quantize,
    max_drop: float,
    data: Any,
    label: str,
    eval_images: int | None = None,
) -> tuple[list[list[fx.Node]], dict[str, Any]]:
    """The units (the nodes of one module each) to keep in float so that quantizing the others
    costs at most ``max_drop`` accuracy points on ``data`` (its test split, or its first
    ``eval_images`` test images), and what was measured.

    ``gm`` is left as it is: every trial quantizes a copy with ``quantize``. The measurement is a
    dict: ``max_drop``, ``images``, ``float_accuracy``, ``accuracy`` and ``drop`` of the result,
    ``kept`` (node names) and ``ranking`` (most sensitive first: ``node``, ``accuracy``, ``change``
    in points, ``error``, ``kept``).
    """
    from ...train import evaluate

    mnist = evaluation_data(data, model_device(gm), label, eval_images)
    images = mnist.test.images[:ERROR_IMAGES]
    base = evaluate(gm, mnist).accuracy
    reference = _outputs(gm, images)

    def trial(chosen: list[list[fx.Node]]) -> fx.GraphModule:
        names = {n.name for unit in chosen for n in unit}
        other = copy.deepcopy(gm)
        sites.set_limit(other, None)  # a trial measures the layer itself, whatever apply's limit
        other = quantize(other, [n for n in other.graph.nodes if n.name in names])
        other.recompile()
        return other

    rows = []
    for unit in units:
        alone = trial([unit])
        accuracy = evaluate(alone, mnist).accuracy
        rows.append({"node": unit[0].name, "accuracy": accuracy, "change": accuracy - base,
                     "error": _error(reference, _outputs(alone, images)), "kept": False})
    order = sorted(range(len(units)), key=lambda i: (rows[i]["accuracy"], -rows[i]["error"]))
    kept: list[int] = []
    accuracy = evaluate(trial(units), mnist).accuracy if units else base
    while base - accuracy > max_drop + 1e-9 and len(kept) < len(order):
        kept.append(order[len(kept)])
        rest = [u for i, u in enumerate(units) if i not in kept]
        accuracy = evaluate(trial(rest), mnist).accuracy if rest else base
    for i in kept:
        rows[i]["kept"] = True
    log.info("%s: max_drop=%g keeps %s in float (drop %.2f points)", label, max_drop,
             [rows[i]["node"] for i in kept] or "nothing", base - accuracy)
    measured = {"max_drop": max_drop, "images": len(mnist.test), "float_accuracy": base, "accuracy": accuracy,
                "drop": base - accuracy, "kept": [rows[i]["node"] for i in kept], "ranking": [rows[i] for i in order]}
    return [units[i] for i in kept], measured


def _outputs(gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), eval_mode(gm):
        out = gm(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float()


def _error(reference: torch.Tensor, out: torch.Tensor) -> float:
    """Relative L2 distance of ``out`` from ``reference`` (inf where it is not finite)."""
    if out.shape != reference.shape:
        return float("inf")
    error = float(torch.linalg.vector_norm(out - reference) / torch.linalg.vector_norm(reference).clamp_min(1e-12))
    return error if error == error else float("inf")


def within_max_drop(p: Any, gm: fx.GraphModule, nodes: list[fx.Node], quantize: Quantize) -> list[fx.Node]:
    """The ``nodes`` pass ``p`` (with ``max_drop``, ``data``, ``exclude``) quantizes: all but the
    modules :func:`keep_in_float` keeps in float, which are recorded as skipped sites; the
    measurement and the pipeline text that does the same without data go to ``p``'s record."""
    units: dict[str, list[fx.Node]] = {}
    for node in nodes:
        units.setdefault(str(node.target), []).append(node)
    kept_units, measured = keep_in_float(gm, list(units.values()), quantize, p.max_drop, p.data, p.label(),
                                         p.eval_images)
    changes = {row["node"]: row["change"] for row in measured["ranking"]}
    kept = set()
    for unit in kept_units:
        kept.update(unit)
        for node in unit:
            sites.skipped(gm, node.name, kept_reason(p.max_drop, changes[unit[0].name]))
    rest = [n for n in nodes if n not in kept]
    sites.measured(gm, measured, _replay(p, [str(u[0].target) for u in kept_units]) if rest else "")
    return rest


def _replay(p: Any, paths: list[str]) -> str:
    """``p`` as pipeline text without ``max_drop``, with the modules at ``paths`` excluded."""
    exclude = p.exclude
    if paths:
        given = [] if exclude is None else list(exclude) if isinstance(exclude, (list, tuple)) else [exclude]
        merged = [*given, *paths]
        exclude = merged[0] if len(merged) == 1 else merged
    return str(dataclasses.replace(p, max_drop=None, eval_images=None, data=None, exclude=exclude))
