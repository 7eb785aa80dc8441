"""The one runner every command goes through.

Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad input. A user error prints one line
(``error: …``); ``--debug`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from ..errors import FxlabError, UsageError, did_you_mean

#: ``fxlab NAME ...`` runs ``main(argv)`` of ``fxlab.cli.NAME`` (imported only when used).
COMMANDS = {
    "show": "graph dumps of a model file or seed model",
    "apply": "apply a pipeline to a model file and save the result",
    "verify": "verify every step of a pipeline on MNIST",
    "bisect": "find the pass, and the rewrite, that breaks a failing pipeline",
    "train": "train a seed model on MNIST",
    "data": "find, check and fetch MNIST",
    "bench": "benchmarks",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but every usage error is one ``UsageError`` line and ``--help`` returns instead of exiting.

    Options must be spelt out (no abbreviations: ``--epoch`` is not ``--epochs``), and an option
    that does not exist is reported before a missing required one, with the closest known options.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._argv: list[str] | None = None
        self._probing = False

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        ns, extras = self.parse_known_args(self._argv, namespace)
        if extras:
            self._unrecognized(extras)
        return ns

    def _unrecognized(self, extras: Sequence[str]) -> None:
        options = [s for a in self._actions for s in a.option_strings]
        hints = "".join(did_you_mean(e.split("=", 1)[0], options, n=1) for e in extras if e.startswith("-"))
        self.error(f"unrecognized arguments: {' '.join(extras)}{hints}")

    def _unknown_options(self) -> list[str]:
        """The options of the command line this parser does not know (parsed with nothing required)."""
        actions = [(a, a.required) for a in self._actions]
        self._probing = True
        try:
            for a, _ in actions:
                a.required = False
            _, extras = super().parse_known_args(self._argv)
        except (UsageError, _HelpExit):
            return []
        finally:
            self._probing = False
            for a, required in actions:
                a.required = required
        return [e for e in extras if e.startswith("-")]

    def error(self, message: str) -> NoReturn:  # one line, exit 2, like every other user error
        if not self._probing and self._argv is not None and message.startswith("the following arguments are required"):
            unknown = self._unknown_options()
            if unknown:
                self._argv = None  # report once
                self._unrecognized(unknown)
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:  # --help, --version
        if message:
            sys.stderr.write(message)
        raise _HelpExit(status)


class _HelpExit(Exception):
    """argparse finished the command (``--help``): the runner returns ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--debug`` and ``-v``, whose usage errors exit 2 with one line."""
    p = _Parser(prog=prog, description=description)
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("-v", "--verbose", action="store_true", help="log what fxlab does")
    return p


MODEL_HELP = ("architecture for the file's weights: a built-in model name, package.module:Class or "
              "path/to/file.py:Class (your own class, imported)")


def add_model_options(p: argparse.ArgumentParser, help_: str = MODEL_HELP) -> None:
    """``--model SPEC`` and ``--model-args JSON``, the same on every command."""
    p.add_argument("--model", metavar="SPEC", help=help_)
    p.add_argument("--model-args", metavar="JSON",
                   help='constructor arguments of --model as a JSON object, e.g. \'{"hidden_layers": [256, 32]}\'')


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
    except _HelpExit as exc:
        return exc.status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``fxlab show ... | head``): stop quietly, and keep Python's final
        # flush of stdout from printing 'Exception ignored ... BrokenPipeError' at exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
            pass
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
