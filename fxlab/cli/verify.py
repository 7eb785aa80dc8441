"""``fxlab verify`` / ``python -m fxlab.verify``: verify every step of a pipeline on MNIST."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._util import resolve_device
from ..errors import UsageError, VerifyError, did_you_mean
from ..models import names
from ..pipeline import as_passes
from ..verification import verify
from .runner import add_input, add_model_options, add_output, finite_float, parser, seed_int


VERIFY = "python -m fxlab.verify"


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of one verification run: verify's and bisect's."""
    add_input(p, "file", nargs="?",
              help="model file (state dict, checkpoint, fxlab file, or pickled module with --trust)")
    add_model_options(p, f"built-in model ({', '.join(names())}): trained with its default recipe (cached); "
                         "with FILE, the architecture for the file's weights (also package.module:Class or "
                         "path/to/file.py:Class, your own class)")
    p.add_argument("--passes", metavar="PIPELINE",
                   help='pipeline text, e.g. "insert-relu{after=layer3},fuse-linear-relu"')
    p.add_argument("--data", metavar="DIR",
                   help="MNIST root (default: $FXLAB_DATA, else the user cache; fetched if absent)")
    p.add_argument("--retrain-epochs", type=finite_float, default=1.0, metavar="N",
                   help="fine-tuning epochs after each function-changing step (fractions allowed; default 1)")
    p.add_argument("--tolerance", type=finite_float, default=1e-4, metavar="X",
                   help="max abs diff allowed to exact passes (default 1e-4)")
    p.add_argument("--floor", type=finite_float, default=1.0, metavar="POINTS",
                   help="accuracy points below baseline a retrained step may end (default 1)")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the retraining batch order (default 0)")
    add_output(p, "--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--trust", action="store_true",
                   help="allow loading a pickled whole module (runs code from the file)")
    p.add_argument("--nodes", action="store_true",
                   help="print every step's per-node numerics (max abs diff, relative error, SQNR per node)")


def _parser() -> argparse.ArgumentParser:
    p = parser(
        VERIFY,
        "Apply a pipeline to a model one pass at a time and verify every step on MNIST: exact passes "
        "by their outputs, approximate passes by their accuracy budget, function-changing passes by "
        "retraining. Exit 0 when every contract holds, 1 when one fails, 2 on bad input.",
    )
    add_run_options(p)
    p.add_argument("--qat-epochs", type=finite_float, default=None, metavar="E",
                   help="quantization-aware training: fine-tune each quantize-linear step through its quantizer for "
                        "E MNIST epochs before converting; the report shows plain vs QAT accuracy (default: 1 epoch for a step that misses its budget, and only then; 0: never)")
    add_input(p, "--sweep", metavar="SWEEP.toml",
              help="verify every [[run]] of a TOML file instead of FILE/--model and --passes (each run: verify's "
                   "options, e.g. model, passes, retrain_epochs; [defaults] for all) and print one table; under "
                   "torchrun the runs are sharded over the processes and rank 0 prints and writes --json")
    add_output(p, "--plot", metavar="OUT", help="write accuracy per step and retraining curves as PNG (matplotlib)")
    add_output(p, "--html", metavar="OUT",
               help="write the report as one self-contained HTML page (graphs, diffs, charts)")
    p.add_argument("--no-diff", action="store_true", help="print the table only, not the graph diffs")
    return p


def check_run(ns: argparse.Namespace, prog: str, passes_hint: str = "") -> None:
    """Everything that can be said about one run's arguments before MNIST is read or anything trained
    (the outputs were checked by the parser)."""
    if ns.passes is None:
        raise UsageError(f"{prog}: the following arguments are required: --passes{passes_hint}")
    if ns.file is None and ns.model is None:
        raise UsageError(f"{prog}: give a model FILE or --model NAME")
    for opt in ("retrain_epochs", "tolerance", "floor"):
        _check_not_negative(ns, opt, prog)
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


def _check_not_negative(ns: argparse.Namespace, opt: str, prog: str) -> None:
    value = getattr(ns, opt)
    if value is not None and value < 0:
        raise UsageError(f"{prog}: --{opt.replace('_', '-')} must be a number ≥ 0, got {value:g}")


