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


def export_program(model: nn.Module, path: _PathLike, *, example_input: torch.Tensor | None = None) -> Path:
    """Export ``model`` with ``torch.export`` (dynamic batch axis) and save it as a ``.pt2`` file.

    ``torch.export.load(path).module()`` runs it. The model is exported in eval mode;
    ``example_input`` defaults to an MNIST-shaped batch of 2. The write is atomic.
    """
    from torch.export import Dim, export
    from torch.export import save as save_program

    with eval_mode(model):
        x = _example(model, example_input)
        try:
            with warnings_quiet():
                program = export(model, (x,), dynamic_shapes=({0: Dim("batch_size")},))
        except Exception as exc:  # torch.export raises many kinds of errors
            raise ExportError(f"torch.export cannot export {type(model).__name__}: {_root_cause(exc)}") from exc
    return write_atomic(path, lambda tmp: save_program(program, tmp))


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
    ``onnxscript``) and falls back to the TorchScript exporter if that fails. With ``check``
    (default), the file is run with onnxruntime, when installed, on a batch of another size and must
    match PyTorch within 1e-4 (``ExportError`` otherwise). Models whose operations ONNX cannot
    express (e.g. int8 matmuls of quantized modules) raise ``ExportError``. The write is atomic.
    """
    with eval_mode(model):
        x = _example(model, example_input)
        written = write_atomic(path, lambda tmp: _onnx_export(model, x, tmp, opset))
        if check:
            _check_onnx(model, written, x)
    return written


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

        with _quiet_output():
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
        with _quiet_output():
            torch.onnx.export(model, (x,), tmp, dynamo=False, verbose=False, opset_version=opset or 17,
                              dynamic_axes={"images": {0: "batch_size"}, "numbers": {0: "batch_size"}}, **names)
        return
    except Exception as exc:
        errors.append(f"TorchScript exporter: {_root_cause(exc)}")
    raise ExportError(f"ONNX cannot express {type(model).__name__}: {'; '.join(errors)}")


def _check_onnx(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        log.info("onnxruntime not installed: ONNX file not checked")
        return
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export of {type(model).__name__} is unsupported: onnxruntime cannot run the "
                          f"exported file ({first_line(exc)})") from exc
    batch = torch.cat([x, x[:1]])  # another batch size than the export's: proves the dynamic axis
    with torch.no_grad():
        want = model(batch).float().cpu().numpy()
    got = session.run(["numbers"], {"images": batch.cpu().float().numpy()})[0]
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-4, rtol=1e-4):
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        path.unlink(missing_ok=True)
        raise ExportError(f"the ONNX model's outputs differ from PyTorch's (max abs diff {diff:.3g}, "
                          f"shapes {got.shape} vs {want.shape})")
