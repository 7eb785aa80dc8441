"""``fxlab bisect`` / ``python -m fxlab.bisect``: the first pass, and its first rewrite, that breaks a pipeline.

The same arguments as ``python -m fxlab.verify``. Exit 0 when the whole pipeline holds its contract,
1 when a culprit is found, 2 on bad input.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from .._util import write_atomic
from ..pipeline import as_passes
from ..verification import bisect
from .verify import _check, _parser, load_model


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.bisect (FILE | --model NAME) --passes PIPELINE [options]``."""
    p = _parser()
    p.prog = "python -m fxlab.bisect"
    p.description = ("Find the first pass of a pipeline that breaks its contract on MNIST, then the first of its "
                     "rewrites that does, by binary search (a logarithmic number of verifications). Exit 0 when "
                     "the pipeline holds, 1 when a culprit is found, 2 on bad input.")
    ns = p.parse_args(argv)
    ns.plot = None  # verify's --plot has nothing to draw here
    _check(ns)
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
