"""fxlab.verify and python -m fxlab.verify: every contract checked, and cheating passes caught."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

import fxlab
from fxlab.cli import run
from fxlab.verification import retrain_plan


def main(argv):
    return run("verify", argv)
from fxlab.passes import InsertActivation, InsertRelu

REPO = Path(__file__).resolve().parents[2]

# Small budgets: a fraction of an epoch of fine-tuning is enough to see retraining work.
RETRAIN = 0.05


# -- passes written by a user ------------------------------------------------------------------


@dataclass
class SpellReluFunctionally(fxlab.Pass):
    """An honest exact pass: torch.relu → F.relu (the same function)."""

    kind = "exact"

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is torch.relu:
                node.target = F.relu
        return gm


@dataclass
class SneakyScale(fxlab.Pass):
    """Claims to be exact but scales the logits: argmax is unchanged, the function is not."""

    kind = "exact"
    factor: float = 1.01

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            scaled = gm.graph.call_function(torch.mul, (out.args[0], self.factor))
        out.args = (scaled,)
        return gm


@dataclass
class PerturbWeights(fxlab.Pass):
    """An approximate pass: adds noise of relative size ``scale`` to every Linear weight."""

    kind = "approximate"
    scale: float = 0.01
    declared: float | None = 0.5

    @property
    def budget(self) -> float | None:  # type: ignore[override]
        return self.declared

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in gm.modules():
                if isinstance(m, torch.nn.Linear):
                    noise = torch.randn(m.weight.shape, generator=g).to(m.weight.device)
                    m.weight.add_(noise * self.scale * m.weight.abs().mean())
        return gm


# -- the library -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(trained) -> torch.nn.Module:
    return trained["mymodule"]


def test_exact_pass_holds(model, mnist) -> None:
    report = fxlab.verify(model, [SpellReluFunctionally()], data=mnist, device="cpu")
    assert report.ok, report.table()
    (step,) = report.steps
    assert step.kind == "exact" and step.max_abs_diff == 0.0 and step.agreement == 100.0
    assert step.accuracy == pytest.approx(report.baseline.accuracy)
    assert step.diff.changed and not step.diff.added and not step.diff.removed
    assert "F.relu" in step.after and "torch.relu" in step.before


def test_exact_pass_that_changes_the_function_is_caught(model, mnist) -> None:
    report = fxlab.verify(model, [SpellReluFunctionally(), SneakyScale()], data=mnist, device="cpu")
    assert not report.ok
    honest, sneaky = report.steps
    assert honest.ok
    assert not sneaky.ok and sneaky.agreement == 100.0  # argmax alone would not have caught it
    assert sneaky.max_abs_diff > 1e-4
    assert "max abs diff" in sneaky.reason and "tolerance" in sneaky.reason
    assert "FAIL" in report.table() and "FAIL" in report.summary() and "step 2" in report.summary()
    # and a pass that changes argmax fails on agreement too
    broken = fxlab.verify(model, [SneakyScale(factor=-1.0)], data=mnist, device="cpu")
    assert not broken.ok and "agreement" in broken.steps[0].reason
    assert broken.steps[0].agreement < 50


def test_tolerance_is_the_exact_contract(model, mnist) -> None:
    report = fxlab.verify(model, [SneakyScale(factor=1.0 + 1e-7)], data=mnist, device="cpu", tolerance=1e-4)
    assert report.ok
    assert not fxlab.verify(model, [SneakyScale(factor=1.001)], data=mnist, device="cpu", tolerance=1e-6).ok


def test_approximate_pass_within_and_over_budget(model, mnist) -> None:
    report = fxlab.verify(model, [PerturbWeights(scale=0.01, declared=0.5)], data=mnist, device="cpu")
    (step,) = report.steps
    assert report.ok, step.reason
    assert step.budget == 0.5 and 0 < step.max_abs_diff and "≤ budget 0.5" in step.reason
    assert step.reference_accuracy == report.baseline.accuracy
    over = fxlab.verify(model, [PerturbWeights(scale=3.0, declared=0.1)], data=mnist, device="cpu")
    assert not over.ok
    assert "accuracy drop" in over.steps[0].reason and "> budget 0.1" in over.steps[0].reason
    # no declared budget: held to the floor
    none = fxlab.verify(model, [PerturbWeights(scale=3.0, declared=None)], data=mnist, device="cpu", floor=1.0)
    assert not none.ok and "no budget declared" in none.steps[0].reason


def test_changes_pass_is_retrained_and_later_steps_start_from_it(model, mnist) -> None:
    before = copy.deepcopy(model.state_dict())
    report = fxlab.verify(
        model, [InsertRelu("layer3"), SpellReluFunctionally()], data=mnist, device="cpu", retrain_epochs=RETRAIN
    )
    assert report.ok, report.table()
    relu, exact = report.steps
    assert relu.kind == "changes" and relu.retrained_accuracy is not None
    assert relu.retrained_accuracy >= report.baseline.accuracy - report.floor
    assert relu.delta == pytest.approx(relu.retrained_accuracy - report.baseline.accuracy)
    assert relu.retrain_history and relu.retrain_history[-1]["epoch_fraction"] == pytest.approx(RETRAIN, rel=0.05)
    # the exact step compares with the *retrained* model: identical outputs, same accuracy
    assert exact.max_abs_diff == 0.0 and exact.reference_accuracy == relu.retrained_accuracy
    assert exact.accuracy == pytest.approx(relu.retrained_accuracy)
    # and the final model is the retrained one, with the whole pipeline in it
    assert isinstance(report.model, fx.GraphModule)
    from fxlab.train import evaluate

    assert evaluate(report.model, mnist).accuracy == pytest.approx(exact.accuracy)
    # the caller's model is untouched
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_changes_pass_without_retraining_is_held_to_the_floor(model, mnist) -> None:
    # sigmoid after layer1 squashes the hidden layer: without retraining accuracy collapses
    report = fxlab.verify(model, "insert-activation{after=layer1 fn=sigmoid}", data=mnist, device="cpu",
                          retrain_epochs=0)
    (step,) = report.steps
    assert step.retrained_accuracy is None
    assert not report.ok and "no retraining" in step.reason and "< floor" in step.reason


def test_report_json_schema(model, mnist, tmp_path) -> None:
    report = fxlab.verify(model, [InsertActivation(after="layer2", fn="gelu"), SpellReluFunctionally()],
                          data=mnist, device="cpu", retrain_epochs=RETRAIN)
    data = json.loads(report.to_json())
    assert data["device"] == "cpu" and isinstance(data["ok"], bool) and data["ok"] == report.ok
    assert set(data["baseline"]) >= {"accuracy", "loss"}
    assert 90 < data["baseline"]["accuracy"] <= 100  # percent, not a fraction
    assert len(data["steps"]) == 2
    for s in data["steps"]:
        assert {"pass", "kind", "accuracy", "max_abs_diff", "agreement", "retrained_accuracy", "ok"} <= set(s)
        assert isinstance(s["pass"], str) and s["kind"] in ("exact", "approximate", "changes")
        assert 90 < s["accuracy"] <= 100
        for key in ("max_abs_diff", "agreement", "retrained_accuracy"):
            assert s[key] is None or isinstance(s[key], float)
    gelu, exact = data["steps"]
    assert gelu["pass"] == "insert-activation{after=layer2 fn=gelu}" and gelu["kind"] == "changes"
    assert 90 < gelu["retrained_accuracy"] <= 100 and exact["retrained_accuracy"] is None
    assert gelu["diff"] == {"added": ["gelu"], "removed": [], "changed": ["relu_1"], "replaced": {}}
    assert exact["agreement"] == 100.0
    out = report.write_json(tmp_path / "r.json")
    assert json.loads(out.read_text()) == data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_report_text_table_and_diffs(model, mnist) -> None:
    report = fxlab.verify(model, [InsertRelu("layer3")], data=mnist, device="cpu", retrain_epochs=RETRAIN)
    table = report.table()
    header = table.splitlines()[0]
    for column in ("step", "pass", "kind", "accuracy", "Δ vs baseline", "max abs diff", "agreement", "verdict"):
        assert column in header
    assert "baseline" in table and "insert-relu{after=layer3}" in table
    text = report.text()
    assert "step 1: insert-relu{after=layer3} (changes): nodes 1 added, 0 removed, 1 changed" in text
    assert "--- before" in text and "+++ after" in text
    assert "+%relu_2 = torch.relu(%layer3)" in text and "-return %layer3" in text and "+return %relu_2" in text


def test_plot_writes_a_png(model, mnist, tmp_path) -> None:
    report = fxlab.verify(model, [InsertRelu("layer3"), SneakyScale()], data=mnist, device="cpu",
                          retrain_epochs=RETRAIN)
    path = report.plot(tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_graph_module_input_and_default_device(model, mnist) -> None:
    gm = fxlab.trace(model)
    report = fxlab.verify(gm, [SpellReluFunctionally()], data=mnist)
    from fxlab.train import default_device

    assert report.device == str(default_device())
    assert report.ok
    assert any(n.target is torch.relu for n in gm.graph.nodes)  # not mutated


def test_seed_model_name_uses_the_default_recipe_checkpoint(model, mnist, monkeypatch) -> None:
    import fxlab.train

    calls = []

    def fake_pretrained(name, **kwargs):
        calls.append(name)
        return copy.deepcopy(model)

    monkeypatch.setattr(fxlab.train, "pretrained", fake_pretrained)
    report = fxlab.verify("mymodule", [SpellReluFunctionally()], data=mnist, device="cpu")
    assert calls == ["mymodule"] and report.model_name == "mymodule" and report.ok


def test_bad_input_raises(model, mnist) -> None:
    with pytest.raises(fxlab.VerifyError, match="closest: mymodule"):
        fxlab.verify("mymodul", "dce" if "dce" in fxlab.registered_passes() else [SpellReluFunctionally()], data=mnist)
    with pytest.raises(fxlab.PipelineError):
        fxlab.verify(model, "no-such-pass", data=mnist)
    with pytest.raises(fxlab.PassError, match="layer4"):
        fxlab.verify(model, "insert-relu{after=layer4}", data=mnist, device="cpu")
    with pytest.raises(fxlab.VerifyError):
        fxlab.verify(model, [SpellReluFunctionally()], data=mnist, retrain_epochs=-1)
    for option in ("tolerance", "floor"):
        for value in (-1.0, float("nan"), float("inf")):
            with pytest.raises(fxlab.VerifyError, match=f"{option} must be a finite number"):
                fxlab.verify(model, "dce", data=mnist, **{option: value})


def test_fractional_retraining_plan() -> None:
    assert retrain_plan(1, 60_000, 128) == (1, None)
    assert retrain_plan(2.0, 60_000, 128) == (2, None)
    assert retrain_plan(0.1, 60_000, 128) == (1, 47)
    assert retrain_plan(1.5, 60_000, 128) == (2, 704)


@dataclass
class RespellRelu(fxlab.Pass):
    """An exact pass that replaces each torch.relu node by a new F.relu node (new names: *replaced*)."""

    kind = "exact"

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        for node in list(gm.graph.nodes):
            if node.op == "call_function" and node.target is torch.relu:
                with gm.graph.inserting_after(node):
                    new = gm.graph.call_function(F.relu, node.args)
                node.replace_all_uses_with(new)
                gm.graph.erase_node(node)
        return gm


def test_step_diff_is_the_one_apply_recorded_with_replaced_nodes(model, mnist) -> None:
    report = fxlab.verify(model, [RespellRelu()], data=mnist, device="cpu")
    (step,) = report.steps
    assert report.ok, step.verdict
    assert step.diff is fxlab.records(report.model)[-1].diff  # not recomputed
    assert step.diff.replaced == {"relu_2": ["relu"], "relu_3": ["relu_1"]}
    assert not step.diff.added and not step.diff.removed
    text = step.diff_text()
    assert "0 added, 0 removed, 2 changed, 2 replaced" in text.splitlines()[0]
    assert any(line.split()[:1] == ["replaced"] and "relu → relu_2" in line for line in text.splitlines())
    assert json.loads(report.to_json())["steps"][0]["diff"]["replaced"] == {"relu_2": ["relu"], "relu_3": ["relu_1"]}


class CountingObserver(torch.nn.Module):
    """Passes its input through; counts the images it saw and keeps their largest magnitude."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("peak", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add_(x.shape[0])
        self.peak.copy_(torch.maximum(self.peak, x.detach().abs().max()))
        return x


