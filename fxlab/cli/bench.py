"""``fxlab bench`` / ``python -m fxlab.bench``: the benchmarks, as side-by-side ratios."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..bench import SUITES, Config, report, run_benchmarks, write_json_atomic
from ..errors import UsageError
from .runner import parser


def main(argv: Sequence[str]) -> int:
    """``python -m fxlab.bench``: run the benchmarks, print tables, optionally write JSON."""
    p = parser("python -m fxlab.bench", "Benchmarks: fxlab vs torch.fx, torch.ao and the seeds' loops.")
    p.add_argument("--suite", choices=SUITES, action="append",
                   help="run only this suite (repeatable; default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (CI smoke run, < 2 min)")
    p.add_argument("--json", metavar="OUT", help="write every figure to this JSON file (atomically)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--data", help="MNIST root (default: FXLAB_DATA, else fxlab's data folder)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    p.add_argument("--load", metavar="JSON", help="print the report of a saved --json file instead of running")
    args = p.parse_args(argv)
    fmt = "github" if args.markdown else "simple"
    if args.load:
        try:
            result = json.loads(Path(args.load).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {args.load}: {exc}") from exc
        print(report(result, fmt))
        return 0
    suites = args.suite or list(SUITES)
    cfg = Config.quick_config(device=args.device, data=args.data) if args.quick else Config(device=args.device, data=args.data)
    result = run_benchmarks(cfg, suites)
    print(report(result, fmt))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"\nwrote {args.json}")
    return 0
