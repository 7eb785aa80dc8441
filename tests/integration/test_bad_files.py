"""Bad files and places a user names: each answers exit 2 and one line that says why, never a traceback.

A data root that is a file or cannot be created, a tampered fxlab model file, weights that hold no
data (meta) or are sparse, a user class whose constructor raises, and a JSON file that only looks like
a saved benchmark run. Most cases run in process through ``fxlab.cli.run`` (the runner every entry
point uses); one runs ``python -m fxlab.data`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxlab
from fxlab.cli import run
from fxlab.data import fetch
from fxlab.errors import DataError, LoadError
from fxlab.models import build


def check_one_line(code: int, out: str, err: str, *pieces: str) -> str:
    """Exit 2, one ``error:`` line on stderr holding every piece, no traceback; returns that line."""
    assert "Traceback" not in out + err, out + err
    assert code == 2, (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for piece in pieces:
        assert piece.lower() in lines[0].lower(), (piece, lines[0])
    return lines[0]


def run_cli(capsys, command: str, *argv: str) -> tuple[int, str, str]:
    code = run(command, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """An existing file (a state dict), to be named where a folder is wanted."""
    path = tmp_path / "sd.pth"
    torch.save(build("mymodule").state_dict(), path)
    return path


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt fails the test: a bad data root must be refused before one."""
    import fxlab.data.download

    def forbidden(tmp: Path) -> dict[str, bytes]:
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(fxlab.data.download, "SOURCES", (("forbidden", forbidden),))


# -- 1. a data root that is a file, or a place no folder can be made ----------------------------------


def test_fetch_into_a_file_raises_data_error(a_file, no_download) -> None:
    with pytest.raises(DataError, match=r"cannot create MNIST folder .*sd\.pth.*: Not a directory"):
        fetch(a_file)


@pytest.mark.parametrize("command, argv", [
    ("data", ["fetch", "--root", "{file}"]),
    ("verify", ["{file}", "--passes", "dce", "--data", "{file}", "--retrain-epochs", "0"]),
    ("train", ["--model", "mymodule", "--out", "{dir}/x3.pth", "--data", "{file}", "--epochs", "1",
               "--max-steps", "1"]),
], ids=["data-fetch", "verify", "train"])
def test_data_root_that_is_a_file_is_refused(command, argv, a_file, no_download, capsys) -> None:
    argv = [a.replace("{file}", str(a_file)).replace("{dir}", str(a_file.parent)) for a in argv]
    code, out, err = run_cli(capsys, command, *argv)
    check_one_line(code, out, err, "cannot create MNIST folder", "Not a directory", str(a_file))
    assert sorted(p.name for p in a_file.parent.iterdir()) == ["sd.pth"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="/proc is Linux's")
def test_data_root_where_no_folder_can_be_made_is_refused(no_download, capsys) -> None:
    code, out, err = run_cli(capsys, "data", "fetch", "--root", "/proc/fxlab-test")
    check_one_line(code, out, err, "cannot create MNIST folder /proc/fxlab-test")


def test_python_m_fxlab_data_fetch_into_a_file(a_file) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "fxlab.data", "fetch", "--root", str(a_file)], capture_output=True,
                          text=True, cwd=a_file.parent, env=env, timeout=120)
    check_one_line(proc.returncode, proc.stdout, proc.stderr, "cannot create MNIST folder", "Not a directory")


# -- 2. a tampered fxlab model file ------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_record(tmp_path_factory) -> dict:
    """What fxlab.save writes, as torch.load reads it back."""
    path = tmp_path_factory.mktemp("saved") / "good.pth"
    fxlab.save(fxlab.apply(build("mymodule"), "insert-relu{after=layer3}"), path)
    return torch.load(path, weights_only=True)


def tampered(record: dict, path: Path, **changes) -> Path:
    """``record`` with fields changed (a value of ``...`` deletes the field), saved to ``path``."""
    record = {**record, **changes}
    record = {k: v for k, v in record.items() if v is not ...}
    torch.save(record, path)
    return path


