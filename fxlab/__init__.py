"""fxlab: composable torch.fx passes that prove what they did.

>>> import fxlab
>>> from fxlab.passes import InsertRelu
>>> from fxlab.models import build
>>> gm = fxlab.apply(build("mymodule"), [InsertRelu("layer3")])
"""

from __future__ import annotations

from . import passes as _builtin_passes  # noqa: F401  (registers the built-in passes by name)
from .errors import (
    DataError,
    ExportError,
    FxlabError,
    LoadError,
    PassError,
    PipelineError,
    SelectorError,
    TraceError,
    VerifyError,
)
from .core import GraphDiff, diff_graphs, format_graph, select, trace
from .pipeline import (
    Pass,
    PassRecord,
    apply,
    format_pipeline,
    get_pass,
    parse_pipeline,
    records,
    register_pass,
    registered_passes,
)

__version__ = "0.1.0"

# Heavier parts load on first use, so that `import fxlab` stays light and `python -m fxlab.show`
# (and the other commands) never find their own module already imported.
_LAZY = {
    "render": "fxlab.rendering",
    "load": "fxlab.serialization",
    "save": "fxlab.serialization",
    "export_onnx": "fxlab.serialization",
    "export_program": "fxlab.serialization",
    "verify": "fxlab.verification",
    "bisect": "fxlab.verification",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fxlab' has no attribute {name!r}")

__all__ = [
    "DataError",
    "ExportError",
    "FxlabError",
    "GraphDiff",
    "LoadError",
    "Pass",
    "PassError",
    "PassRecord",
    "PipelineError",
    "SelectorError",
    "TraceError",
    "VerifyError",
    "apply",
    "diff_graphs",
    "format_graph",
    "format_pipeline",
    "get_pass",
    "parse_pipeline",
    "records",
    "register_pass",
    "registered_passes",
    "select",
    "trace",
]
