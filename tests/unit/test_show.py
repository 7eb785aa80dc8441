"""fxlab.render and ``python -m fxlab.show`` / ``python -m fxlab.apply``: every format, diffs, the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import io_models
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxlab
from fxlab.models import build
from fxlab.cli import run
from fxlab.passes import QuantizeLinear
from fxlab.rendering import analyze


def show(argv):
    return run("show", argv)

TESTS = Path(__file__).resolve().parent.parent  


def cli(*args: str, cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ARGS`` as the user does (each costs a torch import: keep these few)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def state_dict_file(tmp_path: Path) -> Path:
    path = tmp_path / "model_state_dict.pth"
    torch.save(build("mymodule").state_dict(), path)
    return path


# -- render, the library function ----------------------------------------------------------------


def test_table_of_mymodule_is_golden(golden) -> None:
    golden.check("show/mymodule", fxlab.render(build("mymodule"), "table"))


def test_table_counts_parameters_flops_and_shapes() -> None:
    text = fxlab.render(build("simplenn"))
    assert "fc1: Linear(784→128)" in text and "[1, 128]" in text and "100,480" in text
    assert "200,704" in text  # 2 · 784 · 128
    total = next(line for line in text.splitlines() if line.startswith("total"))
    params = sum(p.numel() for p in build("simplenn").parameters())
    assert f"{params:,}" in total and "12 nodes" in total


@pytest.mark.parametrize("fmt", ["code", "graph", "fx", "json", "dot", "svg", "png"])
def test_every_format(fmt: str) -> None:
    gm = fxlab.trace(build("linear-relu-stack"))
    out = fxlab.render(gm, fmt)
    names = [n.name for n in gm.graph.nodes]
    if fmt == "code":
        assert out.startswith("def forward(self, input") and "self.linear_relu_stack" in out
        compile(out, "<code>", "exec")
    elif fmt == "graph":
        assert out == fxlab.format_graph(gm) + "\n"
    elif fmt == "fx":
        assert out.startswith("graph():") and "call_module[target=linear_relu_stack.0]" in out
    elif fmt == "json":
        doc = json.loads(out)
        assert [n["name"] for n in doc["nodes"]] == names
        assert ["linear_relu_stack_0", "linear_relu_stack_1"] in doc["edges"]
        node = next(n for n in doc["nodes"] if n["name"] == "linear_relu_stack_0")
        assert node["shape"] == [1, 312] and node["dtype"] == "float32" and node["params"] == 784 * 312 + 312
        assert node["flops"] == 2 * 784 * 312 and doc["totals"]["nodes"] == len(names)
    elif fmt == "dot":
        assert out.startswith('digraph "LinearReluStack" {') and '"flatten" -> "linear_relu_stack_0";' in out
    elif fmt == "svg":
        root = ET.fromstring(out.encode())
        assert root.tag.endswith("svg")
        titles = {el.text for el in root.iter() if el.tag.endswith("title")}
        assert set(names) <= titles
    else:
        assert isinstance(out, bytes) and out.startswith(b"\x89PNG\r\n\x1a\n")


def test_diff_shows_added_removed_changed_and_a_unified_diff() -> None:
    model = build("simplenn").eval()
    after = fxlab.apply(model, "fold-batchnorm,remove-dropout,fuse-linear-relu")
    text = fxlab.render(after, diff_against=model)
    assert text.startswith("graph diff: +0 -6 ~3")
    rows = [line.split()[:2] for line in text.splitlines()[3:12]]
    assert ["removed", "bn1"] in rows and ["changed", "fc1"] in rows
    assert "-%bn1 = bn1:BatchNorm1d(128)(%fc1)" in text and "+%fc1 = fc1:LinearReLU(784→128)(%view)" in text
    assert "--- before (graph)" in text and "parameters 109,770 → 109,386" in text
    code = fxlab.render(after, "code", diff_against=model)
    assert "--- before (code)" in code and "-    bn1 = self.bn1(fc1);  fc1 = None" in code
    doc = json.loads(fxlab.render(after, "json", diff_against=model))
    assert doc["diff"]["removed"] == ["bn1", "relu", "dropout", "bn2", "relu_1", "dropout_1"]
    assert {n["name"]: n.get("change") for n in doc["nodes"]}["fc1"] == "changed"
    assert "bn1" in [n["name"] for n in doc["before"]["nodes"]]


def test_svg_diff_colours_the_changed_nodes() -> None:
    model = build("mymodule")
    svg = fxlab.render(fxlab.apply(model, "insert-relu{after=layer3}"), "svg", diff_against=model)
    root = ET.fromstring(svg.encode())
    fills = {}
    for group in root.iter():
        if group.tag.endswith("g") and group.get("class") == "node":
            title = next(el.text for el in group if el.tag.endswith("title"))
            shape = next(el for el in group if el.tag.endswith(("path", "polygon")))
            fills[title] = shape.get("fill")
    assert fills["relu_2"] == "#c6efce" and fills["output"] == "#ffe3a3" and fills["layer1"] == "#dbe9f6"


def test_render_leaves_the_model_as_it_was() -> None:
    model = build("simplenn")  # training mode: BatchNorm would update its statistics
    gm = fxlab.trace(model)
    state = {k: v.clone() for k, v in gm.state_dict().items()}
    metas = [dict(n.meta) for n in gm.graph.nodes]
    fxlab.render(gm, "json")
    assert gm.training and all(m.training for m in gm.modules())
    assert all(torch.equal(v, state[k]) for k, v in gm.state_dict().items())
    assert [dict(n.meta) for n in gm.graph.nodes] == metas


def test_models_that_do_not_take_mnist() -> None:
    small = fxlab.render(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))  # tried on (1, 4) after MNIST
    assert "[1, 3]" in small and "input [1, 4] float32" in small
    conv = fxlab.render(nn.Sequential(nn.Conv2d(3, 2, 3)))
    assert "shape propagation on a [1, 1, 28, 28] float32 batch failed" in conv
    given = fxlab.render(nn.Sequential(nn.Conv2d(3, 2, 3)), example_input=torch.zeros(1, 3, 8, 8))
    assert "[1, 2, 6, 6]" in given


def test_flops_of_matmul_functions() -> None:
    class MatMul(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(784, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.matmul(x.flatten(1), self.w) @ torch.ones(16, 4)

    doc = json.loads(fxlab.render(MatMul(), "json"))
    flops = {n["name"]: n["flops"] for n in doc["nodes"]}
    assert flops["matmul"] == 2 * 784 * 16 and flops["matmul_1"] == 2 * 16 * 4
    assert {n["name"]: n["params"] for n in doc["nodes"]}["w"] == 784 * 16


def test_flops_of_convolutions_are_counted() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    doc = json.loads(fxlab.render(model, "json"))
    flops = {n["name"]: n["flops"] for n in doc["nodes"]}
    conv, linear = 2 * 4 * 26 * 26 * 9, 2 * 4 * 26 * 26 * 10
    assert flops == {"input_1": None, "_0": conv, "_1": None, "_2": linear, "output": None}
    assert doc["totals"]["flops"] == conv + linear


@pytest.mark.parametrize("mode", ["dynamic", "weight-only", "bf16", "static"])
def test_quantized_linears_report_the_flops_of_their_matmul(mode: str) -> None:
    model = build("mymodule").eval()
    fused = fxlab.apply(model, "fuse-linear-relu")
    calibration = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    quantized = fxlab.apply(fused, [QuantizeLinear(mode=mode, calibration=calibration)])
    for x in (None, torch.randn(300, 1, 28, 28)):  # batch 1 (fused kernels) and a big batch (int8 GEMM)
        base = analyze(model, x)
        want = {name: base.by_name[name].flops for name in ("layer1", "layer2", "layer3")}
        assert want["layer1"] == 2 * len(x if x is not None else [0]) * 784 * 128
        for gm in (fused, quantized):
            info = analyze(gm, x)
            assert {name: info.by_name[name].flops for name in want} == want, (mode, gm)
            assert info.flops == base.flops


def test_diff_shows_a_replaced_node_as_one_row() -> None:
    @fxlab.register_pass
    @dataclass
    class ReluToGeluForRender(fxlab.Pass):
        """Put a GELU where the first ReLU was."""

        name = "test-show-relu-to-gelu"
        kind = "changes"

        def call(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
            relu = next(n for n in gm.graph.nodes if n.name == "relu")
            with gm.graph.inserting_after(relu.args[0]):
                gelu = gm.graph.call_function(F.gelu, (relu.args[0],))
            relu.replace_all_uses_with(gelu)
            gm.graph.erase_node(relu)
            gm.recompile()
            return gm

    model = build("mymodule")
    after = fxlab.apply(model, "test-show-relu-to-gelu")
    text = fxlab.render(after, diff_against=model)
    assert text.startswith("graph diff: +0 -0 ~1 =1"), text
    rows = [line.split() for line in text.splitlines()[3:6]]
    assert ["replaced", "relu", "→", "gelu"] == rows[0][:4], text
    assert not any(r[:2] in (["removed", "relu"], ["added", "gelu"]) for r in rows), text
    doc = json.loads(fxlab.render(after, "json", diff_against=model))
    assert doc["diff"]["replaced"][0]["node"] == "gelu" and doc["diff"]["replaced"][0]["replaces"] == ["relu"]
    assert {n["name"]: n.get("change") for n in doc["nodes"]}["gelu"] == "replaced"
    source = fxlab.render(after, "dot", diff_against=model)
    assert '"gelu" [label=' in source and 'fillcolor="#cfe2ff"' in source.split('"gelu" [label=')[1].splitlines()[0]
    assert '"relu" [label=' in source and "dashed" in source.split('"relu" [label=')[1].splitlines()[0]


def test_unknown_format() -> None:
    with pytest.raises(fxlab.ExportError, match="unknown format 'svgg' .closest: svg"):
        fxlab.render(build("mymodule"), "svgg")


def test_missing_graphviz_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(fxlab.ExportError, match="apt-get install graphviz"):
        fxlab.render(build("mymodule"), "svg")


# -- python -m fxlab.show, in process -------------------------------------------------------------


def test_show_a_state_dict(state_dict_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert show([str(state_dict_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {state_dict_file}: state dict, loaded as mymodule\n")
    assert out.endswith(fxlab.render(build("mymodule"), "table"))


def test_show_a_seed_model_by_name_and_passes_diff(capsys: pytest.CaptureFixture[str]) -> None:
    assert show(["mymodule", "--passes", "insert-relu{after=layer3}", "--diff"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph diff: +1 -0 ~1") and "+%relu_2 = torch.relu(%layer3)" in out


def test_show_an_fxlab_model_file_and_its_saved_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gm = fxlab.apply(build("neuralnetwork").eval(), "fuse-linear-relu")
    path = fxlab.save(gm, tmp_path / "fused.pth")
    assert show([str(path), "-f", "graph"]) == 0
    assert capsys.readouterr().out == fxlab.format_graph(gm) + "\n"
    assert show([str(path), "--diff"]) == 0  # the file carries its pipeline: diff against its base
    assert "fc1:LinearReLU(784→50)" in capsys.readouterr().out


def test_show_writes_atomically_and_picks_the_format_from_the_extension(
    state_dict_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "graph.json"
    assert show([str(state_dict_file), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["model"] == "MyModule"
    if shutil.which("dot") is not None:
        assert show([str(state_dict_file), "-o", str(tmp_path / "g.png")]) == 0
        assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    # a rendering that fails writes nothing and leaves an existing file alone
    monkeypatch.setenv("PATH", "")
    (tmp_path / "old.svg").write_text("old")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert show([str(state_dict_file), "-o", str(tmp_path / "old.svg")]) == 2
    assert show([str(state_dict_file), "-o", str(tmp_path / "new.svg")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before and (tmp_path / "old.svg").read_text() == "old"
    assert "dot" in capsys.readouterr().err


def test_show_trusted_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(io_models.NeuralNetwork(), tmp_path / "model.pth")  # seed 004
    assert show([str(tmp_path / "model.pth"), "--trust", "-f", "graph"]) == 0
    assert "%linear_relu_stack_4 = linear_relu_stack.4:Linear(256→10)" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["nope.pth"], "nope.pth: no such file"),
    (["mymodle"], "closest: mymodule"),
    (["mymodule", "--diff"], "--diff needs --passes"),
    (["mymodule", "--passes", "insert-relu{after=layer9}"], "matches no node"),
    (["mymodule", "--passes", "insert-rleu"], "unknown pass 'insert-rleu'"),
    (["mymodule", "--format", "pdf"], "invalid choice: 'pdf'"),
    ([], "name a model file"),
])
def test_show_usage_and_input_errors_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert show(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


# -- the real command lines, as subprocesses ---------------------------------------------------


def test_python_m_fxlab_show_runs_cleanly(state_dict_file: Path) -> None:
    done = cli("fxlab.show", state_dict_file.name, cwd=state_dict_file.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(fxlab.render(build("mymodule"), "table"))
    assert "found in sys.modules" not in done.stderr and done.stderr == ""


def test_python_m_fxlab_show_refuses_pickles(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    torch.save(io_models.MyMNIST(), tmp_path / "mnist.model")
    torch.save({"model_state_dict": io_models.Payload(str(marker))}, tmp_path / "evil.pth")
    for name, message in [("mnist.model", "--trust"), ("evil.pth", "refused")]:
        done = cli("fxlab.show", name, cwd=tmp_path, pythonpath=str(TESTS))
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and message in done.stderr
    assert not marker.exists()


def test_python_m_fxlab_apply(state_dict_file: Path) -> None:
    done = cli("fxlab.apply", state_dict_file.name, "insert-relu{after=layer3},fuse-linear-relu", "-o", "out.pth",
               cwd=state_dict_file.parent)
    assert done.returncode == 0, done.stderr
    assert "found in sys.modules" not in done.stderr
    assert "insert-relu" in done.stdout and "fuse-linear-relu" in done.stdout and "wrote out.pth" in done.stdout
    from fxlab.serialization import load_file

    loaded = load_file(state_dict_file.parent / "out.pth")
    assert loaded.pipeline == "insert-relu{after=layer3},fuse-linear-relu"
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(loaded.model(x), torch.relu(fxlab.load(state_dict_file)(x)))


def test_fxlab_render_is_the_function_after_show_runs() -> None:
    import importlib

    assert run("show", ["mymodule", "--format", "graph"]) == 0
    assert fxlab.render(build("mymodule"), "graph") == importlib.import_module("fxlab.rendering").render(
        build("mymodule"), "graph")


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert show(["missing.pth", "--debug"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_counting_flops_leaves_torch_dynamo_unloaded() -> None:
    """FlopCounterMode would import torch._dynamo (1-2 s) on its first op; `fxlab show` must not pay that."""
    code = ("import sys, fxlab; from fxlab.models import build; text = fxlab.render(build('mymodule'));"
            "print('torch._dynamo' in sys.modules, '218,368 FLOPs' in text)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
