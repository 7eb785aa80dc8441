"""python -m fxlab.verify --sweep: a TOML file of verify runs, checked first, run in one process or under torchrun."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxlab
from fxlab.cli import run
from fxlab.errors import VerifyError
from fxlab.verification import sweep
from fxlab.verification.sweep import SweepRun, load_sweep, parse_sweep, ranks_from_env, run_one

# cheap runs: no retraining, per-node numerics off, 200 check images
CHEAP = """
[defaults]
retrain_epochs = 0
device = "cpu"
check_images = 200
nodes = false
"""


def main(argv):
    return run("verify", argv)


def write(folder: Path, runs: str, defaults: str = CHEAP, name: str = "sweep.toml") -> Path:
    path = folder / name
    path.write_text(defaults + runs, encoding="utf-8")
    return path


def entry(model: str, passes: str, **extra: object) -> str:
    lines = [f"model = {json.dumps(model)}", f"passes = {json.dumps(passes)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n[[run]]\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory) -> Path:
    """mymodule trained by the session fixture, saved as seed 000 saves it (a bare state dict)."""
    path = tmp_path_factory.mktemp("sweep") / "model_state_dict.pth"
    torch.save(trained["mymodule"].state_dict(), path)
    return path


@pytest.fixture
def no_verify(monkeypatch) -> list:
    """Record (instead of running) every verify a sweep would start."""
    calls: list = []
    monkeypatch.setattr(sweep, "verify", lambda *a, **k: calls.append((a, k)) or pytest.fail("verify ran"))
    return calls


# -- the file is checked before anything runs -------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        (entry("mymodule", "dce") + entry("mymodule", "dce", retrain_epoch=0),
         "run 2: unknown option 'retrain_epoch' (closest: retrain_epochs)"),
        ("[defaults]\ntolerence = 0.1\n" + entry("mymodule", "dce"),
         "[defaults]: unknown option 'tolerence' (closest: tolerance)"),
        (entry("mymodule", "dce") + "[runs]\n", "unknown table 'runs' (closest: run)"),
        (entry("mymodule", "dce") + entry("mymodule", "fuse-linear-relu,insert-rleu{after=layer3}"),
         "run 2: unknown pass 'insert-rleu'"),
        (entry("mymodul", "dce"), "run 1: no model 'mymodul'"),
        (entry("mymodule", "dce", retrain_epochs="0"), "run 1: retrain_epochs must be a number, got '0'"),
        (entry("mymodule", "dce", retrain_epochs=-1), "run 1: retrain_epochs must be ≥ 0"),
        (entry("mymodule", "dce", nodes=1), "run 1: nodes must be true or false"),
        (entry("mymodule", "dce", device="tpu9"), "run 1: 'tpu9' is not a device"),
        (entry("mymodule", "dce", check_images=0), "run 1: check_images must be ≥ 1"),
        ("\n[[run]]\nmodel = \"mymodule\"\n", "run 1: no passes: give passes = ... in the run or in [defaults]"),
        ("[run]\nmodel = \"mymodule\"\npasses = \"dce\"\n", "write each run as a [[run]] table"),
        ("[defaults]\nseed = 1\n", "no runs"),
        ("[[run]\nmodel = 1\n", "not valid TOML"),
    ],
)
def test_bad_sweep_file_exits_2_with_one_line_before_anything_runs(text, message, tmp_path, no_verify, capsys):
    path = write(tmp_path, text, defaults="")
    assert main(["--sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert no_verify == []
    with pytest.raises(VerifyError, match="unknown|no |must|not a device|each run|not valid"):
        load_sweep(path)


def test_every_verify_option_and_only_those_is_a_sweep_key() -> None:
    import inspect

    keys = set(sweep.options())
    assert keys == set(inspect.signature(fxlab.verify).parameters) - {"progress"}
    assert {"model", "passes", "retrain_epochs", "tolerance", "floor", "device", "seed", "data"} <= keys


@pytest.mark.parametrize(
    "args, message",
    [
        (["--passes", "dce"], "--passes does not go with --sweep (every run's options are in the sweep file: put passes"),
        (["--retrain-epochs=0"], "--retrain-epochs does not go with --sweep (every run's options are in the sweep file"),
        (["--plot", "p.png"], "--plot does not go with --sweep (a sweep prints one table and writes --json only)"),
        (["model.pth"], "--sweep takes its models from the file, not model.pth"),
        (["--json", "no/such/folder/out.json"], "folder no/such/folder does not exist"),
        (["--seed", "0", "--sweep", "x.toml"], "--seed does not go with --sweep"),
    ],
)
def test_sweep_command_line_bad_usage_exits_2(args, message, tmp_path, no_verify, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, entry("mymodule", "dce"))
    assert main(["--sweep", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert no_verify == []


def test_passes_is_still_required_without_sweep(capsys) -> None:
    assert main(["--model", "mymodule"]) == 2
    err = capsys.readouterr().err
    assert "--passes" in err and "--sweep" in err and len(err.strip().splitlines()) == 1


def test_defaults_merge_and_paths_are_relative_to_the_sweep_file(tmp_path, monkeypatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.pth").write_bytes(b"")
    path = write(tmp_path, entry("models/m.pth", "dce", tolerance=0.5, data="mnist") + entry("mymodule", "cse"),
                 defaults="[defaults]\ntolerance = 0.25\nretrain_epochs = 0\n")
    monkeypatch.chdir(tmp_path / "models")  # not the file's folder
    first, second = load_sweep(path)
    assert (first.index, first.model, first.passes) == (1, "models/m.pth", "dce")
    assert first.options == {"model": str(tmp_path / "models" / "m.pth"), "passes": "dce", "tolerance": 0.5,
                             "retrain_epochs": 0, "data": str(tmp_path / "mnist"), "name": "models/m.pth"}
    assert second.options == {"model": "mymodule", "passes": "cse", "tolerance": 0.25, "retrain_epochs": 0,
                              "name": "mymodule"}


def test_ranks_come_from_torchrun_environment() -> None:
    assert ranks_from_env({}) == sweep.Ranks(0, 1, 0) and not ranks_from_env({}).distributed
    r = ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (r.rank, r.world_size, r.local_rank, r.distributed) == (3, 4, 1, True)
    with pytest.raises(fxlab.errors.UsageError, match="does not fit"):
        ranks_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_run_that_raises_becomes_a_row_with_its_error(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nmore detail")

    monkeypatch.setattr(sweep, "verify", boom)
    row = run_one(SweepRun(4, "mymodule", "dce", {"model": "mymodule", "passes": "dce"}), rank=1)
    assert (row.index, row.ok, row.rank, row.report) == (4, False, 1, None)
    assert row.error == "RuntimeError: CUDA out of memory" and row.worst_step == "error: RuntimeError: CUDA out of memory"


# -- runs ---------------------------------------------------------------------------------------------------


def test_sweep_runs_every_entry_and_writes_one_report(model_file, mnist_root, tmp_path, monkeypatch, capsys) -> None:
    shutil.copy(model_file, tmp_path / "model.pth")
    runs = (entry("model.pth", "fuse-linear-relu,quantize-linear{mode=dynamic}")
            + entry("model.pth", "insert-activation{after=layer1 fn=sigmoid}", tolerance=0.001))
    path = write(tmp_path, runs)
    out = tmp_path / "sweep.json"
    monkeypatch.chdir(mnist_root)  # the model path is relative to the sweep file, not to here
    code = main(["--sweep", str(path), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    report = json.loads(out.read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert report["format"] == "fxlab.sweep/1" and report["ok"] is False and report["world_size"] == 1
    first, second = report["runs"]
    assert [(r["index"], r["model"], r["rank"], r["ok"], r["error"]) for r in report["runs"]] == [
        (1, "model.pth", 0, True, None), (2, "model.pth", 0, False, None)]
    assert first["passes"] == "fuse-linear-relu,quantize-linear{mode=dynamic}"
    assert [s["pass"] for s in first["report"]["steps"]] == ["fuse-linear-relu", "quantize-linear{mode=dynamic}"]
    # the defaults and the run's own options reached verify
    assert first["report"]["check_images"] == 200 and first["report"]["retrain_epochs"] == 0
    assert first["report"]["tolerance"] == 1e-4 and second["report"]["tolerance"] == 0.001
    assert second["report"]["steps"][0]["ok"] is False and "floor" in second["report"]["steps"][0]["reason"]
    # the row's report is what verify itself says of the same run
    direct = fxlab.verify(model_file, "fuse-linear-relu,quantize-linear{mode=dynamic}", retrain_epochs=0,
                          device="cpu", check_images=200, nodes=False)
    assert first["report"]["baseline"] == direct.to_dict()["baseline"]
    assert [s["accuracy"] for s in first["report"]["steps"]] == [s.accuracy for s in direct.steps]
    # one table row per run, and the summary
    lines = captured.out.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    assert header.split() == ["run", "model", "passes", "rank", "baseline", "final", "worst", "step", "ok"]
    row1 = next(line for line in lines if line.startswith("1 "))
    row2 = next(line for line in lines if line.startswith("2 "))
    baseline = f"{first['report']['baseline']['accuracy']:.2f}%"
    assert baseline in row1 and row1.split()[-1] == "ok"
    assert row2.split()[-1] == "FAIL" and "1 insert-activation{after=layer1 fn=sigmoid}: " in row2
    assert "FAIL: 1 of 2 runs failed (run 2) (1 process" in captured.out and f"wrote {out}" in captured.out
    assert "run 1/2 model.pth fuse-linear-relu,quantize-linear{mode=dynamic}: ok" in captured.err


def test_a_run_that_cannot_run_is_a_row_and_the_others_still_run(model_file, tmp_path, capsys) -> None:
    runs = entry(str(model_file), "insert-relu{after=layer4}") + entry(str(model_file), "dce")
    out = tmp_path / "out.json"
    code = main(["--sweep", str(write(tmp_path, runs)), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    bad, good = json.loads(out.read_text())["runs"]
    assert bad["ok"] is False and bad["report"] is None and "layer4" in bad["error"] and "closest" in bad["error"]
    assert good["ok"] is True and good["error"] is None and good["report"]["ok"] is True
    assert "ERROR" in captured.out and "1 could not run (run 1)" in captured.out


def test_torchrun_shards_the_runs_over_two_processes(model_file, mnist_root, tmp_path) -> None:
    """Four runs on 2 CPU processes (gloo): rank 0 runs 1 and 3, rank 1 runs 2 (which fails) and 4; runs 1
    and 4 retrain (each rank on its own, not as DDP across ranks holding different models); rank 0 prints
    and writes the merged report once, and torchrun fails because rank 0 exits 1."""
    runs = (entry(str(model_file), "insert-activation{after=layer2 fn=gelu},fuse-linear-relu", retrain_epochs=0.02)
            + entry(str(model_file), "insert-activation{after=layer1 fn=sigmoid}")
            + entry(str(model_file), "quantize-linear{mode=dynamic}")
            + entry(str(model_file), "insert-relu{after=layer3}", retrain_epochs=0.02))
    path = write(tmp_path, runs)
    out = tmp_path / "merged.json"
    env = dict(os.environ, FXLAB_DATA=str(mnist_root), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fxlab.verify", "--sweep", str(path), "--json", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and report["ok"] is False
    assert [(r["index"], r["rank"], r["ok"], r["error"]) for r in report["runs"]] == [
        (1, 0, True, None), (2, 1, False, None), (3, 0, True, None), (4, 1, True, None)]
    assert all(r["report"]["format"] == "fxlab.verify/1" for r in report["runs"])
    assert report["runs"][1]["report"]["steps"][0]["pass"] == "insert-activation{after=layer1 fn=sigmoid}"
    for row in (report["runs"][0], report["runs"][3]):  # retrained, on one rank
        assert row["report"]["steps"][0]["retrained_accuracy"] is not None, row["report"]["steps"][0]["reason"]
    assert proc.stdout.count(f"wrote {out}") == 1 and proc.stdout.count("run    model") == 1
    assert "FAIL: 1 of 4 runs failed (run 2) (2 processes" in proc.stdout
    assert "rank 1: run 2/4" in proc.stderr and "rank 1: run 4/4" in proc.stderr and "rank 0: run 3/4" in proc.stderr
    assert re.search(r"exitcode\s*:\s*1\b", proc.stderr)  # the root cause is rank 0's verdict, not a stopped worker


def test_torchrun_with_a_bad_file_exits_on_every_rank_before_any_group(tmp_path) -> None:
    path = write(tmp_path, entry("mymodule", "dce") + entry("mymodule", "dce", retrain_epoch=0))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "fxlab.verify", "--sweep", str(path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and proc.stdout == ""
    line = f"error: {path}: run 2: unknown option 'retrain_epoch' (closest: retrain_epochs)"
    assert proc.stderr.count(line) == 2, proc.stderr  # each rank says it, neither waits for the other
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr  # no worker traceback


def test_a_process_group_made_beforehand_is_refused(monkeypatch, no_verify) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(VerifyError, match="call it before init_process_group"):
        sweep.run_sweep(parse_sweep(entry("mymodule", "dce")))
    assert no_verify == []


def test_library_sweep_in_one_process(model_file, tmp_path) -> None:
    runs = parse_sweep(CHEAP + entry(str(model_file), "dce") + entry(str(model_file), "cse"), base=tmp_path)
    report = sweep.run_sweep(runs)
    assert report.ok and report.world_size == 1 and [r.index for r in report.rows] == [1, 2]
    assert all(r.rank == 0 and r.report["ok"] for r in report.rows)
    assert report.summary().startswith("ok: all 2 runs hold (1 process")
    written = json.loads(report.write_json(tmp_path / "r.json").read_text())
    assert written == json.loads(report.to_json())
