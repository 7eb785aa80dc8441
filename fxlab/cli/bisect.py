"""``fxlab bisect`` / ``python -m fxlab.bisect``: the first pass, and its first rewrite, that breaks a pipeline.

The arguments of one ``python -m fxlab.verify`` run, less those bisect has no use for (``--sweep``,
``--plot``, ``--html``, ``--no-diff``, ``--qat-epochs``: it writes no report but its JSON and checks each
prefix without QAT). Exit 0 when the whole pipeline holds its contract, 1 when a culprit is found, 2 on
bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .._util import write_atomic
from ..pipeline import as_passes
from ..verification import bisect
from .runner import parser
from .verify import add_run_options, check_run, load_model

BISECT = "python -m fxlab.bisect"


def _parser() -> argparse.ArgumentParser:
    p = parser(BISECT, "Find the first pass of a pipeline that breaks its contract on MNIST, then the first of its "
                       "rewrites that does, by binary search (a logarithmic number of verifications). Exit 0 when "
                       "the pipeline holds, 1 when a culprit is found, 2 on bad input.")
    add_run_options(p)
    return p


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.bisect (FILE | --model NAME) --passes PIPELINE [options]``."""
    ns = _parser().parse_args(argv)
    check_run(ns, BISECT)
    pipeline = as_passes(ns.passes)
    model = load_model(ns)
    result = bisect(model, pipeline, data=ns.data, retrain_epochs=ns.retrain_epochs, device=ns.device,
                    tolerance=ns.tolerance, floor=ns.floor, seed=ns.seed, progress=sys.stderr.isatty(),
                    name=ns.file if ns.file is not None else ns.model)
    print(result.text())
    if ns.nodes and result.culprit is not None:
        print()
        print(result.culprit.nodes_text())
    if ns.json:
        write_atomic(ns.json, json.dumps(result.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
        print(f"\nwrote {ns.json}")
    return 0 if result.ok else 1
