"""Model files in and out: loading every shape people save (safely), fxlab's own format, ONNX, torch.export.

- :mod:`~fxlab.serialization.sniff`: what a file is and what its pickle names, before anything runs;
- :mod:`~fxlab.serialization.trust`: the allowlist that trusted (``--trust``) loading admits;
- :mod:`~fxlab.serialization.load`: :func:`load`, :func:`load_file`, :func:`load_source`, :class:`Loaded`;
- :mod:`~fxlab.serialization.save`: :func:`save` and :func:`rebuild` (fxlab's own model files);
- :mod:`~fxlab.serialization.export`: :func:`export_onnx` (checked with onnxruntime), :func:`export_program`.

Loading imports nothing from :mod:`fxlab.passes`: a saved pipeline is re-run through
:func:`fxlab.pipeline.parse_pipeline`, which finds passes in the registry.
"""

from __future__ import annotations

from .export import export_onnx, export_program
from .load import Loaded, load, load_file, load_source
from .save import FORMAT, rebuild, save

__all__ = [
    "FORMAT",
    "Loaded",
    "export_onnx",
    "export_program",
    "load",
    "load_file",
    "load_source",
    "rebuild",
    "save",
]
