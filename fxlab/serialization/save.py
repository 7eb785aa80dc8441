"""Saving transformed models in fxlab's own format, and rebuilding them from it.

A saved file is a plain dict that ``torch.load(weights_only=True)`` reads: ``format``, the base
architecture ``arch`` and its ``kwargs``, the ``pipeline`` text, the ``state_dict``, ``training``
and versions. Loading rebuilds the base, re-runs the pipeline (:func:`rebuild`), then loads the
state dict strictly. The base is what fxlab recorded, never a guess: the ``fxlab_arch`` of
fxlab's own models, which tracing records in ``gm.meta["fxlab.base"]``
(:func:`fxlab.core.provenance.base`), or the ``base=`` argument.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._util import eval_mode, example_input, first_line, write_atomic
from ..errors import ExportError, FxlabError, LoadError
from ..models.recognize import arch_of, arch_text, build_arch

#: The format tag of fxlab's transformed-model files (:func:`save`).
FORMAT = "fxlab.model/1"
#: The format tags this version of fxlab reads.
READABLE_FORMATS = (FORMAT,)

_PathLike = str | os.PathLike[str]


def _apply_one(model: nn.Module, p: Any, batch: torch.Tensor) -> fx.GraphModule:
    """Apply pass ``p`` (with ``batch`` as its calibration when it takes one and has none; without
    quantization-aware training, whose result the state dict holds); feed ``batch`` through the
    result when the pass leaves observers to calibrate."""
    from ..pipeline import apply

    if dataclasses.is_dataclass(p) and any(f.name == "calibration" for f in dataclasses.fields(p)):
        if getattr(p, "calibration", None) is None:
            p = dataclasses.replace(p, calibration=[batch])
    if dataclasses.is_dataclass(p) and getattr(p, "qat_epochs", 0):  # the saved state dict holds the trained weights
        p = dataclasses.replace(p, qat_epochs=0)
    gm = apply(model, [p], inplace=True)
    if type(p).calibrates:
        with torch.no_grad(), eval_mode(gm):
            gm(batch)
    return gm


def rebuild(
    arch: str,
    kwargs: Mapping[str, Any],
    pipeline: str,
    *,
    training: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A fresh ``arch`` model with ``pipeline`` re-run on it: the skeleton a saved state dict loads into.

    Passes run one at a time, in order. A pass with a ``calibration`` option left empty gets one
    seeded example batch (:func:`fxlab._util.example_input`); after a pass that ``calibrates``
    (leaves observers), that batch runs through the graph so the next pass finds them calibrated.
    The values this gives (scales, tables) are placeholders: the saved state dict replaces them.
    ``dtype`` converts the base model before the pipeline (a float64 or half model).
    """
    from ..pipeline import parse_pipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model: nn.Module = build_arch(arch, kwargs).train(training)
        if dtype is not None:
            model = model.to(dtype)
        if not pipeline:
            return model
        try:
            passes = parse_pipeline(pipeline)
            batch = example_input(model)
            for p in passes:
                model = _apply_one(model, p, batch)
        except FxlabError as exc:
            raise LoadError(f"cannot rebuild {arch_text(arch, kwargs)} with pipeline {pipeline!r}: "
                            f"{first_line(exc)}") from exc
    return model


