"""``python -m fxlab.apply FILE PIPELINE -o OUT``: the command line of :func:`fxlab.apply`.

Loads FILE (any file :func:`fxlab.load` reads, or a seed model name), applies PIPELINE, prints
what each pass did, and writes OUT by its extension: ``.onnx`` (ONNX, input ``images``, output
``numbers``, dynamic batch), ``.pt2`` (``torch.export``), anything else fxlab's own model file
(:func:`fxlab.save`; ``python -m fxlab.show OUT`` reads it back).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .runner import add_input, add_model_options, add_output, parser


def main(argv: Sequence[str]) -> int:
    """``fxlab apply``: apply a pipeline to a model file and save the result."""
    from ..pipeline import PassRecords, apply, parse_pipeline, records
    from ..serialization import export_onnx, export_program, load_source, save

    p = parser("python -m fxlab.apply", "Apply a pipeline to a model file and save the result.")
    add_input(p, "file", metavar="FILE", help="a model file, or a seed model name")
    p.add_argument("pipeline", metavar="PIPELINE",
                   help='pipeline text, e.g. "fuse-linear-relu,quantize-linear{mode=dynamic}"')
    add_output(p, "-o", "--output", metavar="OUT", required=True,
                   help="where to write: .onnx, .pt2, else fxlab's model format")
    add_model_options(p)
    p.add_argument("--trust", action="store_true",
                   help="allow a whole pickled module to load: this runs code from the file")
    p.add_argument("--act", metavar="NAME",
                   help="activation between the layers of a state dict rebuilt as a generic MLP")
    ns = p.parse_args(argv)  # a bad output is refused here, before the model loads
    from ..models import parse_model_args

    passes = parse_pipeline(ns.pipeline)
    loaded = load_source(ns.file, model=ns.model, trust=ns.trust, act=ns.act,
                         model_args=parse_model_args(ns.model_args))
    gm = apply(loaded.model, passes)
    print(PassRecords(records(gm)[-len(passes):]).table())
    suffix = Path(ns.output).suffix.lower()
    if suffix == ".onnx":
        written, what = export_onnx(gm, ns.output), "ONNX, checked with onnxruntime"
    elif suffix == ".pt2":
        written, what = export_program(gm, ns.output), "torch.export program"
    else:
        base = (loaded.arch, loaded.kwargs) if loaded.arch else None
        written = save(gm, ns.output, base=base)
        what = f"fxlab model: {loaded.arch} + {gm.meta.get('fxlab.pipeline', '')}"
    print(f"wrote {written} ({what})")
    return 0