@dataclass
class ObserveLayer1(fxlab.Pass):
    """A prepare pass: an observer after layer1; the caller feeds it calibration batches."""

    kind = "exact"
    calibrates = True

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        node = next(n for n in gm.graph.nodes if n.target == "layer1")
        gm.add_submodule("observer", CountingObserver())
        with gm.graph.inserting_after(node):
            obs = gm.graph.call_module("observer", (node,))
        node.replace_all_uses_with(obs, delete_user_cb=lambda user: user is not obs)
        return gm


@dataclass
class ReadObserver(fxlab.Pass):
    """A convert pass: removes the observer, remembering what it saw."""

    kind = "exact"
    seen: int = -1
    peak: float = 0.0

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        observer = gm.get_submodule("observer")
        self.seen, self.peak = int(observer.seen), float(observer.peak)
        node = next(n for n in gm.graph.nodes if n.target == "observer")
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        gm.delete_submodule("observer")
        return gm


def test_calibrating_pass_is_fed_training_batches_before_the_next_step(model, mnist) -> None:
    convert = ReadObserver()
    report = fxlab.verify(model, [ObserveLayer1(), convert], data=mnist, device="cpu")
    assert report.ok, report.table()
    # exactly the calibration images (the first CHECK_IMAGES training images), never the test images
    assert convert.seen == fxlab.verification.CHECK_IMAGES
    with torch.no_grad():
        images = torch.flatten(mnist.train.batch(slice(0, convert.seen))[0], 1)
        expected = float(fxlab.trace(model).layer1(images).abs().max())
    assert convert.peak == pytest.approx(expected)


