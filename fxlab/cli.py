"""Command-line plumbing shared by every ``python -m fxlab.*`` command, and the ``fxlab`` script.

Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad input. A user error prints one line
(``error: …``); ``--debug`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from .errors import FxlabError

#: ``fxlab NAME ...`` runs ``main(argv)`` of these modules (imported only when used).
COMMANDS = {
    "show": ("fxlab.show", "graph dumps of a model file or seed model"),
    "apply": ("fxlab.cli_apply", "apply a pipeline to a model file and save the result"),
    "verify": ("fxlab.verification", "verify every step of a pipeline on MNIST"),
    "train": ("fxlab.train", "train a seed model on MNIST"),
    "data": ("fxlab.data", "find, check and fetch MNIST"),
    "bench": ("fxlab.bench", "benchmarks"),
}


class UsageError(FxlabError):
    """Bad command-line usage."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise UsageError(f"{self.prog}: {message}")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--debug`` and ``-v``, whose usage errors exit 2 with one line."""
    p = _Parser(prog=prog, description=description)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("-v", "--verbose", action="store_true", help="log what fxlab does")
    return p


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main``, turning fxlab errors into one line on stderr and exit code 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    level = logging.DEBUG if debug else logging.INFO if ("-v" in args or "--verbose" in args) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(main(args) or 0)
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
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        lines = [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: fxlab COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if args and args[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
