"""The passes suite's measurement: paired per-round ratios, every call from a collected heap.

A tiny configuration (depths of a few layers, two rounds) runs the real suite; the checks are on
its structure and arithmetic, never on times.
"""

from __future__ import annotations

import gc
import statistics

import pytest

from fxlab.bench import Config, passes_suite
from fxlab.bench.passes import _timed_call


@pytest.fixture(scope="module")
def result() -> dict:
    cfg = Config(depths=(2, 4, 8), pass_rounds=3, width=4)
    return passes_suite(cfg)


def test_rows_keep_wall_and_cpu_samples_per_round(result: dict) -> None:
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert {r["implementation"] for r in ok} == {"fxlab.apply", "hand-written torch.fx", "torch.ao fuse_fx",
                                                 "trace only"}
    for r in ok:
        assert len(r["samples_s"]) == len(r["samples_cpu_s"]) == 3
        assert r["time_s"] == statistics.median(r["samples_s"]) and r["cpu_s"] == statistics.median(r["samples_cpu_s"])
        assert all(c > 0 for c in r["samples_cpu_s"]) and r["input_untouched"] is True


def test_ratios_are_medians_of_same_round_ratios(result: dict) -> None:
    rows = {(r["change"], r["depth"], r["implementation"]): r for r in result["rows"] if r["status"] == "ok"}
    for ratio in result["ratios"]:
        fx, hand = (rows[(ratio["change"], ratio["depth"], impl)] for impl in ("fxlab.apply", "hand-written torch.fx"))
        per_round = [a / b for a, b in zip(fx["samples_cpu_s"], hand["samples_cpu_s"])]
        assert ratio["fxlab_over_hand"] == pytest.approx(statistics.median(per_round))
        assert ratio["paired_hand"]["cpu"]["min"] == pytest.approx(min(per_round))
        wall = [a / b for a, b in zip(fx["samples_s"], hand["samples_s"])]
        assert ratio["fxlab_over_hand_wall"] == pytest.approx(statistics.median(wall))
    for g in result["growth"]:
        small, big = (rows[(g["change"], d, g["implementation"])] for d in g["depths"])
        per_round = [a / b for a, b in zip(big["samples_cpu_s"], small["samples_cpu_s"])]
        assert g["depths"] == [4, 8] and g["time_ratio"] == pytest.approx(statistics.median(per_round))


def test_targets_are_the_issues_thresholds(result: dict) -> None:
    required = {(t["target"], t["required"]) for t in result["targets"]}
    assert ("pass application grows linearly", "≤ 2.25× time for 2× layers") in required
    assert ("fxlab within 1.5× of hand-written torch.fx", "≤ 1.50×") in required
    assert all(t["met"] in (True, False) for t in result["targets"])
    assert len(result["load_average"]) in (0, 2)


@pytest.mark.parametrize("enabled", [True, False])
def test_timed_call_starts_collected_and_restores_the_collector(enabled: bool) -> None:
    was = gc.isenabled()
    seen = []
    try:
        (gc.enable if enabled else gc.disable)()
        wall, cpu = _timed_call(lambda: seen.append(gc.isenabled()))
        assert gc.isenabled() is enabled and wall >= 0 and cpu >= 0
        assert seen == [False]  # paused during the call
        with pytest.raises(ZeroDivisionError):
            _timed_call(lambda: 1 / 0)
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
