"""``python -m fxlab.show FILE [--model SPEC [--model-args JSON]] [--passes PIPELINE] [--diff] [--format F] [-o OUT]``

Graph dumps of a saved model (any file :func:`fxlab.load` reads) or of a seed model by name::

    python -m fxlab.show model_state_dict.pth                         # table: shapes, params, FLOPs
    python -m fxlab.show model.pth --passes "fuse-linear-relu" --diff   # what the pipeline changes
                                                                        # (what each pass did: on stderr)
    python -m fxlab.show mymodule --format svg -o mymodule.svg          # a seed model, random weights
    python -m fxlab.show weights.pth --model mynets:Net --model-args '{"width": 64}'   # your own class

FILE that does not exist but names a seed model (``mymodule``, ``simplenn``, ...) shows that
model with random weights. Exit codes: 0 ok, 2 bad usage or a file that cannot be loaded (one
line on stderr; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .runner import add_input, add_model_options, add_output, parser

#: -o's extension → format, when --format is not given.
SUFFIX_FORMATS = {".svg": "svg", ".png": "png", ".json": "json", ".dot": "dot", ".gv": "dot", ".py": "code",
                  ".txt": "table"}


def _parser() -> argparse.ArgumentParser:
    from ..rendering import FORMATS

    p = parser(
        "python -m fxlab.show",
        "Show a model file (or a seed model by name) as a table, code, FX graph, JSON or Graphviz drawing.",
    )
    add_input(p, "file", nargs="?", metavar="FILE",
                   help="a model file (state dict, checkpoint, fxlab model, pickled module) or a seed model name")
    add_model_options(p)
    p.add_argument("--passes", metavar="PIPELINE", help='pipeline to apply first, e.g. "insert-relu{after=layer3}"')
    p.add_argument("--diff", action="store_true",
                   help="show what the pipeline changed (for an fxlab model file: what its saved pipeline changed)")
    p.add_argument("--format", "-f", choices=FORMATS, help="output format (default: from -o's extension, else table)")
    add_output(p, "-o", "--output", metavar="OUT", help="write to OUT (atomically) instead of stdout")
    add_output(p, "--html", metavar="OUT",
                   help="also write one self-contained HTML page of the pipeline: each step's graphs side by side")
    p.add_argument("--trust", action="store_true",
                   help="allow a whole pickled module to load: this runs code from the file")
    p.add_argument("--act", metavar="NAME",
                   help="activation between the layers of a state dict rebuilt as a generic MLP")
    return p


def main(argv: Sequence[str]) -> int:
    """``fxlab show``: graph dumps of a model file or seed model."""
    from ..models import parse_model_args
    from ..rendering import render
    from ..serialization import load_source

    ns = _parser().parse_args(argv)
    if ns.passes is not None and not ns.passes.strip():
        raise UsageError("--passes is empty: name at least one pass (or leave --passes out)")

    fmt = ns.format or (SUFFIX_FORMATS.get(Path(ns.output).suffix.lower(), "table") if ns.output else "table")
    loaded = load_source(ns.file, model=ns.model, trust=ns.trust, act=ns.act,
                         model_args=parse_model_args(ns.model_args))
    model = loaded.model
    before = None
    if ns.passes is not None:
        from ..pipeline import PassRecords, apply, as_passes, records

        passes = as_passes(ns.passes)
        after = apply(model, passes)
        before = model if ns.diff else None
        # what each pass did and left alone, on stderr: stdout is the dump (which may be JSON or SVG)
        print(PassRecords(records(after)[-len(passes):]).table(), file=sys.stderr)
    else:
        after = model
        if ns.diff:
            if not loaded.pipeline:
                raise UsageError(
                    "--diff needs --passes PIPELINE (or an fxlab model file, which carries its pipeline)"
                )
            before = loaded.base()
    if ns.html:
        _write_html(ns, loaded)
    out = render(after, fmt, diff_against=before)
    if fmt == "table" and before is None:
        title = loaded.description + (f"; after {ns.passes}" if ns.passes else "")
        out = f"# {title}\n{out}"
    _emit(out, fmt, ns.output)
    return 0


def _write_html(ns: argparse.Namespace, loaded: Any) -> None:
    from .._util import write_atomic
    from ..rendering.html import pipeline_html

    if ns.passes is not None:
        passes, base = ns.passes, loaded.model
    else:
        passes, base = loaded.pipeline, loaded.base() if loaded.pipeline else None
    if base is None:
        raise UsageError("--html needs --passes PIPELINE (or an fxlab model file, which carries its pipeline)")
    print(f"wrote {write_atomic(ns.html, pipeline_html(base, passes, title=loaded.description))} (html)",
          file=sys.stderr)


def _emit(out: str | bytes, fmt: str, output: str | None) -> None:
    """The rendering to OUT (atomically) or to stdout (binary formats only to a pipe or a file)."""
    from .._util import write_atomic

    if output:
        print(f"wrote {write_atomic(output, out)} ({fmt})")
    elif isinstance(out, bytes):
        if sys.stdout.isatty():
            raise UsageError(f"{fmt} is binary: write it to a file with -o FILE.{fmt}")
        sys.stdout.flush()
        sys.stdout.buffer.write(out)
    else:
        sys.stdout.write(out)
