"""The torchao suite's parts that need neither MNIST nor torchao: the missing-torchao report, group sizes, targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxlab import bench
from fxlab.bench import torchao as ao
from fxlab.bench.report import report


def test_missing_torchao_is_reported_not_skipped() -> None:
    cfg = bench.Config.quick_config()
    result = ao.torchao_suite(cfg, torch.device("cpu"), package="fxlab_no_such_torchao")
    assert result["status"].startswith("not run: fxlab_no_such_torchao is not installed")
    assert "pip install 'fxlab[bench]'" in result["status"]
    assert result["rows"] == []
    [target] = result["targets"]
    assert target["met"] is None and target["note"].startswith("not run:")
    text = ao.torchao_tables(result)
    assert text.startswith("torchao comparison: not run: fxlab_no_such_torchao is not installed")


def test_missing_torchao_in_the_report() -> None:
    """A run whose torchao suite did not run still prints every other part, and says why."""
    missing = ao.torchao_suite(bench.Config.quick_config(), torch.device("cpu"), package="fxlab_no_such_torchao")
    result = {"environment": {"fxlab": "0", "torch": "2", "device": "cpu", "cpu": "x", "cpu_count": 2,
                              "torch_threads": 2, "python": "3", "date": "today"},
              "config": {"quick": True}, "torchao": missing, "targets": missing["targets"], "seconds": 1.0,
              "command": "python -m fxlab.bench --quick"}
    text = report(result)
    assert "torchao comparison: not run" in text
    assert "fxlab modes vs torchao" in text and "n/a" in text


def test_import_torchao_names_what_failed() -> None:
    q, why = ao.import_torchao("fxlab_no_such_torchao")
    assert q is None and "No module named 'fxlab_no_such_torchao'" in why


@pytest.mark.parametrize(("features", "wanted", "expected"), [
    ((784, 128, 64), 32, (28, 32, 32)),
    ((128, 50), 32, (32, 25)),
    ((128, 64), 128, (128, 64)),
    ((31,), 16, (1,)),
])
def test_torchao_group_sizes_divide_each_linear(features: tuple[int, ...], wanted: int,
                                                 expected: tuple[int, ...]) -> None:
    model = nn.Sequential(*[nn.Linear(f, 8) for f in features])
    groups = ao.torchao_group_sizes(model, wanted)
    assert list(groups) == [str(i) for i in range(len(features))]
    assert tuple(groups.values()) == expected
    assert all(f % g == 0 and g <= wanted for f, g in zip(features, groups.values()))


def test_pairs_cover_the_modes_and_qat() -> None:
    modes = {p.mode for p in ao.PAIRS}
    assert {"dynamic", "weight-only", "int4", "int8-int4"} <= modes
    assert any(p.qat for p in ao.PAIRS)
    assert {p.label for p in ao.PAIRS if p.latency_target} == {"dynamic", "weight-only", "int4", "int8-int4"}


def _row(pair: str, model: str, fx_acc: float | None, ao_acc: float | None, speedup: float | None) -> dict:
    side = lambda acc: {"status": "ok", "accuracy": acc} if acc is not None else {"status": "not supported on cpu (X)"}
    return {"pair": pair, "model": model, "device": "cpu", "fxlab": side(fx_acc), "torchao": side(ao_acc),
            "latency": {"256": {"fxlab_speedup": speedup}}}


def test_targets_take_the_worst_model_and_say_why_not() -> None:
    rows = [_row("dynamic", "a", 98.0, 97.9, 1.5), _row("dynamic", "b", 97.0, 97.2, 0.8),
            _row("int4", "a", 96.0, None, None), _row("fp8", "a", 97.0, 97.0, 2.0)]
    targets = {(t.target, t.where.split(",")[0]): t for t in ao.torchao_targets(rows)}
    acc = targets[("dynamic accuracy vs torchao", "cpu")]
    assert acc.met is False and acc.measured == pytest.approx(-0.2) and "worst: b" in acc.where
    lat = targets[("dynamic latency vs torchao", "cpu")]
    assert lat.met is False and lat.measured == pytest.approx(0.8)
    int4 = targets[("int4 accuracy vs torchao", "cpu")]
    assert int4.met is None and "torchao: not supported on cpu (X)" in int4.note
    assert targets[("fp8 accuracy vs torchao", "cpu")].met is True  # equal accuracy counts as at least as accurate
    assert ("fp8 latency vs torchao", "cpu") not in targets  # the latency target is for int8 / int4 modes


def test_paired_comparison_counts_the_images_each_alone_gets_right() -> None:
    fx = {"correct": torch.tensor([True, True, False, False, True, True])}
    t = {"correct": torch.tensor([True, False, True, False, False, True])}
    assert ao.paired(fx, t) == {"fxlab_only": 2, "torchao_only": 1, "p": 1.0}
    assert ao.paired(fx, {"status": "not supported on cpu (X)"}) is None
    # McNemar's exact test: the disagreements split as fair coins under "equally accurate"
    assert ao.mcnemar_p(0, 0) == 1.0 and ao.mcnemar_p(3, 3) == 1.0
    assert ao.mcnemar_p(0, 6) == pytest.approx(2 / 64) and ao.mcnemar_p(6, 0) == ao.mcnemar_p(0, 6)
    assert ao.mcnemar_p(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert ao.mcnemar_p(40, 80) < 0.001 < ao.mcnemar_p(45, 55)



def test_accuracy_target_is_judged_on_the_paired_images() -> None:
    """Trailing by a split chance explains meets it; trailing by one it does not, or with no paired figures, does not."""
    def row(model: str, fx: float, t: float, only_fx: int, only_ao: int) -> dict:
        r = _row("int4", model, fx, t, 1.1)
        r["paired"] = {"fxlab_only": only_fx, "torchao_only": only_ao, "p": ao.mcnemar_p(only_fx, only_ao)}
        return r

    [acc, _] = ao.torchao_targets([row("a", 96.73, 96.79, 12, 18), row("b", 98.0, 97.9, 20, 10)])
    assert acc.met is True and acc.measured == pytest.approx(-0.06) and "worst: a" in acc.where
    assert "right only fxlab/torchao 12/18, McNemar p 0.36" in acc.note
    [acc, _] = ao.torchao_targets([row("a", 96.7, 96.9, 15, 35), row("b", 98.0, 97.9, 20, 10)])
    assert acc.met is False and "McNemar p 0.007" in acc.note
    [acc, _] = ao.torchao_targets([_row("int4", "a", 96.73, 96.79, 1.1)])
    assert acc.met is False  # no paired figures: the plain difference decides
    [acc, _] = ao.torchao_targets([row("a", 99.0, 92.0, 700, 0)])
    assert acc.met is True and "McNemar p < 0.0001" in acc.note


def test_fxlab_side_of_a_pair() -> None:
    """A mode this fxlab has is built (fusion, then quantize-linear); one it lacks says so."""
    from fxlab.models import build

    model = build("mymodule").eval()
    probe = torch.randn(4, 1, 28, 28)
    side, group = ao._fxlab_side(ao.Pair("dynamic", "dynamic", ()), model, None, torch.device("cpu"), probe)
    assert side["status"] == "ok" and "quantize-linear{mode=dynamic}" in side["pipeline"]
    assert group == ao.DEFAULT_GROUP_SIZE
    with torch.no_grad():
        assert (side["module"](probe) - model(probe)).abs().max() < 0.1
    side, _ = ao._fxlab_side(ao.Pair("x", "no-such-mode", ()), model, None, torch.device("cpu"), probe)
    assert side["status"] == "not in this fxlab" and "module" not in side
    # QAT: measured where quantize-linear takes qat_epochs, reported as missing where it does not
    import dataclasses

    from fxlab.passes.quantize import QuantizeLinear

    if "qat_epochs" not in {f.name for f in dataclasses.fields(QuantizeLinear)}:
        side, _ = ao._fxlab_side(ao.Pair("q", "dynamic", (), qat=True), model, None, torch.device("cpu"), probe)
        assert side["status"] == "not in this fxlab (no qat_epochs option)"
