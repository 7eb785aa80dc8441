"""Verification that explains: per-node numerics, site records in the report, and bisection."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

import fxlab
from fxlab.bench.explain import CopyLinears as BenchCopyLinears
from fxlab.cli import run
from fxlab.models import build
from fxlab.verification import verification_bound


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """mymodule with seeded random weights: exact contracts need no training."""
    torch.manual_seed(0)
    return build("mymodule").eval()


@dataclass
class PerturbLayer2(fxlab.Pass):
    """Claims exact, but adds 1e-2 to layer2.weight."""

    kind = "exact"

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        with torch.no_grad():
            gm.get_submodule("layer2").weight.add_(1e-2)
        return gm


@dataclass
class SpellRelu(fxlab.Pass):
    """An honest exact user pass that reports no sites: torch.relu → F.relu."""

    kind = "exact"

    def call(self, gm: fx.GraphModule) -> fx.GraphModule:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is torch.relu:
                node.target = F.relu
        return gm


@fxlab.register_pass
@dataclass
class CopyLinears(BenchCopyLinears):
    """The bench's lying exact pass (a copy of every Linear, one site each; the ``bad``-th copy's
    weights perturbed by 1e-2), registered for pipeline text."""

    name = "test-copy-linears"


# -- per-node numerics ----------------------------------------------------------------------------


def test_lying_exact_pass_first_divergence_is_layer2(model, mnist) -> None:
    report = fxlab.verify(model, [PerturbLayer2()], data=mnist, device="cpu", retrain_epochs=0)
    step = report.steps[0]
    assert not step.ok and step.first_divergence == "layer2"
    names = [r["name"] for r in step.nodes]
    assert names == ["flatten", "layer1", "relu", "layer2", "relu_1", "layer3"]
    for r in step.nodes[:3]:
        assert r["max_abs_diff"] == 0 and r["rel_error"] == 0 and r["sqnr_db"] is None  # identical: SQNR inf
    layer2 = step.nodes[3]
    assert layer2["max_abs_diff"] > 1e-4 and layer2["rel_error"] > 0 and math.isfinite(layer2["sqnr_db"])
    assert "first divergence: layer2" in step.verdict and "first divergence: layer2" in report.table()
    data = json.loads(report.to_json())["steps"][0]
    assert data["first_divergence"] == "layer2"
    assert set(data["nodes"][0]) >= {"name", "max_abs_diff", "rel_error", "sqnr_db"}
    text = report.text(nodes=True)
    assert "per-node numerics" in text and "◀ first divergence" in text


def test_fused_node_is_compared_with_the_relu_it_absorbed(model, mnist) -> None:
    report = fxlab.verify(model, "insert-relu{after=layer2},fuse-linear-relu", data=mnist, device="cpu",
                          retrain_epochs=0, floor=100)
    fused = report.steps[1]
    assert fused.ok and fused.first_divergence is None
    pairs = {r["name"]: r["counterpart"] for r in fused.nodes}
    assert pairs["layer1"] == "relu" and pairs["layer2"] == "relu_2"  # relu_2: the ReLU inserted by step 1
    assert all(r["max_abs_diff"] <= 1e-5 for r in fused.nodes)
    inserted = report.steps[0]
    assert "relu_2" not in {r["name"] for r in inserted.nodes}  # stands for nothing: skipped
    assert inserted.first_divergence is None  # relu(relu(x)) == relu(x): no node differs


def test_nodes_can_be_switched_off(model, mnist) -> None:
    report = fxlab.verify(model, [PerturbLayer2()], data=mnist, device="cpu", nodes=False)
    assert report.steps[0].nodes is None and report.steps[0].first_divergence is None
    assert json.loads(report.to_json())["steps"][0]["nodes"] is None


# -- site records -------------------------------------------------------------------------------


def test_site_records_in_the_report(model, mnist) -> None:
    report = fxlab.verify(model, [fxlab.get_pass("insert-relu")("layer3"), SpellRelu()], data=mnist,
                          device="cpu", retrain_epochs=0, floor=100)
    inserted, user = report.steps
    assert inserted.rewritten == ["layer3"] and inserted.skipped == []
    assert user.rewritten is None and user.skipped is None  # a user pass without site records: unknown
    data = json.loads(report.to_json())["steps"]
    assert data[0]["rewritten"] == ["layer3"] and data[0]["skipped"] == []
    assert data[1]["rewritten"] is None and data[1]["skipped"] is None
    table = report.table()
    assert "1 rewritten, 0 left alone" in table and "unknown" in table
    assert "rewrote: layer3" in report.diffs() and "sites: unknown" in report.diffs()


def test_insert_activation_honours_the_limit(model) -> None:
    gm = fxlab.apply(model, "insert-activation{after=layer* fn=relu}", limit=1)
    record = fxlab.records(gm)[-1]
    assert record.rewritten == ["layer1"]
    assert [node for node, _ in record.skipped] == ["layer2", "layer3"]
    assert "insert-activation: layer2: beyond limit=1" in fxlab.records(gm).table()


def test_show_passes_prints_the_records_on_stderr(tmp_path, capsys) -> None:
    assert run("show", ["mymodule", "--passes", "insert-relu{after=layer3}"]) == 0
    captured = capsys.readouterr()
    assert "1 rewritten, 0 left alone" in captured.err and "insert-relu" in captured.err
    assert "rewritten" not in captured.out


# -- bisection ----------------------------------------------------------------------------------


def test_bisect_names_the_lying_step_and_its_second_site(model, mnist) -> None:
    pipeline = "test-copy-linears,test-copy-linears,test-copy-linears{bad=2},test-copy-linears"
    result = fxlab.bisect(model, pipeline, data=mnist, device="cpu", retrain_epochs=0)
    assert not result.ok and result.step == 2 and result.pass_text == "test-copy-linears{bad=2}"
    assert result.site == "layer2" and result.site_index == 2 and result.sites == 3
    # bound: whole pipeline + ceil(log2 4) + the culprit alone + ceil(log2 3) = 6
    assert result.bound == verification_bound(4, 3) == 6
    assert result.verifications <= result.bound
    assert result.culprit.first_divergence == "layer2"
    text = result.text()
    assert "site: layer2 (rewrite 2 of 3)" in text and "before: %layer2 = layer2:Linear(128→64)(%relu)" in text


def test_bisect_of_a_passing_pipeline_says_so(model, mnist) -> None:
    result = fxlab.bisect(model, "test-copy-linears,fuse-linear-relu", data=mnist, device="cpu", retrain_epochs=0)
    assert result.ok and result.step is None and result.site is None and result.verifications == 1


def test_bisect_of_a_pass_without_site_records(model, mnist) -> None:
    result = fxlab.bisect(model, [SpellRelu(), PerturbLayer2()], data=mnist, device="cpu", retrain_epochs=0)
    assert result.step == 1 and result.site is None and "no site records" in result.note


@pytest.mark.parametrize("steps", [8, 16])
def test_bisect_is_logarithmic(model, mnist, steps) -> None:
    bad = steps * 2 // 3
    pipeline = [CopyLinears(bad=2 if i == bad else 0) for i in range(steps)]
    result = fxlab.bisect(model, pipeline, data=mnist, device="cpu", retrain_epochs=0, nodes=False)
    assert result.step == bad and result.site == "layer2"
    assert result.verifications <= math.ceil(math.log2(steps)) + math.ceil(math.log2(3)) + 2


def test_cli_bisect_exit_codes(model, mnist_root, tmp_path, capsys) -> None:
    path = tmp_path / "model_state_dict.pth"
    torch.save(model.state_dict(), path)
    common = [str(path), "--data", str(mnist_root), "--retrain-epochs", "0", "--device", "cpu"]
    out_json = tmp_path / "bisect.json"
    code = run("bisect", [*common, "--passes", "test-copy-linears,test-copy-linears{bad=2}", "--nodes",
                          "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "culprit: step 1" in out and "site: layer2" in out and "verifications" in out
    assert "per-node numerics" in out
    data = json.loads(out_json.read_text())
    assert data["step"] == 1 and data["site"] == "layer2" and data["verifications"] <= data["bound"]
    assert run("bisect", [*common, "--passes", "test-copy-linears"]) == 0
    assert "ok: the whole pipeline" in capsys.readouterr().out


def test_bisect_is_the_function_not_the_module() -> None:
    assert callable(fxlab.bisect) and fxlab.bisect.__module__ == "fxlab.verification.bisection"
    import importlib

    with pytest.raises(ImportError, match="python -m fxlab.bisect"):
        importlib.import_module("fxlab.bisect")
    assert callable(fxlab.bisect)
