"""Every command, fed bad input as a user would, answers exit 2 and one line, and touches no file.

For each case of the corpus: exit code 2, exactly one line on stderr starting with ``error: ``, no
``Traceback`` anywhere, every file that was in the output folder before byte-identical after, and
nothing new there (no partial or temporary file). The bulk runs in process through
``fxlab.cli.run`` (the runner every entry point uses); a few run as real ``python -m fxlab.<cmd>``
subprocesses to prove the entry points themselves.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fxlab.cli import main as fxlab_main
from fxlab.cli import run

# -- the corpus's files ----------------------------------------------------------------------------


class _Hostile:
    """A pickle that runs a shell command when it is loaded (if anything lets it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of bad (and a few good) input files, shared by the module's cases."""
    from fxlab.models import build

    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    model = build("mymodule")
    torch.save(model.state_dict(), d / "model_state_dict.pth")
    good = (d / "model_state_dict.pth").read_bytes()
    (d / "truncated.pth").write_bytes(good[: len(good) // 2])
    (d / "empty.pth").write_bytes(b"")
    (d / "text.pth").write_text("this is not a model\n", encoding="utf-8")
    (d / "a_folder").mkdir()
    torch.save(model, d / "whole.pth")  # a whole pickled module (seeds 003/004)
    torch.save({"hostile": _Hostile(d / "PWNED")}, d / "hostile.pth")
    with open(d / "hostile.pkl", "wb") as fh:  # the same, as a plain pickle
        pickle.dump(_Hostile(d / "PWNED"), fh)
    (d / "notjson.json").write_text("{ this is not json", encoding="utf-8")
    (d / "no_mnist").mkdir()
    assert run("apply", ["mymodule", "fuse-linear-relu", "-o", str(d / "model.onnx")]) == 0
    return d


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The output folder, with files already in it that no failing command may touch."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "existing.pth").write_bytes(b"old bytes that must survive\x00\x01")
    (d / "report.json").write_text('{"old": true}\n', encoding="utf-8")
    (d / "a_folder").mkdir()
    (d / "a_folder" / "keep.txt").write_text("keep\n", encoding="utf-8")
    return d


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (hidden ones included) with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def check_refused(code: int, stdout: str, stderr: str, before: dict, after: dict, message: str = "") -> None:
    """The contract of a refused input."""
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert code == 2, (code, stdout, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message.lower() in lines[0].lower(), (message, lines[0])
    assert after == before, f"files changed: {sorted(set(after) ^ set(before))}"


# -- the corpus --------------------------------------------------------------------------------
# {in}: the inputs folder, {out}: the output folder. Each case: (id, command, argv, piece of message).

CASES = [
    # FILE that is not a model
    ("missing-file-show", "show", ["{in}/nope.pth"], "nope.pth"),
    ("missing-file-apply", "apply", ["{in}/nope.pth", "dce", "-o", "{out}/x.pth"], "nope.pth"),
    ("missing-file-verify", "verify", ["{in}/nope.pth", "--passes", "dce"], "nope.pth"),
    ("folder-as-file-show", "show", ["{in}/a_folder"], "a_folder"),
    ("folder-as-file-apply", "apply", ["{in}/a_folder", "dce", "-o", "{out}/x.pth"], "a_folder"),
    ("folder-as-file-verify", "verify", ["{in}/a_folder", "--passes", "dce", "--data", "{in}/no_mnist"], "a_folder"),
    ("empty-file-show", "show", ["{in}/empty.pth"], "empty.pth"),
    ("empty-file-apply", "apply", ["{in}/empty.pth", "dce", "-o", "{out}/existing.pth"], "empty.pth"),
    ("truncated-pth-verify", "verify", ["{in}/truncated.pth", "--passes", "dce"], "truncated.pth"),
    ("text-as-pth-verify", "verify", ["{in}/text.pth", "--passes", "dce"], "text.pth"),
    ("pickled-module-untrusted-verify", "verify", ["{in}/whole.pth", "--passes", "dce"], "--trust"),
    ("hostile-pickle-trusted-verify", "verify", ["{in}/hostile.pth", "--passes", "dce", "--trust"], "system"),
    ("model-name-not-a-model-verify", "verify", ["{in}/model_state_dict.pth", "--model", "nope", "--passes", "dce"],
     "nope"),
    ("truncated-pth-show", "show", ["{in}/truncated.pth"], "truncated.pth"),
    ("truncated-pth-apply", "apply", ["{in}/truncated.pth", "dce", "-o", "{out}/existing.pth"], "truncated.pth"),
    ("text-as-pth-show", "show", ["{in}/text.pth"], "text.pth"),
    ("text-as-pth-apply", "apply", ["{in}/text.pth", "dce", "-o", "{out}/existing.pth"], "text.pth"),
    ("onnx-as-input-show", "show", ["{in}/model.onnx"], "model.onnx"),
    ("onnx-as-input-apply", "apply", ["{in}/model.onnx", "dce", "-o", "{out}/existing.pth"], "model.onnx"),
    ("pickled-module-untrusted-show", "show", ["{in}/whole.pth"], "--trust"),
    ("pickled-module-untrusted-apply", "apply", ["{in}/whole.pth", "dce", "-o", "{out}/existing.pth"], "--trust"),
    ("hostile-pickle-trusted-show", "show", ["{in}/hostile.pth", "--trust"], "system"),
    ("hostile-pickle-trusted-apply", "apply", ["{in}/hostile.pth", "dce", "-o", "{out}/existing.pth", "--trust"],
     "system"),
    ("hostile-plain-pickle-trusted-show", "show", ["{in}/hostile.pkl", "--trust"], "system"),
    ("model-name-not-a-model-show", "show", ["{in}/model_state_dict.pth", "--model", "mymodul"], "mymodule"),
    ("model-name-not-a-model-apply", "apply",
     ["{in}/model_state_dict.pth", "dce", "--model", "nosuchmodel", "-o", "{out}/existing.pth"], "nosuchmodel"),
    # pipelines
    ("unknown-pass-show", "show", ["mymodule", "--passes", "fuse-linear-rleu"], "fuse-linear-rleu"),
    ("unknown-pass-apply", "apply", ["mymodule", "fuse-linear-rleu", "-o", "{out}/existing.pth"], "fuse-linear-rleu"),
    ("unknown-pass-verify", "verify", ["{in}/model_state_dict.pth", "--passes", "nope"], "nope"),
    ("accented-pass-apply", "apply", ["mymodule", "fusé-linear-relu", "-o", "{out}/existing.pth"], "fus"),
    ("accented-pass-show", "show", ["mymodule", "--passes", "fusé-linear-relu"], "fus"),
    ("unknown-option-of-pass", "apply", ["mymodule", "insert-relu{aftr=layer3}", "-o", "{out}/x.pth"], "aftr"),
    ("unbalanced-braces", "apply", ["mymodule", "insert-relu{after=layer3", "-o", "{out}/x.pth"], ""),
    ("empty-pipeline-apply", "apply", ["mymodule", "", "-o", "{out}/existing.pth"], ""),
    ("blank-pipeline-apply", "apply", ["mymodule", "  ", "-o", "{out}/existing.pth"], ""),
    ("empty-passes-show", "show", ["mymodule", "--passes", ""], "--passes"),
    ("empty-passes-verify", "verify", ["{in}/model_state_dict.pth", "--passes", ""], ""),
    ("selector-matches-nothing-apply", "apply", ["mymodule", "insert-relu{after=layer4}", "-o", "{out}/existing.pth"],
     "layer4"),
    ("selector-matches-nothing-show", "show", ["mymodule", "--passes", "insert-relu{after=layer4}"], "layer4"),
    # options
    ("misspelt-option-show", "show", ["mymodule", "--pases", "dce"], "--pases"),
    ("misspelt-option-apply", "apply", ["mymodule", "dce", "--ouput", "{out}/x.pth"], "--ouput"),
    ("misspelt-option-verify", "verify", ["--model", "mymodule", "--pases", "dce"], "--pases"),
    ("misspelt-option-train", "train", ["--model", "mymodule", "--epoch", "1", "--out", "{out}/m.pth"], "--epoch"),
    ("misspelt-option-data", "data", ["check", "--rot", "{in}"], "--rot"),
    ("misspelt-option-bench", "bench", ["--quik"], "--quik"),
    ("missing-output-apply", "apply", ["mymodule", "dce"], "-o"),
    ("bad-format-show", "show", ["mymodule", "--format", "jpeg"], "jpeg"),
    # outputs
    ("output-is-a-folder-apply", "apply", ["mymodule", "dce", "-o", "{out}/a_folder"], "folder"),
    ("output-is-a-folder-show", "show", ["mymodule", "-o", "{out}/a_folder"], "folder"),
    ("output-folder-missing-apply", "apply", ["mymodule", "dce", "-o", "{out}/missing/x.pth"], "missing"),
    ("output-folder-missing-show", "show", ["mymodule", "-o", "{out}/missing/x.svg"], "missing"),
    ("output-parent-is-a-file-apply", "apply", ["mymodule", "dce", "-o", "{out}/existing.pth/x.pth"], "existing.pth"),
    ("output-parent-is-a-file-show", "show", ["mymodule", "-o", "{out}/existing.pth/x.txt"], "existing.pth"),
    ("output-onnx-folder-missing", "apply", ["mymodule", "dce", "-o", "{out}/missing/x.onnx"], "missing"),
    ("verify-json-folder-missing", "verify",
     ["{in}/model_state_dict.pth", "--passes", "dce", "--json", "{out}/missing/r.json"], "missing"),
    ("verify-plot-parent-is-a-file", "verify",
     ["{in}/model_state_dict.pth", "--passes", "dce", "--plot", "{out}/existing.pth/r.png"], "existing.pth"),
    ("verify-device-gpu", "verify", ["{in}/model_state_dict.pth", "--passes", "dce", "--device", "gpu"], "gpu"),
    ("verify-retrain-negative", "verify", ["{in}/model_state_dict.pth", "--passes", "dce", "--retrain-epochs", "-1"],
     "--retrain-epochs"),
    ("verify-no-model", "verify", ["--passes", "dce"], "--model"),
    ("train-epochs-0", "train", ["--model", "mymodule", "--epochs", "0", "--out", "{out}/m.pth"], "--epochs"),
    ("train-epochs-not-a-number", "train", ["--model", "mymodule", "--epochs", "two", "--out", "{out}/m.pth"], "two"),
    ("train-unknown-model", "train", ["--model", "mymodul", "--out", "{out}/m.pth"], "mymodule"),
    ("train-out-folder-missing", "train", ["--model", "mymodule", "--epochs", "1", "--out", "{out}/missing/m.pth"],
     "missing"),
    ("train-out-is-a-folder", "train", ["--model", "mymodule", "--epochs", "1", "--out", "{out}/a_folder"], "folder"),
    ("train-device-gpu", "train", ["--model", "mymodule", "--device", "gpu", "--out", "{out}/m.pth"], "gpu"),
    ("data-check-without-mnist", "data", ["check", "--root", "{in}/no_mnist"], "no_mnist"),
    ("data-unknown-subcommand", "data", ["chek"], "chek"),
    ("bench-unknown-suite", "bench", ["--suite", "nope"], "nope"),
    ("bench-load-missing", "bench", ["--load", "{in}/nope.json"], "nope.json"),
    ("bench-load-not-json", "bench", ["--load", "{in}/notjson.json"], "notjson.json"),
    ("bench-load-a-folder", "bench", ["--load", "{in}/a_folder"], "a_folder"),
    ("bench-json-folder-missing", "bench", ["--quick", "--json", "{out}/missing/b.json"], "missing"),
    ("bench-device-gpu", "bench", ["--quick", "--device", "gpu"], "gpu"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Training, verifying and benchmarking fail the test: a refusal must come before any of them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the command started working before checking its input")

    import fxlab.cli.bench
    import fxlab.cli.train
    import fxlab.cli.verify

    monkeypatch.setattr(fxlab.cli.verify, "verify", forbidden)
    monkeypatch.setattr(fxlab.cli.train, "fit_recipe", forbidden)
    monkeypatch.setattr(fxlab.cli.bench, "run_benchmarks", forbidden)


def _argv(argv: list[str], inputs: Path, out: Path) -> list[str]:
    return [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in argv]


@pytest.mark.parametrize("command, argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused(command, argv, message, inputs, out, no_work, capsys, monkeypatch) -> None:
    monkeypatch.chdir(out)
    before, inputs_before = snapshot(out), snapshot(inputs)
    code = run(command, _argv(argv, inputs, out))
    captured = capsys.readouterr()
    check_refused(code, captured.out, captured.err, before, snapshot(out), message)
    assert snapshot(inputs) == inputs_before
    assert not (inputs / "PWNED").exists()


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="/proc is Linux's")
@pytest.mark.parametrize("command, argv", [
    ("apply", ["mymodule", "dce", "-o", "/proc/fxlab-test.pth"]),
    ("show", ["mymodule", "-o", "/proc/fxlab-test.txt"]),
    ("verify", ["{in}/model_state_dict.pth", "--passes", "dce", "--json", "/proc/fxlab-test.json"]),
    ("train", ["--model", "mymodule", "--epochs", "1", "--out", "/proc/fxlab-test.pth"]),
], ids=["apply", "show", "verify", "train"])
def test_output_into_proc_is_refused(command, argv, inputs, out, no_work, capsys) -> None:
    before = snapshot(out)
    code = run(command, _argv(argv, inputs, out))
    captured = capsys.readouterr()
    check_refused(code, captured.out, captured.err, before, snapshot(out), "/proc")
    assert not list(Path("/proc").glob("*fxlab-test*"))


def test_unknown_command_names_it(capsys) -> None:
    code = fxlab_main(["nope"])
    captured = capsys.readouterr()
    check_refused(code, captured.out, captured.err, {}, {}, "'nope'")
    assert "show" in captured.err  # and lists the commands


def test_no_command_prints_usage_on_stderr(capsys) -> None:
    code = fxlab_main([])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith("usage: fxlab") and "show" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["show", "--help"], ["apply", "-h"], ["verify", "--help"],
                                  ["train", "--help"], ["data", "--help"], ["bench", "--help"]])
def test_help_exits_0_on_stdout(argv, capsys) -> None:
    code = fxlab_main(argv)
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "" and "usage:" in captured.out


def test_keyboard_interrupt_is_one_line_and_130(monkeypatch, capsys) -> None:
    import fxlab.cli.data

    def interrupted(root=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(fxlab.cli.data, "resolve_root", interrupted)
    code = run("data", ["where"])
    captured = capsys.readouterr()
    assert code == 130 and captured.err.strip() == "interrupted" and "Traceback" not in captured.err


def test_debug_shows_the_traceback(inputs, capsys) -> None:
    code = run("show", [str(inputs / "text.pth"), "--debug"])
    assert code == 2 and "Traceback" in capsys.readouterr().err


def test_hostile_pickle_never_runs_even_trusted_with_a_model(inputs, out, capsys) -> None:
    before = snapshot(out)
    code = run("show", [str(inputs / "hostile.pth"), "--trust", "--model", "mymodule"])
    captured = capsys.readouterr()
    check_refused(code, captured.out, captured.err, before, snapshot(out))
    assert not (inputs / "PWNED").exists()


def test_onnx_dynamic_int8_over_an_existing_onnx(tmp_path, monkeypatch, capsys) -> None:
    """The old good.onnx survives whatever happens: a new faithful file (exit 0) or the old one (exit 2)."""
    monkeypatch.chdir(tmp_path)
    assert run("apply", ["mymodule", "fuse-linear-relu", "-o", "good.onnx"]) == 0
    old = (tmp_path / "good.onnx").read_bytes()
    capsys.readouterr()
    code = run("apply", ["mymodule", "quantize-linear{mode=dynamic}", "-o", "good.onnx"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert code in (0, 2), (code, captured.err)
    assert (tmp_path / "good.onnx").is_file(), f"good.onnx is gone (exit {code}: {captured.err.strip()})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx"]  # no temporary file left
    if code == 2:
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        assert (tmp_path / "good.onnx").read_bytes() == old
    else:
        import numpy as np
        import onnxruntime

        import fxlab
        from fxlab.models import build

        torch.manual_seed(0)
        gm = fxlab.apply(build("mymodule").eval(), "quantize-linear{mode=dynamic}")
        x = torch.randn(8, 1, 28, 28)
        with torch.no_grad():
            expected = gm(x).numpy()
        session = onnxruntime.InferenceSession(str(tmp_path / "good.onnx"), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert np.abs(got - expected).max() < 0.05


# -- the real entry points, as subprocesses ---------------------------------------------------------


def _python_m(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.mark.parametrize("module, argv, message", [
    ("fxlab.show", ["{in}/nope.pth"], "nope.pth"),
    ("fxlab.apply", ["mymodule", "fusé-linear-relu", "-o", "{out}/existing.pth"], "fus"),
    ("fxlab.show", ["{in}/hostile.pth", "--trust"], "system"),
    ("fxlab.verify", ["{in}/model_state_dict.pth", "--passes", "dce", "--json", "{out}/missing/r.json"], "missing"),
    ("fxlab", ["nope"], "'nope'"),
], ids=["show-missing", "apply-accented", "show-hostile", "verify-json-missing", "fxlab-unknown-command"])
def test_entry_points_refuse_bad_input(module, argv, message, inputs, out) -> None:
    before = snapshot(out)
    proc = _python_m(module, *_argv(argv, inputs, out), cwd=out)
    check_refused(proc.returncode, proc.stdout, proc.stderr, before, snapshot(out), message)
    assert not (inputs / "PWNED").exists()


def test_fxlab_without_arguments_prints_usage_on_stderr(tmp_path) -> None:
    proc = _python_m("fxlab", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith("usage: fxlab"), proc


def test_closed_stdout_is_quiet(tmp_path) -> None:
    """``fxlab show ... | head`` where the reader is gone before fxlab writes: no traceback, no 'Exception ignored'."""
    proc = subprocess.Popen([sys.executable, "-m", "fxlab.show", "mymodule", "--format", "code"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader goes away before the command has imported torch
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and err == "", err
