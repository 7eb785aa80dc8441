"""fxlab's exceptions: one base class, one subclass per layer.

Every message says what was wrong, where, and what to do about it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FxlabError(Exception):
    """Base class of every error fxlab raises on purpose."""


class TraceError(FxlabError):
    """A model could not be traced into an FX graph."""


class PassError(FxlabError):
    """A pass failed, refused its input, or left an invalid graph."""


class SelectorError(FxlabError):
    """A selector matched no node of the graph."""


class PipelineError(FxlabError):
    """Pipeline text or a pipeline object is malformed."""


class DataError(FxlabError):
    """MNIST is missing, corrupt, or could not be fetched."""


class LoadError(FxlabError):
    """A model file could not be loaded safely."""


class ExportError(FxlabError):
    """A model could not be saved, exported or rendered."""


class WriteError(FxlabError):
    """An output file could not be written (the old file, if any, is left as it was)."""


class UsageError(FxlabError):
    """Bad usage: a flag, an argument or a value that cannot be used as given."""


class VerifyError(FxlabError):
    """Verification could not run (not: a contract failed; that is a report)."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The names among `candidates` closest to `name`, best first (for 'did you mean')."""
    pool = sorted(set(candidates))
    found = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not found:
        found = [c for c in pool if name.lower() in c.lower() or c.lower() in name.lower()][:n]
    return found


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' (closest: a, b, c)' or '' when nothing is close."""
    found = closest(name, candidates, n)
    return f" (closest: {', '.join(found)})" if found else ""