def _structure(model: nn.Module) -> tuple[str, list[tuple[str, tuple[int, ...], torch.dtype]]]:
    from ..core import format_graph, trace

    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    return format_graph(gm), [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


def _find_base(model: nn.Module, base: Any) -> tuple[str, dict[str, Any]]:
    """The base architecture: ``base`` when given, else what fxlab recorded of ``model``."""
    if isinstance(base, str):
        return base, {}
    if isinstance(base, tuple) and len(base) == 2 and isinstance(base[0], str):
        return base[0], dict(base[1] or {})
    if base is not None and not isinstance(base, nn.Module):
        raise ExportError(f"base must be a model name, (name, kwargs) or an nn.Module, got {type(base).__name__}")
    found = arch_of(base if base is not None else model)
    if found is None:
        raise ExportError(
            f"cannot save {type(model).__name__} in fxlab's format: its base model is unknown "
            f"({_base_class_text(model, base)} is none of fxlab's models, which say their architecture in "
            "fxlab_arch); write a .pt2 or .onnx file instead (export_program / export_onnx), or from Python pass "
            f"base=NAME or base=(NAME, constructor arguments) to fxlab.save{_user_spec_hint(model, base)}"
        )
    return found


def _base_class(model: nn.Module, base: nn.Module | None) -> str | None:
    """``module.Class`` of the model the pipeline started from: ``base``'s class, else what tracing recorded."""
    if base is not None:
        return f"{type(base).__module__}.{type(base).__qualname__}"
    meta = getattr(model, "meta", None)
    recorded = meta.get("fxlab.base") if isinstance(meta, dict) else None
    return recorded.get("class") if isinstance(recorded, dict) else None


def _base_class_text(model: nn.Module, base: nn.Module | None) -> str:
    return _base_class(model, base) or type(model).__name__


def _user_spec_hint(model: nn.Module, base: nn.Module | None) -> str:
    """For a user's class, the NAME that rebuilds it: ``("user:module:Class", {...})``."""
    qualified = _base_class(model, base)
    if not qualified or "." not in qualified:
        return ""
    module, _, cls = qualified.rpartition(".")
    if module.split(".")[0] in ("torch", "fxlab", "__main__") or "." in cls:
        return ""
    return f' (for {cls}: base=("user:{module}:{cls}", {{its constructor arguments}}))'



def _pipeline_text(model: nn.Module, pipeline: str | None) -> str:
    from ..pipeline import parse_pipeline

    meta = getattr(model, "meta", None)
    text = pipeline if pipeline is not None else (meta.get("fxlab.pipeline", "") if isinstance(meta, dict) else "")
    if text:
        try:
            parse_pipeline(text)
        except FxlabError as exc:
            raise ExportError(
                f"the model's pipeline has no text form ({first_line(exc)}); fxlab.save re-runs pipelines from "
                "text: use passes with text options, or export with export_program / export_onnx"
            ) from exc
    return text


def base_dtype(model: nn.Module) -> torch.dtype | None:
    """The float dtype the model may have been converted to before its pipeline, as its weights
    say: None for float32, else the most common floating dtype of its state dict other than float32
    (:func:`save` tries it when a float32 rebuild does not reproduce the model)."""
    counts: dict[torch.dtype, int] = {}
    for v in model.state_dict().values():
        if v.is_floating_point():
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    others = {d: n for d, n in counts.items() if d != torch.float32}
    if not others or counts.get(torch.float32, 0) > sum(others.values()):
        return None
    return max(others, key=others.__getitem__)


def _check_rebuilds(model: nn.Module, arch: str, kwargs: Mapping[str, Any], text: str,
                    dtype: torch.dtype | None = None) -> None:
    """``ExportError`` unless ``arch`` + ``text`` rebuild a model with ``model``'s graph and state-dict shapes."""
    try:
        got = _structure(rebuild(arch, kwargs, text, training=model.training, dtype=dtype))
    except FxlabError as exc:
        why = first_line(exc)
    else:
        want = _structure(model)
        if got == want:
            return
        why = f"{arch_text(arch, kwargs)} + pipeline gives a different {'graph' if got[0] != want[0] else 'state dict'}"
    raise ExportError(
        f"cannot save {type(model).__name__} in fxlab's format: rebuilding it from its base model and pipeline "
        f"does not reproduce it ({why}); export with export_program / export_onnx"
    )


def save(model: nn.Module, path: _PathLike, *, base: Any = None, pipeline: str | None = None) -> Path:
    """Write ``model`` (a transformed ``GraphModule`` or a plain model) in fxlab's own format.

    ``base`` (a seed model name, ``(name, kwargs)``, or the original module) defaults to what
    fxlab recorded: the model's own ``fxlab_arch``, or for a ``GraphModule`` the base that tracing
    recorded; ``pipeline`` defaults to the one ``fxlab.apply`` recorded. Before writing, the model
    is rebuilt that way once and must come out with the same graph and state-dict shapes
    (``ExportError`` otherwise, as when the base is unknown). The write is atomic.

    >>> import tempfile, torch, fxlab
    >>> from fxlab.models import build
    >>> gm = fxlab.apply(build("mymodule"), "insert-relu{after=layer3}")
    >>> path = fxlab.save(gm, tempfile.mkdtemp() + "/relu.pth")
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.equal(fxlab.load(path)(x), gm.eval()(x))
    True
    """
    from .. import __version__

    if not isinstance(model, nn.Module):
        raise ExportError(f"fxlab.save expects an nn.Module, got {type(model).__name__}")
    text = _pipeline_text(model, pipeline)
    arch, kwargs = _find_base(model, base)
    dtype = None
    try:
        _check_rebuilds(model, arch, kwargs, text)
    except ExportError:  # a float64 / half model: rebuilt in that dtype, or the first reason stands
        dtype = base_dtype(model)
        if dtype is None:
            raise
        try:
            _check_rebuilds(model, arch, kwargs, text, dtype)
        except ExportError:
            dtype = None
        if dtype is None:
            _check_rebuilds(model, arch, kwargs, text)
    record = {
        "format": FORMAT,
        "arch": arch,
        "kwargs": kwargs,
        "pipeline": text,
        "training": bool(model.training),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "fxlab_version": __version__,
        "torch_version": str(torch.__version__),
    }
    if dtype is not None:
        record["dtype"] = str(dtype).removeprefix("torch.")

    def check(tmp: str) -> None:  # the file reads back as written, before it replaces anything
        try:
            back = torch.load(tmp, map_location="cpu", weights_only=True)
            same = back.keys() == record.keys() and all(
                torch.equal(v, back["state_dict"][k]) for k, v in record["state_dict"].items())
        except Exception as exc:
            raise ExportError(f"cannot save to {path}: the written file does not read back ({first_line(exc)}); "
                              "nothing was written") from exc
        if not same:
            raise ExportError(f"cannot save to {path}: the written file reads back different; nothing was written")

    return write_atomic(path, lambda tmp: torch.save(record, tmp), check=check)
