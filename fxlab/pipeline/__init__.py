"""Passes and pipelines: the ``Pass`` base class and registry, pipeline text, and ``apply``."""

from . import sites
from .execute import PassRecord, PassRecords, apply, records
from .base import KINDS, Pass, get_pass, register_pass, registered_passes
from .text import as_passes, format_pass, format_pipeline, option_fields, parse_pipeline, required_options, text_types

__all__ = [
    "KINDS",
    "Pass",
    "PassRecord",
    "PassRecords",
    "apply",
    "as_passes",
    "format_pass",
    "format_pipeline",
    "get_pass",
    "option_fields",
    "parse_pipeline",
    "records",
    "register_pass",
    "registered_passes",
    "required_options",
    "sites",
    "text_types",
]
