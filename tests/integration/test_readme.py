"""The README's Python examples and fxlab command lines run (as written, or as this module says)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType(f"readme_block_{index}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), module.__dict__)


# -- every fxlab command line of the README's shell blocks -------------------------------------------

SHELL_BLOCKS = re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
_PYTHON = re.compile(r"^(?:\.venv/bin/)?python3? -m (fxlab(?:\.\w+)?)(?:\s|$)")


def readme_commands() -> list[str]:
    """Every fxlab command of the shell blocks, as written, comments dropped.

    A chain ``a && b`` gives each part; the parts that are not fxlab's (``python3 -m venv``,
    ``pip install``, ``python -m pytest``, ``python examples/...``) are set-up or run elsewhere.
    """
    found = []
    for block in SHELL_BLOCKS:
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            for part in line.split("&&"):
                part = part.strip()
                command = shlex.join(shlex.split(part, comments=True)) if part else ""
                if _PYTHON.match(command) or command.startswith("fxlab "):
                    found.append(command)
    return found


TRAINED_FILE = "trained_state_dict.pth"  # mymodule, trained by the `trained` fixture (2 epochs)

MAIN_JOB = "insert-activation{after=layer2 fn=gelu},fuse-linear-relu,quantize-linear{mode=dynamic}"
#: the main job: `--model mymodule` trains 8 epochs first when no checkpoint is cached (minutes); the same
#: pipeline runs on a trained state dict with a small retraining budget instead
MAIN_JOB_RUN = (
    [TRAINED_FILE, "--passes", MAIN_JOB, "--retrain-epochs", "0.1", "--data", "{data}", "--device", "cpu"],
    "--model mymodule trains its checkpoint for minutes: a trained state dict and 0.1 retraining epoch instead",
    "ok: all 3 contracts hold on cpu",
)

#: README command → (how it runs: None as written, else the argv it runs instead, why, documented output).
#: ``{data}`` is the test MNIST root; `python` and `.venv/bin/python` are this interpreter. Files the
#: commands name are made first (see ``readme_dir``).
COMMANDS: dict[str, tuple[list[str] | None, str, str]] = {
    f".venv/bin/python -m fxlab.verify --model mymodule --passes '{MAIN_JOB}'": MAIN_JOB_RUN,
    f"python -m fxlab.verify --model mymodule --passes '{MAIN_JOB}'": MAIN_JOB_RUN,
    # finds the test MNIST intact and downloads nothing (the download sources are removed)
    ".venv/bin/python -m fxlab.data fetch": (None, "", "(4 files, MD5s match)"),
    "python -m fxlab.show model_state_dict.pth": (
        None, "", "# model_state_dict.pth: state dict, loaded as mymodule"),
    "python -m fxlab.show model.pth --passes fuse-linear-relu --diff": (
        None, "", "changed   layer1  %layer1 = layer1:Linear(784→128)(%flatten)  %layer1 = layer1:LinearReLU"),
    "python -m fxlab.show mymodule -o mymodule.svg": (
        None, "", "wrote mymodule.svg (svg)"),
    "python -m fxlab.apply model.pth fold-batchnorm,fuse-linear-relu -o fused.pth": (
        None, "", "wrote fused.pth (fxlab model: mymodule + "),
    "python -m fxlab.show fused.pth --diff": (
        None, "", "--- before"),
    "python -m fxlab.apply model.pth 'quantize-linear{mode=dynamic}' -o model.onnx": (
        None, "", "wrote model.onnx (ONNX, checked with onnxruntime)"),
    f"python -m fxlab.verify --model mymodule --passes '{MAIN_JOB}' --html report.html": (
        [*MAIN_JOB_RUN[0], "--html", "report.html"], MAIN_JOB_RUN[1], "wrote report.html"),
    "python -m fxlab.show simplenn --passes fold-batchnorm,remove-dropout,fuse-linear-relu --html pipeline.html": (
        None, "", "# simplenn: seed model with random weights; after fold-batchnorm,remove-dropout,fuse-linear-relu"),
    "python -m fxlab.verify --sweep examples/sweep.toml --json sweep.json": (
        ["--sweep", "sweep.toml", "--json", "sweep.json"],
        "examples/sweep.toml's runs on a trained state dict with 0.1 retraining epoch (see readme_dir), as MAIN_JOB_RUN",
        "ok: all 3 runs hold (1 process"),
    "python -m fxlab.show mymodule --passes 'quantize-linear{mode=int4 group_size=64}'": (
        None, "", "layer1: Int4WeightOnlyLinear(784→128, group=64)"),
    "python -m fxlab.verify --model mymodule --passes 'quantize-linear{mode=int8-int4}' --no-diff": (
        [TRAINED_FILE, "--passes", "quantize-linear{mode=int8-int4}", "--no-diff", "--data", "{data}", "--device",
         "cpu"], MAIN_JOB_RUN[1], "ok: accuracy drop"),
}

#: fxlab commands named in the README's prose (not in a shell block) that are cheap enough to run too.
INLINE = {
    "python -m fxlab.data check": ([], "ok: "),
    "python -m fxlab.data where": ([], "{data}"),
    "python -m fxlab.bench --load benchmarks/results-cpu.json --markdown": (
        ["--load", str(README.parent / "benchmarks" / "results-cpu.json"), "--markdown"], "| "),
}


def test_every_readme_command_is_run_or_explained() -> None:
    commands = readme_commands()
    assert len(commands) >= 8
    unknown = [c for c in commands if c not in COMMANDS]
    assert not unknown, f"README commands this test neither runs nor explains (add them to COMMANDS): {unknown}"
    stale = [c for c in COMMANDS if c not in commands]
    assert not stale, f"commands listed here that the README no longer has: {stale}"
    for command, (argv, why, _) in COMMANDS.items():
        assert argv is None or why, f"{command}: say why it does not run as written"
    for command in INLINE:
        assert f"`{command}" in README.read_text(encoding="utf-8"), command


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory, trained, mnist_root) -> Path:
    """A folder with the files the README's commands name: model.pth and model_state_dict.pth (mymodule)."""
    from fxlab.models import build

    d = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    state = build("mymodule").state_dict()
    torch.save(state, d / "model.pth")
    torch.save(state, d / "model_state_dict.pth")
    torch.save(trained["mymodule"].state_dict(), d / TRAINED_FILE)
    sweep = (README.parent / "examples" / "sweep.toml").read_text(encoding="utf-8")
    sweep = sweep.replace('model = "mymodule"', f'model = "{TRAINED_FILE}"')
    (d / "sweep.toml").write_text(sweep.replace("retrain_epochs = 1\n", 'retrain_epochs = 0.1\ndevice = "cpu"\n'),
                                  encoding="utf-8")
    return d


