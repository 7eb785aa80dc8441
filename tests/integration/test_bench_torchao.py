"""fxlab's quantization modes next to torchao's nearest configs (``--suite torchao --quick``): one trained seed
model, real MNIST accuracies, state-dict bytes and side-by-side latency ratios. torchao is part of the
``test`` extra, so it is here; the suite's report without it is tested in tests/unit/test_torchao_report.py."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from fxlab import bench
from fxlab.bench import torchao as ao
from fxlab.passes.quantize.configs import MODES


@pytest.fixture(scope="module")
def suite(mnist_root: Path) -> dict[str, Any]:
    q, why = ao.import_torchao()
    assert q is not None, f"torchao is in the test extra (pip install -e '.[test]'): {why}"
    return ao.torchao_suite(bench.Config.quick_config(data=str(mnist_root)), torch.device("cpu"))


def positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_every_pair_is_a_row(suite: dict[str, Any]) -> None:
    assert suite["status"] == "ok" and suite["models"] == ["mymodule"] and suite["devices"] == ["cpu"]
    rows = {r["pair"]: r for r in suite["rows"]}
    assert set(rows) == {p.label for p in ao.PAIRS}
    for pair in ao.PAIRS:
        r = rows[pair.label]
        fx, t = r["fxlab"], r["torchao"]
        if pair.mode not in MODES:
            assert fx["status"] == "not in this fxlab"
        elif pair.qat and fx["status"] != "ok":
            assert fx["status"].startswith("not in this fxlab")
        else:
            assert fx["status"] == "ok", fx
        assert t["status"] == "ok" or t["status"].startswith("not supported on cpu ("), t
        for side in (fx, t):
            if side["status"] == "ok":
                assert 0 < side["accuracy"] <= 100 and positive(side["state_dict_bytes"])
                assert "correct" not in side and "module" not in side  # JSON only
        if fx["status"] == t["status"] == "ok":  # the paired counts are the accuracies' difference, image by image
            p = r["paired"]
            assert (p["fxlab_only"] - p["torchao_only"]) / 100 == pytest.approx(fx["accuracy"] - t["accuracy"])
            assert 0 < p["p"] <= 1
        else:
            assert r["paired"] is None
        for b in ("1", "256"):
            lat = r["latency"][b]
            for side, timing in (("fxlab", lat["fxlab"]), ("torchao", lat["torchao"])):
                if r[side]["status"] == "ok":
                    assert timing["status"] == "ok" and positive(timing["median_s"]) and timing["rounds"] >= 3
            both = r["fxlab"]["status"] == r["torchao"]["status"] == "ok"
            assert (lat["fxlab_speedup"] is not None) == both
            if both:
                per_round = [a / b for a, b in zip(lat["torchao"]["samples_s"], lat["fxlab"]["samples_s"])]
                assert len(per_round) == lat["fxlab"]["rounds"]  # the same rounds, paired
                assert lat["fxlab_speedup"] == pytest.approx(statistics.median(per_round))


def test_accuracy_is_evaluates_count(suite: dict[str, Any], mnist) -> None:
    """The suite counts right images itself (for the paired test); its accuracy is evaluate's."""
    import dataclasses

    from fxlab.train import evaluate, pretrained, recipe_for

    model = pretrained("mymodule", data=mnist, recipe=dataclasses.replace(recipe_for("mymodule"), epochs=1),
                       device="cpu", progress=False)
    [base] = suite["baselines"]
    assert base["accuracy"] == evaluate(model, mnist).accuracy
    correct = ao._correct(model, mnist, torch.device("cpu"))
    assert correct.shape == (10_000,) and 100.0 * int(correct.sum()) / 10_000 == base["accuracy"]


def test_int8_pairs_are_accurate_and_small(suite: dict[str, Any]) -> None:
    [base] = suite["baselines"]
    assert base["accuracy"] > 90 and positive(base["latency"]["256"]["median_s"])
    rows = {r["pair"]: r for r in suite["rows"]}
    for pair in ("dynamic", "weight-only"):
        for side in ("fxlab", "torchao"):
            s = rows[pair][side]
            assert s["status"] == "ok", s
            assert s["accuracy"] > 90 and abs(s["accuracy"] - base["accuracy"]) < 1.0
            assert s["state_dict_bytes"] < 0.4 * base["state_dict_bytes"]  # int8 weights: about a quarter
        assert rows[pair]["torchao"]["left_float"] == 0


def test_grouped_configs_use_whole_groups(suite: dict[str, Any]) -> None:
    """784 inputs do not split into groups of 32: torchao gets 28 there, and quantizes every Linear."""
    r = next(r for r in suite["rows"] if r["pair"] == "int8-int4")
    assert r["group_sizes"] == {"layer1": 28, "layer2": 32, "layer3": 32}
    assert "group_size=28/32/32" in r["torchao"]["config"]
    if r["torchao"]["status"] == "ok":
        assert r["torchao"]["left_float"] == 0
        assert r["torchao"]["accuracy"] > 90


def test_targets_and_tables(suite: dict[str, Any]) -> None:
    targets = suite["targets"]
    names = {t["target"] for t in targets}
    assert {"dynamic accuracy vs torchao", "dynamic latency vs torchao", "weight-only latency vs torchao"} <= names
    for t in targets:
        assert t["met"] in (True, False, None)
        if t["met"] is None:
            assert t["note"]  # n/a says why
    text = ao.torchao_tables(suite)
    assert f"fxlab vs torchao {suite['torchao']} on cpu" in text
    assert "Int8DynamicActivationInt8WeightConfig()" in text and "Int8WeightOnlyConfig()" in text
    assert "paired (test images)" in text and "right only fxlab/torchao" in text


def test_torchao_side_groups_per_linear() -> None:
    """Each Linear gets whole groups (784 → 28, 50 → 25), none is left float; a config that cannot run says why."""
    from fxlab.models import build

    q, _ = ao.import_torchao()
    assert q is not None
    model = build("neuralnetwork").eval()
    probe = torch.randn(2, 1, 28, 28)
    groups = ao.torchao_group_sizes(model, 32)
    assert groups == {"fc1": 28, "fc2": 25}
    pair = next(p for p in ao.PAIRS if p.label == "int8-int4")
    side = ao._torchao_side(q, pair, model, groups, None, torch.device("cpu"), probe)
    assert side["status"] == "ok", side
    assert side["config"].endswith("group_size=28/25)") and side["left_float"] == 0
    with torch.inference_mode():
        assert (side["module"](probe) - model(probe)).abs().max() < 0.5
    int4 = next(p for p in ao.PAIRS if p.label == "int4")
    side = ao._torchao_side(q, int4, model, groups, None, torch.device("cpu"), probe)
    if side["status"] != "ok":  # torchao 0.18 on CPU: no int4 layout runs
        assert side["status"].startswith("not supported on cpu (") and len(side["tried"]) == len(int4.configs)