def _check(ns: argparse.Namespace) -> None:
    check_run(ns, VERIFY, " (or --sweep FILE for many runs)")
    _check_not_negative(ns, "qat_epochs", VERIFY)
    if ns.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise VerifyError("--plot needs matplotlib: pip install 'fxlab[plot]'") from None


def _note_training(name: str) -> None:
    """Say on stderr that the built-in model ``name`` is trained first (minutes) when no checkpoint is cached."""
    from ..train import checkpoint_path, recipe_for

    if not checkpoint_path(name).is_file():
        print(f"training {name} with its default recipe ({recipe_for(name).epochs} epochs) once; "
              f"the checkpoint is cached at {checkpoint_path(name)}", file=sys.stderr, flush=True)


def load_model(ns: argparse.Namespace) -> object:
    """The model the arguments name: a file loaded now (a file that cannot be read is said before any
    work), or a built-in model name (its checkpoint trained first if none is cached, which is said)."""
    from ..models import parse_model_args

    if ns.file is not None:
        from ..serialization import load_file

        return load_file(ns.file, trust=ns.trust, model=ns.model, model_args=parse_model_args(ns.model_args)).model
    _note_training(ns.model)
    return ns.model


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.verify (FILE | --model NAME) --passes PIPELINE [options]``, or ``--sweep SWEEP.toml``."""
    p = _parser()
    ns = p.parse_args(argv)
    if ns.sweep is not None:
        return sweep_main(p, ns, argv)
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


#: The options that go with --sweep; every other one belongs in the sweep file.
_SWEEP_OPTIONS = ("sweep", "json", "debug", "verbose", "help")


def sweep_main(p: argparse.ArgumentParser, ns: argparse.Namespace, argv: Sequence[str]) -> int:
    """``python -m fxlab.verify --sweep SWEEP.toml [--json OUT]``, also under ``torchrun``.

    Every rank reads and checks the file before the process group is made (a bad file: every rank
    says so in one line and exits 2). Rank 0 prints the merged table, writes ``--json`` and exits 0
    when every run's contracts hold, 1 when one fails, 2 when a run could not run; the other ranks
    exit 0 once their share is handed over (torchrun stops every worker as soon as one fails, which
    could stop rank 0 before it wrote the report).
    """
    from ..models import names
    from ..verification.sweep import load_sweep, options, ranks_from_env, run_sweep

    rank = ranks_from_env().rank
    if ns.file is not None:
        raise UsageError(f"{VERIFY}: --sweep takes its models from the file, not {ns.file}")
    given = [s for a in p._actions if a.dest not in _SWEEP_OPTIONS for s in a.option_strings
             if any(t == s or t.startswith(s + "=") for t in argv)]
    if given:
        key = given[0].lstrip("-").replace("-", "_")
        hint = (f"every run's options are in the sweep file: put {key} = ... in a [[run]] or in [defaults]"
                if key in options() and key != "nodes" else "a sweep prints one table and writes --json only")
        raise UsageError(f"{VERIFY}: {given[0]} does not go with --sweep ({hint})")
    runs = load_sweep(ns.sweep)
    if rank == 0:
        for name in dict.fromkeys(r.options["model"] for r in runs if r.options["model"] in names()):
            _note_training(name)

    def done(row, total: int) -> None:
        who = f"rank {row.rank}: " if ranks_from_env().distributed else ""
        what = "ok" if row.ok else f"error: {row.error}" if row.error else "FAIL"
        print(f"{who}run {row.index}/{total} {row.model} {row.passes}: {what} ({row.seconds:.1f}s)",
              file=sys.stderr, flush=True)

    report = run_sweep(runs, progress=sys.stderr.isatty() and not ranks_from_env().distributed, on_result=done)
    if rank == 0:
        print(report.text())
        if ns.json:
            report.write_json(ns.json)
            print(f"\nwrote {ns.json}")
        return 2 if report.errors else 0 if report.ok else 1
    return 0
