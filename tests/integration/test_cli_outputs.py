"""What the commands write, and the numbers they take, are checked before any work.

An output that is the input file (or another output of the same run) or an empty path is refused
by the runner with one line and exit 2, leaving every file as it was; replacing a file keeps its
permissions and writes through a symbolic link; non-finite or out-of-range numbers are bad input;
``bisect`` offers only the options it honours.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from fxlab.cli import run


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones included) with its bytes (None for a folder or a link)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() or p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


def check_refused(code: int, stderr: str, message: str) -> None:
    """Exit 2, one ``error:`` line on stderr that mentions ``message``, no traceback."""
    lines = stderr.splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    assert message.lower() in lines[0].lower(), (message, lines[0])


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> Path:
    """The current folder: a saved state dict (``victim.pth``) and a file of its own class (``net.py``)."""
    from fxlab.models import build

    monkeypatch.chdir(tmp_path)
    torch.save(build("mymodule").state_dict(), tmp_path / "victim.pth")
    (tmp_path / "net.py").write_text("from torch import nn\n\nclass Net(nn.Linear):\n    pass\n", encoding="utf-8")
    (tmp_path / "report.json").write_text('{"old": true}\n', encoding="utf-8")
    return tmp_path


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model, reading MNIST, training, verifying and benchmarking fail the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the command started working before checking its arguments")

    import fxlab.cli.bench
    import fxlab.cli.bisect
    import fxlab.cli.train
    import fxlab.cli.verify
    import fxlab.data
    import fxlab.serialization

    for module, name in [(fxlab.serialization, "load_source"), (fxlab.serialization, "load_file"),
                         (fxlab.data, "load"), (fxlab.cli.verify, "verify"), (fxlab.cli.bisect, "bisect"),
                         (fxlab.cli.train, "fit_recipe"), (fxlab.cli.bench, "run_benchmarks")]:
        monkeypatch.setattr(module, name, forbidden)


def refused(command: str, argv: list[str], message: str, folder: Path, capsys) -> None:
    """``command argv`` is refused with ``message`` and every file in ``folder`` is as it was."""
    before = snapshot(folder)
    code = run(command, argv)
    check_refused(code, capsys.readouterr().err, message)
    assert snapshot(folder) == before


# -- 1. an output that is an input, or another output ---------------------------------------------------

SAME_FILE = [
    ("show-o-is-input", "show", ["victim.pth", "-o", "victim.pth"], "is the input file"),
    ("show-html-is-input", "show", ["victim.pth", "--passes", "fuse-linear-relu", "--html", "victim.pth"],
     "is the input file"),
    ("apply-o-is-input", "apply", ["victim.pth", "fuse-linear-relu", "-o", "victim.pth"], "is the input file"),
    ("apply-o-is-input-by-another-path", "apply", ["victim.pth", "dce", "-o", "./sub/../victim.pth"],
     "is the input file"),
    ("verify-json-is-input", "verify",
     ["victim.pth", "--passes", "fuse-linear-relu", "--retrain-epochs", "0", "--json", "victim.pth"],
     "is the input file"),
    ("bisect-json-is-input", "bisect", ["victim.pth", "--passes", "dce", "--retrain-epochs", "0", "--json",
                                        "victim.pth"], "is the input file"),
    ("train-out-is-model-file", "train", ["--model", "net.py:Net", "--out", "net.py"], "is the input file"),
    ("bench-json-is-loaded-file", "bench", ["--load", "report.json", "--json", "report.json"], "is the input file"),
    ("show-two-outputs", "show", ["mymodule", "--passes", "dce", "-o", "both.txt", "--html", "both.txt"],
     "same file as -o"),
    ("verify-two-outputs", "verify", ["victim.pth", "--passes", "dce", "--json", "report.json",
                                      "--html", "report.json"], "same file as --json"),
]


@pytest.mark.parametrize("command, argv, message", [c[1:] for c in SAME_FILE], ids=[c[0] for c in SAME_FILE])
def test_output_that_is_an_input_or_another_output_is_refused(command, argv, message, work, no_work,
                                                              capsys) -> None:
    (work / "sub").mkdir()
    refused(command, argv, message, work, capsys)


def test_output_linked_to_the_input_is_refused(work, no_work, capsys) -> None:
    (work / "alias.pth").symlink_to("victim.pth")
    os.link(work / "victim.pth", work / "hard.pth")
    refused("apply", ["victim.pth", "dce", "-o", "alias.pth"], "is the input file", work, capsys)
    refused("show", ["hard.pth", "-o", "victim.pth"], "is the input file", work, capsys)


# -- 7. an empty output path ----------------------------------------------------------------------------


@pytest.mark.parametrize("command, argv, option", [
    ("show", ["mymodule", "-o", ""], "-o"),
    ("apply", ["mymodule", "dce", "-o", ""], "-o"),
    ("verify", ["victim.pth", "--passes", "dce", "--json", ""], "--json"),
], ids=["show", "apply", "verify"])
def test_empty_output_path_is_refused(command, argv, option, work, no_work, capsys) -> None:
    refused(command, argv, f"{option} is empty", work, capsys)


# -- 2. replacing a file: its permissions, symbolic links ----------------------------------------------


def test_replacing_a_file_keeps_its_permissions(work, capsys) -> None:
    private = work / "private.txt"
    private.write_text("secret\n", encoding="utf-8")
    private.chmod(0o600)
    assert run("show", ["mymodule", "-o", "private.txt"]) == 0, capsys.readouterr().err
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text(encoding="utf-8").startswith("# mymodule")


def test_output_through_a_symlink_replaces_its_target(work, capsys) -> None:
    (work / "real").mkdir()
    target = work / "real" / "table.txt"
    target.write_text("old\n", encoding="utf-8")
    target.chmod(0o640)
    (work / "link.txt").symlink_to(Path("real") / "table.txt")
    assert run("show", ["mymodule", "-o", "link.txt"]) == 0, capsys.readouterr().err
    assert (work / "link.txt").is_symlink()
    assert target.read_text(encoding="utf-8").startswith("# mymodule")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in (work / "real").iterdir()) == ["table.txt"]  # no temporary file left


# -- 3, 4. train's numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--max-steps", "-3"], "--max-steps must be at least 1"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--seed", str(2**64)], "--seed"),
], ids=["lr-negative", "lr-zero", "lr-nan", "lr-inf", "max-steps-negative", "max-steps-0", "seed-too-big"])
def test_train_refuses_bad_numbers_before_reading_mnist(argv, message, work, no_work, capsys) -> None:
    refused("train", ["--model", "mymodule", "--epochs", "1", "--out", "x.pth", *argv], message, work, capsys)


# -- 5. verify's and bisect's numbers; sweep files agree --------------------------------------------------


@pytest.mark.parametrize("command, option, value", [
    ("verify", "--tolerance", "nan"),
    ("verify", "--floor", "nan"),
    ("verify", "--tolerance", "inf"),
    ("verify", "--retrain-epochs", "inf"),
    ("verify", "--qat-epochs", "nan"),
    ("verify", "--tolerance", "-1"),
    ("verify", "--floor", "-0.5"),
    ("bisect", "--tolerance", "nan"),
    ("bisect", "--floor", "inf"),
    ("bisect", "--retrain-epochs", "-1"),
], ids=lambda v: v.lstrip("-"))
def test_non_finite_or_negative_numbers_are_bad_input(command, option, value, work, no_work, capsys) -> None:
    argv = ["victim.pth", "--passes", "dce", "--retrain-epochs", "0", "--no-diff", option, value]
    if command == "bisect":
        argv.remove("--no-diff")
    refused(command, argv, option, work, capsys)


def test_sweep_file_refuses_nan_as_the_command_line_does(work, no_work, capsys) -> None:
    (work / "sweep.toml").write_text('[[run]]\nmodel = "victim.pth"\npasses = "dce"\ntolerance = nan\n',
                                     encoding="utf-8")
    refused("verify", ["--sweep", "sweep.toml"], "tolerance", work, capsys)
    refused("verify", ["victim.pth", "--passes", "dce", "--tolerance", "nan"], "tolerance", work, capsys)


# -- 6. bisect offers only what it honours ----------------------------------------------------------------


@pytest.mark.parametrize("option", [["--html", "b.html"], ["--plot", "b.png"], ["--sweep", "s.toml"],
                                    ["--no-diff"], ["--qat-epochs", "1"]],
                         ids=["html", "plot", "sweep", "no-diff", "qat-epochs"])
def test_bisect_refuses_options_it_would_ignore(option, work, no_work, capsys) -> None:
    argv = ["victim.pth", "--passes", "dce", "--retrain-epochs", "0", *option]
    refused("bisect", argv, f"python -m fxlab.bisect: unrecognized arguments: {option[0]}", work, capsys)


def test_bisect_names_itself_in_errors_and_help(work, no_work, capsys) -> None:
    refused("bisect", ["victim.pth"], "python -m fxlab.bisect: the following arguments are required: --passes",
            work, capsys)
    refused("bisect", ["--passes", "dce"], "python -m fxlab.bisect: give a model FILE", work, capsys)
    assert run("bisect", ["--help"]) == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m fxlab.bisect")
    assert not any(option in usage for option in ("--html", "--plot", "--sweep", "--no-diff", "--qat-epochs"))


def test_bisect_runs_and_writes_its_json(work, mnist_root, capsys) -> None:
    code = run("bisect", ["victim.pth", "--passes", "dce", "--retrain-epochs", "0", "--device", "cpu",
                          "--data", str(mnist_root), "--json", "bisect.json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads((work / "bisect.json").read_text(encoding="utf-8"))["ok"] is True
