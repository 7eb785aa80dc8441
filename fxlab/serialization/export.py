"""Exporting models: ONNX (checked with onnxruntime) and ``torch.export`` programs.

Both export in eval mode with a dynamic batch axis; the example input defaults to a seeded
MNIST-shaped batch of 2 (:func:`fxlab._util.example_input`; ``torch.export`` specialises a
dimension whose example size is 1). Writes are atomic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import torch
from torch import nn

from .._util import eval_mode, example_input as example_batch, first_line, write_atomic
from ..errors import ExportError, UsageError
from .sniff import warnings_quiet

log = logging.getLogger(__name__)

_PathLike = str | os.PathLike[str]

#: The batch size of the default example input.
EXAMPLE_BATCH = 2


def _example(model: nn.Module, example_input: torch.Tensor | None) -> torch.Tensor:
    if example_input is not None:
        return example_input
    try:
        return example_batch(model, EXAMPLE_BATCH)
    except UsageError as exc:
        raise ExportError(f"cannot export {type(model).__name__}: {exc}; pass example_input=") from exc


#: Loggers whose records torch's exporters emit (a failed ``torch.export`` logs ~19 lines).
_NOISY_LOGGERS = ("torch", "onnxscript", "onnx", "onnx_ir")


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """torch's, onnxscript's and onnx's loggers silenced within the block (restored after)."""
    manager = logging.Logger.manager
    names = [n for n in list(manager.loggerDict) if n.split(".")[0] in _NOISY_LOGGERS]
    loggers = [logging.getLogger(n) for n in {*names, *_NOISY_LOGGERS}]
    saved = [(lg, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, disabled in saved:
            lg.disabled = disabled


def _fail(message: str, exc: BaseException) -> ExportError:
    """``ExportError(message)``, the full detail of ``exc`` logged at debug level (``--debug``)."""
    log.debug("%s", message, exc_info=exc)
    return ExportError(message)


def export_program(model: nn.Module, path: _PathLike, *, example_input: torch.Tensor | None = None) -> Path:
    """Export ``model`` with ``torch.export`` (dynamic batch axis) and save it as a ``.pt2`` file.

    ``torch.export.load(path).module()`` runs it. The model is exported in eval mode;
    ``example_input`` defaults to an MNIST-shaped batch of 2. The file is written to a temporary
    name, loaded back and run on a batch of another size (its outputs must match the model's, run
    on the reference torch ops it captured), and only then renamed: on any failure an existing file
    at ``path`` is left as it was.
    """
    from torch.export import Dim, export
    from torch.export import load as load_program
    from torch.export import save as save_program

    with eval_mode(model):
        x = _example(model, example_input)
        try:
            with warnings_quiet(), _quiet_logs():
                program = export(model, (x,), dynamic_shapes=({0: Dim("batch_size")},))
        except Exception as exc:  # torch.export raises many kinds of errors
            raise _fail(f"torch.export cannot export {type(model).__name__}: {_root_cause(exc)}", exc) from exc

        def check(tmp: str) -> None:
            try:
                with warnings_quiet(), _quiet_logs():
                    module = load_program(tmp).module()
                    _compare(model, lambda batch: module(batch), x, "torch.export program")
            except ExportError:
                raise
            except Exception as exc:
                raise _fail(f"the torch.export program of {type(model).__name__} does not run: "
                            f"{_root_cause(exc)}", exc) from exc

        return write_atomic(path, lambda tmp: save_program(program, tmp), check=check)


def export_onnx(
    model: nn.Module,
    path: _PathLike,
    *,
    example_input: torch.Tensor | None = None,
    check: bool = True,
    opset: int | None = None,
) -> Path:
    """Export ``model`` to ONNX like seed 003: input ``images``, output ``numbers``, dynamic batch axis.

    Uses torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, which needs
    ``onnxscript``) and falls back to the TorchScript exporter if that fails. The example input is
    in the model's dtype (float64 and float16 models export as such; bfloat16 is refused, as
    onnxruntime cannot be fed it from NumPy). With ``check`` (default), the file is run with
    onnxruntime, when installed, on a batch of another size and must match PyTorch (within 1e-4
    for float32; the int8 Linears of dynamic quantization are exported as their arithmetic in float
    ops: per-row activation codes times the int8 weights, exact for up to 1040 input features).
    Static int8 (int8 tensors between modules) has no ONNX form here: ``ExportError``. The file is
    written to a temporary name, checked, and only then renamed: on any failure an existing file at
    ``path`` is left byte for byte as it was.
    """
    with eval_mode(model):
        x = _example(model, example_input)
        if x.dtype == torch.bfloat16:
            raise ExportError(f"cannot export {type(model).__name__} to ONNX: it computes in bfloat16, which "
                              "onnxruntime cannot check; convert it with model.float() or write a .pt2 instead")
        _refuse_static_int8(model)
        written = write_atomic(path, lambda tmp: _onnx_export(model, x, tmp, opset),
                               check=(lambda tmp: _check_onnx(model, Path(tmp), x)) if check else None)
    return written


def _refuse_static_int8(model: nn.Module) -> None:
    """``ExportError`` before any exporter runs when ``model`` holds static int8 Linears: their
    ``torch._int_mm`` between int8 tensors has no ONNX operator either exporter can write."""
    from ..nn.quantized import Int8StaticLinear

    static = [name for name, m in model.named_modules() if isinstance(m, Int8StaticLinear)]
    if static:
        raise ExportError(f"cannot export {type(model).__name__} to ONNX: static int8 ({', '.join(static[:3])}) "
                          "passes int8 tensors between modules, which has no ONNX form here; write a .pt2 "
                          "(export_program) or export the model before quantize-linear{mode=static}")


@contextlib.contextmanager
def _quiet_output() -> Iterator[io.StringIO]:
    """Silence Python's and the C++ side's stdout/stderr (torch's exporters print whole graphs)."""
    sink = io.StringIO()
    saved = []
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:
                continue
        with tempfile.TemporaryFile() as tmp:
            for fd, _ in saved:
                os.dup2(tmp.fileno(), fd)
            try:
                with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings_quiet():
                    yield sink
            finally:
                for fd, copy_ in saved:
                    os.dup2(copy_, fd)
    finally:
        for _, copy_ in saved:
            os.close(copy_)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(exc))[:200]


def _onnx_export(model: nn.Module, x: torch.Tensor, tmp: str, opset: int | None) -> None:
    import torch.onnx

    names = {"input_names": ["images"], "output_names": ["numbers"]}
    errors = []
    try:
        import onnxscript  # noqa: F401
        from torch.export import Dim

        with _quiet_output(), _quiet_logs():
            program = torch.onnx.export(model, (x,), None, dynamo=True, verbose=False, report=False,
                                        dynamic_shapes=({0: Dim("batch_size")},), opset_version=opset, **names)
        if program is None:
            raise ExportError("the exporter returned nothing")
        program.save(tmp)
        return
    except ImportError as exc:
        errors.append(f"dynamo exporter unavailable ({exc.name or exc}: pip install 'fxlab[onnx]')")
    except Exception as exc:
        errors.append(f"dynamo exporter: {_root_cause(exc)}")
    log.info("ONNX dynamo export failed (%s); trying the TorchScript exporter", errors[-1])
    try:
        with _quiet_output(), _quiet_logs():
            torch.onnx.export(model, (x,), tmp, dynamo=False, verbose=False, opset_version=opset or 17,
                              dynamic_axes={"images": {0: "batch_size"}, "numbers": {0: "batch_size"}}, **names)
        return
    except Exception as exc:
        errors.append(f"TorchScript exporter: {_root_cause(exc)}")
    raise ExportError(f"ONNX cannot express {type(model).__name__}: {'; '.join(errors)}")


def _tolerance(model: nn.Module, dtype: torch.dtype) -> float:
    """How closely the exported model must match: 1e-4 for float32 and float64 (the int8 Linears of
    dynamic quantization export their exact arithmetic, which matches the fused kernels to ~1e-7)."""
    from ..nn import kernels
    from ..nn.quantized import Int8DynamicLinear

    if dtype == torch.float16:
        return 1e-2
    if not kernels.available() and any(isinstance(m, Int8DynamicLinear) for m in model.modules()):
        # without the fused kernels a small batch runs float activations × int8 weights, while the
        # export quantizes the activations per row at every size: they differ by that rounding
        return 2e-2
    return 1e-4


def _compare(model: nn.Module, run: Any, x: torch.Tensor, what: str) -> None:
    """``ExportError`` unless ``run`` (the exported model) matches ``model`` on a batch of another size.

    ``model`` runs its reference torch ops there (:func:`fxlab.nn.kernels.disabled`), the arithmetic
    an export captures: a kernel chosen by measurement may round otherwise within its mode's bound
    (a native bf16 conv rounds the activations to bf16), which is no fault of the export."""
    import numpy as np

    from ..nn import kernels

    batch = torch.cat([x, x[:1]])  # another batch size than the export's: proves the dynamic axis
    with torch.no_grad():
        with kernels.disabled():
            want = model(batch).detach().double().cpu().numpy()
        out = run(batch)
    got = out.detach().double().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out, np.float64)
    tol = _tolerance(model, x.dtype)
    if got.shape != want.shape or not np.allclose(got, want, atol=tol, rtol=tol):
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        raise ExportError(f"the {what}'s outputs differ from PyTorch's (max abs diff {diff:.3g} > {tol:g}, "
                          f"shapes {got.shape} vs {want.shape}); nothing was written")


def _check_onnx(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime not installed: ONNX file not checked")
        return
    try:
        with _quiet_output(), _quiet_logs():
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _fail(f"ONNX export of {type(model).__name__} is unsupported: onnxruntime cannot run the "
                    f"exported file ({_root_cause(exc)}); nothing was written", exc) from exc

    def run(batch: torch.Tensor) -> Any:
        try:
            return session.run(["numbers"], {"images": batch.cpu().numpy()})[0]
        except Exception as exc:
            raise _fail(f"onnxruntime cannot run the ONNX export of {type(model).__name__} "
                        f"({_root_cause(exc)}); nothing was written", exc) from exc

    _compare(model, run, x, "ONNX model")