def _split(command: str) -> tuple[str, list[str]]:
    """(fxlab command, argv) of a README command line."""
    words = shlex.split(command)
    module = _PYTHON.match(command).group(1) if _PYTHON.match(command) else "fxlab"
    argv = words[3:] if _PYTHON.match(command) else words[1:]
    if module == "fxlab":
        return argv[0], argv[1:]
    return module.removeprefix("fxlab."), argv


# the show/apply block runs in its order: `show fused.pth` reads what `apply ... -o fused.pth` wrote
@pytest.mark.parametrize("command", list(COMMANDS))
def test_readme_command_runs(command, readme_dir, mnist_root, monkeypatch, capsys) -> None:
    from fxlab.cli import run
    from fxlab.data import download

    argv_instead, _, expected = COMMANDS[command]
    name, argv = _split(command)
    if argv_instead is not None:
        argv = [a.replace("{data}", str(mnist_root)) for a in argv_instead]
    monkeypatch.chdir(readme_dir)
    monkeypatch.setenv("FXLAB_DATA", str(mnist_root))
    monkeypatch.setattr(download, "SOURCES", ())  # nothing downloads: `data fetch` must find MNIST intact
    if name == "show" and "fused.pth" in argv and not (readme_dir / "fused.pth").exists():
        assert run(*_split("python -m fxlab.apply model.pth fold-batchnorm,fuse-linear-relu -o fused.pth")) == 0
    code = run(name, argv)
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert expected in captured.out, captured.out
    for flag in ("-o", "--html"):
        if flag not in argv:
            continue
        written = readme_dir / argv[argv.index(flag) + 1]
        assert written.is_file() and written.stat().st_size > 0
        if written.suffix == ".html":
            assert "data-step=\"1\"" in written.read_text(encoding="utf-8")
        if written.suffix == ".svg":
            assert "<svg" in written.read_text(encoding="utf-8")


@pytest.mark.parametrize("command", list(INLINE))
def test_readme_inline_command_runs(command, mnist_root, tmp_path, monkeypatch, capsys) -> None:
    from fxlab.cli import run

    argv, expected = INLINE[command]
    name, written = _split(command)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FXLAB_DATA", str(mnist_root))
    code = run(name, argv or written)
    out = capsys.readouterr().out
    assert code == 0 and expected.replace("{data}", str(mnist_root)) in out, out


def test_readme_command_as_a_subprocess(readme_dir, mnist_root) -> None:
    """The README's first show command, run as written with this interpreter for `python`."""
    command = "python -m fxlab.show model_state_dict.pth"
    assert command in readme_commands()
    env = dict(os.environ, FXLAB_DATA=str(mnist_root), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=readme_dir, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert COMMANDS[command][2] in proc.stdout