@pytest.mark.parametrize("field, value, pieces", [
    ("kwargs", "garbage", ["kwargs", "str"]),
    ("arch", 5, ["arch", "int"]),
    ("pipeline", 5, ["pipeline", "int"]),
    ("training", "yes", ["training", "str"]),
    ("dtype", "int8", ["dtype", "float"]),
    ("state_dict", {"layer1.weight": "x"}, ["state_dict", "layer1.weight"]),
    ("format", 5, ["format", "int"]),
    ("arch", ..., ["arch", "missing"]),
], ids=["kwargs-str", "arch-int", "pipeline-int", "training-str", "dtype-int8", "state-dict-entry", "format-int",
        "arch-missing"])
def test_tampered_model_file_is_refused(field, value, pieces, saved_record, tmp_path, capsys) -> None:
    path = tampered(saved_record, tmp_path / "tampered.pth", **{field: value})
    with pytest.raises(LoadError, match="not a valid fxlab model file") as info:
        fxlab.load(path)
    assert "\n" not in str(info.value)
    code, out, err = run_cli(capsys, "show", str(path))
    check_one_line(code, out, err, "not a valid fxlab model file", *pieces)


def test_model_file_of_a_newer_format_is_refused(saved_record, tmp_path, capsys) -> None:
    path = tampered(saved_record, tmp_path / "future.pth", format="fxlab.model/99")
    with pytest.raises(LoadError, match=r"newer fxlab format \(fxlab.model/99\); this fxlab reads fxlab.model/1"):
        fxlab.load(path)
    code, out, err = run_cli(capsys, "show", str(path))
    check_one_line(code, out, err, "newer", "fxlab.model/1")


# -- 3. weights that cannot be copied into a model: the reason, not torch's heading --------------------


@pytest.mark.parametrize("convert, pieces", [
    (lambda t: t.to("meta"), ["layer1.weight", "meta tensors hold no data"]),
    (lambda t: t.to_sparse(), ["layer1.weight", "sparse"]),
], ids=["meta", "sparse"])
def test_weights_without_dense_data_say_why(convert, pieces, tmp_path, capsys) -> None:
    path = tmp_path / "sd.pth"
    torch.save({k: convert(v) for k, v in build("mymodule").state_dict().items()}, path)
    code, out, err = run_cli(capsys, "show", str(path))
    line = check_one_line(code, out, err, "do not fit model 'mymodule'", *pieces)
    assert not line.rstrip().endswith(":"), line


# -- 4. a user class whose constructor raises --------------------------------------------------------

NETS = '''
from torch import nn


class Bad(nn.Module):
    def __init__(self, width=3):
        super().__init__()
        if width < 0:
            raise ValueError(f"width must be positive, got {width}\\nsee the docs")
        self.fc = nn.Linear(width, 2)
'''


def test_constructor_that_raises_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "nets.py").write_text(NETS, encoding="utf-8")
    weights = tmp_path / "bad_sd.pth"
    torch.save({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}, weights)
    code, out, err = run_cli(capsys, "show", str(weights), "--model", f"{tmp_path}/nets.py:Bad",
                             "--model-args", '{"width": -1}')
    check_one_line(code, out, err, "nets.py:Bad", "ValueError: width must be positive, got -1")


# -- 5. a JSON file that only looks like a saved benchmark run ---------------------------------------


ENVIRONMENT = {"fxlab": "0.1.0", "torch": "2.4", "device": "cpu", "cpu": "x86", "cpu_count": 2, "torch_threads": 2,
               "python": "3.11", "date": "today"}


@pytest.mark.parametrize("run_json, pieces", [
    ({"environment": {}, "config": {}, "targets": [], "seconds": 1}, ["environment", "'fxlab'"]),
    ({"environment": ENVIRONMENT, "config": {"quick": True}, "command": "python -m fxlab.bench", "targets": [5],
      "seconds": 1}, ["targets"]),
    ({}, ["environment"]),
    ([], ["array"]),
], ids=["empty-environment", "target-not-an-object", "empty-object", "list"])
def test_bench_load_of_a_run_it_cannot_render(run_json, pieces, tmp_path, capsys) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(run_json), encoding="utf-8")
    code, out, err = run_cli(capsys, "bench", "--load", str(path))
    check_one_line(code, out, err, "p.json is not a saved benchmark run (", *pieces)
