"""The one runner every command goes through.

Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad input. A user error prints one line
(``error: …``); ``--debug`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from ..errors import FxlabError, UsageError

#: ``fxlab NAME ...`` runs ``main(argv)`` of ``fxlab.cli.NAME`` (imported only when used).
COMMANDS = {
    "show": "graph dumps of a model file or seed model",
    "apply": "apply a pipeline to a model file and save the result",
    "verify": "verify every step of a pipeline on MNIST",
    "train": "train a seed model on MNIST",
    "data": "find, check and fetch MNIST",
    "bench": "benchmarks",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise UsageError(f"{self.prog}: {message}")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--debug`` and ``-v``, whose usage errors exit 2 with one line."""
    p = _Parser(prog=prog, description=description)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("-v", "--verbose", action="store_true", help="log what fxlab does")
    return p


def run(command: str, argv: Sequence[str] | None = None) -> int:
    """Run ``fxlab COMMAND`` with ``argv``: one line on stderr and exit code 2 for an fxlab error."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    level = logging.DEBUG if debug else logging.INFO if ("-v" in args or "--verbose" in args) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        if command not in COMMANDS:
            known = ", ".join(COMMANDS)
            raise UsageError(f"fxlab: unknown command {command!r}; commands: {known} (fxlab --help)")
        module = importlib.import_module(f"fxlab.cli.{command}")
        return int(module.main(args) or 0)
    except FxlabError as exc:
        if debug:
            traceback.print_exc()
        else:
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``fxlab COMMAND ...``: the console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        lines = [f"  {name:<8} {help_}" for name, help_ in COMMANDS.items()]
        out = sys.stdout if args else sys.stderr
        print("usage: fxlab COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines), file=out)
        return 0 if args else 2
    return run(args[0], args[1:])
