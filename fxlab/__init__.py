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
from .graph import GraphDiff, diff_graphs, format_graph, select, trace
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
