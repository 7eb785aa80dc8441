"""The one runner every command goes through.

Exit codes: 0 ok, 1 a check failed, 2 bad usage or bad input. A user error prints one line
(``error: …``); ``--debug`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
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
        self.inputs: list[tuple[argparse.Action, Callable[[str], str | None]]] = []  # (option, its file)
        self.outputs: list[argparse.Action] = []

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        ns, extras = self.parse_known_args(self._argv, namespace)
        if extras:
            self._unrecognized(extras)
        self._check_outputs(ns)
        return ns

    def _check_outputs(self, ns: argparse.Namespace) -> None:
        """Refuse, before any work, an output that is empty, cannot be written, or is the same file as
        an input or as another output of this run (writing it would destroy that file)."""
        from .._util import check_output, same_file

        inputs = [(_label(a), value, path) for a, file_of in self.inputs
                  if (value := getattr(ns, a.dest)) is not None and (path := file_of(value)) is not None]
        seen: list[tuple[str, str]] = []
        for action in self.outputs:
            out = getattr(ns, action.dest)
            if out is None:
                continue
            name = _label(action)
            if not out.strip():
                raise UsageError(f"{self.prog}: {name} is empty: give the file to write")
            for in_name, value, path in inputs:
                if same_file(out, path):
                    raise UsageError(f"{self.prog}: {name} {out} is the input file ({in_name} {value}); "
                                     "writing it would destroy it: give another output file")
            for other_name, other in seen:
                if same_file(out, other):
                    raise UsageError(f"{self.prog}: {name} {out} is the same file as {other_name} {other}; "
                                     "give each output of a run its own file")
            check_output(out)
            seen.append((name, out))

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


def _label(action: argparse.Action) -> str:
    """How the command line names an argument: its first option string, else its metavar (``FILE``)."""
    return action.option_strings[0] if action.option_strings else action.metavar or action.dest.upper()


def _file_itself(value: str) -> str:
    return value


def add_input(p: argparse.ArgumentParser, *flags: str, file_of: Callable[[str], str | None] = _file_itself,
              **kwargs) -> argparse.Action:
    """An argument naming a file the command reads (``file_of`` finds the file in its value, None when
    it names none): no output of the command may be that file."""
    action = p.add_argument(*flags, **kwargs)
    p.inputs.append((action, file_of))  # type: ignore[attr-defined]
    return action


def add_output(p: argparse.ArgumentParser, *flags: str, **kwargs) -> argparse.Action:
    """An option naming a file the command writes, checked by the parser before any work: not empty,
    writable (``check_output``), and neither an input of the command nor another of its outputs."""
    action = p.add_argument(*flags, **kwargs)
    p.outputs.append(action)  # type: ignore[attr-defined]
    return action


def model_spec_file(spec: str) -> str | None:
    """The file of a ``path/to/file.py:Class`` model spec; None for a built-in name or ``package.module:Class``."""
    where, sep, _ = spec.removeprefix("user:").rpartition(":")
    return where if sep and (where.endswith(".py") or "/" in where or "\\" in where) else None


def finite_float(text: str) -> float:
    """An argparse ``type``: a float that is a number (``nan`` and ``inf`` are bad input, as in sweep files)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seed_int(text: str) -> int:
    """An argparse ``type``: an integer torch accepts as a seed."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    from ..train.recipe import SEED_RANGE

    if value not in SEED_RANGE:
        raise argparse.ArgumentTypeError(f"{text} is out of range: a seed is from -2**63 to 2**64 - 1")
    return value


MODEL_HELP = ("architecture for the file's weights: a built-in model name, package.module:Class or "
              "path/to/file.py:Class (your own class, imported)")


def add_model_options(p: argparse.ArgumentParser, help_: str = MODEL_HELP) -> None:
    """``--model SPEC`` and ``--model-args JSON``, the same on every command."""
    add_input(p, "--model", metavar="SPEC", help=help_, file_of=model_spec_file)
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