def test_contracts_are_registered_by_kind(model, mnist) -> None:
    from fxlab.verification import CONTRACTS, Verdict, register_contract

    assert {"exact", "approximate", "changes"} <= set(CONTRACTS)

    @dataclass
    class Audited(SpellReluFunctionally):
        kind = "audited"

    unknown = fxlab.verify(model, [Audited()], data=mnist, device="cpu")
    assert not unknown.ok and "unknown kind 'audited'" in unknown.steps[0].reason
    try:
        @register_contract("audited")
        def audited(check) -> Verdict:
            return Verdict(check.max_abs_diff == 0.0, "audited: outputs identical")

        report = fxlab.verify(model, [Audited()], data=mnist, device="cpu")
        assert report.ok and report.steps[0].reason == "audited: outputs identical"
    finally:
        CONTRACTS.pop("audited", None)


# -- fxlab.verify is the function; python -m fxlab.verify the command ----------------------------


def test_verify_is_the_function_not_the_module() -> None:
    assert callable(fxlab.verify) and fxlab.verify.__module__.startswith("fxlab.verification")
    from fxlab import verify

    assert verify is fxlab.verify
    import importlib

    with pytest.raises(ImportError, match="is the function"):
        importlib.import_module("fxlab.verify")
    assert callable(fxlab.verify) and "fxlab.verify" not in sys.modules


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    """The trained model as seed 000 saves it: a bare state dict."""
    path = tmp_path_factory.mktemp("verify") / "model_state_dict.pth"
    torch.save(model.state_dict(), path)
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "fxlab.verify", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_cli_end_to_end(model_file, mnist_root, tmp_path) -> None:
    out_json, out_png = tmp_path / "report.json", tmp_path / "report.png"
    proc = _run(str(model_file), "--passes", "insert-relu{after=layer3}", "--data", str(mnist_root),
                "--retrain-epochs", str(RETRAIN), "--device", "cpu", "--json", str(out_json), "--plot", str(out_png))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RuntimeWarning" not in proc.stderr and "sys.modules" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:1] == ["step"] and "verdict" in line for line in lines)
    assert "insert-relu{after=layer3}" in proc.stdout and "--- before" in proc.stdout
    report = json.loads(out_json.read_text())
    assert report["ok"] is True and report["device"] == "cpu" and report["steps"][0]["retrained_accuracy"] > 90
    assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_exit_1_when_a_contract_fails(model_file, mnist_root, tmp_path, capsys) -> None:
    out_json = tmp_path / "fail.json"
    code = main([str(model_file), "--passes", "insert-activation{after=layer1 fn=sigmoid}", "--data", str(mnist_root),
                 "--retrain-epochs", "0", "--device", "cpu", "--json", str(out_json), "--no-diff"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "--- before" not in out
    assert json.loads(out_json.read_text())["ok"] is False


@pytest.mark.parametrize(
    "args, message",
    [
        (["--passes", "insert-relu{after=layer3}"], "give a model FILE or --model NAME"),
        (["--model", "mymodul", "--passes", "insert-relu{after=layer3}"], "closest: mymodule"),
        (["no/such/file.pth", "--passes", "insert-relu{after=layer3}"], "no such file"),
        (["--model", "mymodule", "--passes", "insert-rleu{after=layer3}"], "unknown pass 'insert-rleu'"),
        (["--model", "mymodule"], "--passes"),
        (["--model", "mymodule", "--passes", "dce", "--device", "tpu9"], "device"),
        (["--model", "mymodule", "--passes", "dce", "--retrain-epochs", "-1"], "--retrain-epochs"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, message, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_bad_selector_exits_2(model_file, mnist_root, capsys) -> None:
    code = main([str(model_file), "--passes", "insert-relu{after=layer4}", "--data", str(mnist_root),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "layer4" in err and "closest" in err and len(err.strip().splitlines()) == 1


def test_fxlab_script_dispatches_verify(capsys) -> None:
    from fxlab.cli import main as fxlab_main

    assert fxlab_main(["verify", "--passes", "insert-relu{after=layer3}"]) == 2
    assert "give a model FILE" in capsys.readouterr().err


def test_changes_step_after_full_quantization_is_judged_without_retraining(model, mnist) -> None:
    report = fxlab.verify(model, "quantize-linear{mode=weight-only},insert-relu{after=layer3}", data=mnist,
                          device="cpu", retrain_epochs=RETRAIN)
    quantized, relu = report.steps
    assert quantized.kind == "approximate" and quantized.budget == 0.3 and quantized.ok, quantized.reason
    assert relu.retrained_accuracy is None and "not retrained: no trainable parameters" in relu.reason
    assert report.ok == relu.ok


def test_static_quantization_from_text_is_calibrated_on_mnist(model, mnist) -> None:
    report = fxlab.verify(model, "quantize-linear{mode=static}", data=mnist, device="cpu")
    (step,) = report.steps
    assert report.ok, step.verdict
    assert step.pass_text == "quantize-linear{mode=static}" and "Int8StaticLinear" in step.after


def test_cli_pickled_module_needs_trust(model, mnist_root, tmp_path, capsys) -> None:
    path = tmp_path / "mnist.model"
    torch.save(model, path)  # seeds 003/004 save the whole module
    assert main([str(path), "--passes", "dce", "--data", str(mnist_root), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--trust" in err and len(err.strip().splitlines()) == 1
    assert main([str(path), "--passes", "dce", "--data", str(mnist_root), "--device", "cpu", "--trust", "--no-diff"]) == 0
    assert "ok: the contract holds" in capsys.readouterr().out


# -- NaN / inf, and models that do not take MNIST input -----------------------------------------


@dataclass
class PoisonWeight(fxlab.Pass):
    """An approximate pass gone wrong: one weight becomes NaN, so every output is NaN."""

    kind = "approximate"

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        with torch.no_grad():
            gm.layer2.weight[0, 0] = float("nan")
        return gm


def test_step_with_nan_outputs_says_so(model, mnist) -> None:
    report = fxlab.verify(model, [PoisonWeight()], data=mnist, device="cpu")
    (step,) = report.steps
    assert not report.ok and step.nonfinite_outputs == "NaN"
    assert step.verdict.startswith("FAIL: outputs contain NaN")
    assert "outputs contain NaN/inf after step 1" in report.summary()
    data = json.loads(report.to_json())
    assert data["steps"][0]["nonfinite_outputs"] == "NaN" and data["baseline"]["nonfinite_parameters"] == []


def test_input_model_with_nan_parameters_is_reported_as_such(model, mnist) -> None:
    poisoned = copy.deepcopy(model)
    with torch.no_grad():
        poisoned.layer2.weight[0, :3] = float("nan")
    report = fxlab.verify(poisoned, "dce", data=mnist, device="cpu")
    assert not report.ok
    assert report.baseline.nonfinite_parameters == ["layer2.weight: 3 NaN values"]
    assert report.summary().startswith("FAIL: the input model is not finite: its parameters hold NaN/inf "
                                       "(layer2.weight: 3 NaN values)")
    assert "NOT FINITE" in report.table() and report.steps[0].verdict.startswith("FAIL: outputs contain NaN")
    data = json.loads(report.to_json())
    assert data["baseline"]["nonfinite_parameters"] == ["layer2.weight: 3 NaN values"]
    assert data["baseline"]["nonfinite_outputs"] == "NaN" and data["ok"] is False
    with pytest.raises(fxlab.PassError, match=r"layer2: weight has 3 NaN values; quantizing it would make its scales NaN"):
        fxlab.verify(poisoned, "quantize-linear{mode=dynamic}", data=mnist, device="cpu")


@pytest.fixture
def wide_input_file(tmp_path) -> Path:
    path = tmp_path / "wide.pth"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(700, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    torch.save(net.state_dict(), path)
    return path


WIDE_MESSAGE = ("does not take MNIST input: verify feeds (N, 1, 28, 28) MNIST images (784 values each), "
                "but its first Linear takes 700 input features")


def test_model_that_does_not_take_mnist_input_is_refused_in_one_line(wide_input_file, mnist) -> None:
    with pytest.raises(fxlab.VerifyError) as info:
        fxlab.verify(wide_input_file, "dce", data=mnist, device="cpu")
    assert WIDE_MESSAGE in str(info.value) and "\n" not in str(info.value)


def test_cli_model_that_does_not_take_mnist_input_exits_2(wide_input_file, mnist_root, capsys) -> None:
    code = run("verify", [str(wide_input_file), "--passes", "dce", "--data", str(mnist_root)])
    err = capsys.readouterr().err
    assert code == 2 and WIDE_MESSAGE in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and err.startswith("error: ")
