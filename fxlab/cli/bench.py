"""``fxlab bench`` / ``python -m fxlab.bench``: the benchmarks, as side-by-side ratios."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from .._util import resolve_device
from ..bench import SUITES, Config, load_result, report, run_benchmarks, write_json_atomic
from .runner import add_input, add_output, parser


def _show_progress() -> None:
    """The benchmark's progress lines (logger ``fxlab.bench``, INFO) on stderr, as they come."""
    log = logging.getLogger("fxlab.bench")
    if not any(getattr(h, "fxlab_bench", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.fxlab_bench = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.propagate = False  # once, through this handler (the runner's root handler would repeat each line)
    log.setLevel(min(log.getEffectiveLevel(), logging.INFO))


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.bench``: run the benchmarks, print tables, optionally write JSON."""
    p = parser("python -m fxlab.bench", "Benchmarks: fxlab vs torch.fx, torch.ao and the seeds' loops.")
    p.add_argument("--suite", choices=SUITES, action="append",
                   help="run only this suite (repeatable; default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (CI smoke run, < 2 min)")
    add_output(p, "--json", metavar="OUT", help="write every figure to this JSON file (atomically)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--data", help="MNIST root (default: FXLAB_DATA, else fxlab's data folder)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    add_input(p, "--load", metavar="JSON", help="print the report of a saved --json file instead of running")
    args = p.parse_args(argv)
    fmt = "github" if args.markdown else "simple"
    if args.load:
        print(report(load_result(args.load), fmt))
        return 0
    resolve_device(args.device)  # a device this machine lacks: said now
    suites = args.suite or list(SUITES)
    cfg = Config.quick_config(device=args.device, data=args.data) if args.quick else Config(device=args.device, data=args.data)
    _show_progress()
    result = run_benchmarks(cfg, suites)
    print(report(result, fmt))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"\nwrote {args.json}")
    return 0
