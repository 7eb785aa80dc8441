"""``fxlab verify`` / ``python -m fxlab.verify``: verify every step of a pipeline on MNIST."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._util import check_output, resolve_device
from ..errors import UsageError, VerifyError, did_you_mean
from ..models import names
from ..pipeline import as_passes
from ..verification import verify
from .runner import add_model_options, parser


def _parser() -> argparse.ArgumentParser:
    p = parser(
        "python -m fxlab.verify",
        "Apply a pipeline to a model one pass at a time and verify every step on MNIST: exact passes "
        "by their outputs, approximate passes by their accuracy budget, function-changing passes by "
        "retraining. Exit 0 when every contract holds, 1 when one fails, 2 on bad input.",
    )
    p.add_argument("file", nargs="?", help="model file (state dict, checkpoint, fxlab file, or pickled module with --trust)")
    add_model_options(p, f"built-in model ({', '.join(names())}): trained with its default recipe (cached); "
                         "with FILE, the architecture for the file's weights (also package.module:Class or "
                         "path/to/file.py:Class, your own class)")
    p.add_argument("--passes", required=True, metavar="PIPELINE",
                   help='pipeline text, e.g. "insert-relu{after=layer3},fuse-linear-relu"')
    p.add_argument("--data", metavar="DIR", help="MNIST root (default: $FXLAB_DATA, else the user cache; fetched if absent)")
    p.add_argument("--retrain-epochs", type=float, default=1.0, metavar="N",
                   help="fine-tuning epochs after each function-changing step (fractions allowed; default 1)")
    p.add_argument("--qat-epochs", type=float, default=0.0, metavar="E",
                   help="quantization-aware training: fine-tune each quantize-linear step through its quantizer for "
                        "E MNIST epochs before converting; the report shows plain vs QAT accuracy (default 0: off)")
    p.add_argument("--tolerance", type=float, default=1e-4, metavar="X", help="max abs diff allowed to exact passes (default 1e-4)")
    p.add_argument("--floor", type=float, default=1.0, metavar="POINTS",
                   help="accuracy points below baseline a retrained step may end (default 1)")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the retraining batch order (default 0)")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--plot", metavar="OUT", help="write accuracy per step and retraining curves as PNG (matplotlib)")
    p.add_argument("--html", metavar="OUT", help="write the report as one self-contained HTML page (graphs, diffs, charts)")
    p.add_argument("--trust", action="store_true", help="allow loading a pickled whole module (runs code from the file)")
    p.add_argument("--no-diff", action="store_true", help="print the table only, not the graph diffs")
    p.add_argument("--nodes", action="store_true",
                   help="print every step's per-node numerics (max abs diff, relative error, SQNR per node)")
    return p


def _check(ns: argparse.Namespace) -> None:
    """Everything that can be said about the arguments before MNIST is read or anything trained."""
    if ns.file is None and ns.model is None:
        raise UsageError("python -m fxlab.verify: give a model FILE or --model NAME")
    if ns.retrain_epochs < 0:
        raise UsageError("python -m fxlab.verify: --retrain-epochs must be ≥ 0")
    if not ns.qat_epochs >= 0 or ns.qat_epochs == float("inf"):
        raise UsageError("python -m fxlab.verify: --qat-epochs must be a number ≥ 0")
    for out in (ns.json, ns.plot, ns.html):
        if out:
            check_output(out)
    if ns.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise VerifyError("--plot needs matplotlib: pip install 'fxlab[plot]'") from None
    if ns.file is not None and not os.path.exists(ns.file):
        raise VerifyError(f"no such file: {ns.file}")
    if ns.file is None and ns.model is not None and ":" in ns.model:
        raise VerifyError(f"--model {ns.model} without FILE: give the file of its trained weights "
                          "(fxlab trains only its built-in models by name)")
    if ns.file is None and ns.model_args:
        raise VerifyError("--model-args applies with a FILE of weights, not to a built-in model trained by name")
    if ns.file is None and ns.model not in names():
        raise VerifyError(f"unknown model {ns.model!r}{did_you_mean(ns.model, names())}; seed models: {', '.join(names())}")
    if ns.device is not None:
        resolve_device(ns.device)


def load_model(ns: argparse.Namespace) -> object:
    """The model the arguments name: a file loaded now (a file that cannot be read is said before any
    work), or a built-in model name (its checkpoint trained first if none is cached, which is said)."""
    from ..models import parse_model_args

    if ns.file is not None:
        from ..serialization import load_file

        return load_file(ns.file, trust=ns.trust, model=ns.model, model_args=parse_model_args(ns.model_args)).model
    from ..train import checkpoint_path, recipe_for

    if not checkpoint_path(ns.model).is_file():
        print(f"training {ns.model} with its default recipe ({recipe_for(ns.model).epochs} epochs) once; "
              f"the checkpoint is cached at {checkpoint_path(ns.model)}", file=sys.stderr, flush=True)
    return ns.model


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.verify (FILE | --model NAME) --passes PIPELINE [options]``."""
    ns = _parser().parse_args(argv)
    _check(ns)
    pipeline = as_passes(ns.passes)  # a bad pipeline is reported before any training
    model = load_model(ns)
    report = verify(model, pipeline, data=ns.data, retrain_epochs=ns.retrain_epochs, device=ns.device,
                    tolerance=ns.tolerance, floor=ns.floor, seed=ns.seed, progress=sys.stderr.isatty(),
                    name=ns.file if ns.file is not None else ns.model, qat_epochs=ns.qat_epochs)
    print(report.text(diffs=not ns.no_diff, nodes=ns.nodes))
    if ns.json:
        report.write_json(ns.json)
        print(f"\nwrote {ns.json}")
    if ns.plot:
        report.plot(ns.plot)
        print(f"wrote {ns.plot}")
    if ns.html:
        print(f"wrote {report.write_html(ns.html)}")
    return 0 if report.ok else 1
