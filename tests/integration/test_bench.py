"""`python -m fxlab.bench --quick` runs every suite and reports every figure.

The smoke run happens once (module fixture); the tests check its structure and sanity (positive
times, ratios, accuracies in range, outputs equal across implementations), never wall-clock
thresholds: benchmarks are programs, not timed tests.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fxlab import bench
from fxlab.bench import harness
from fxlab.errors import WriteError
from fxlab.cli import run


@pytest.fixture(scope="module")
def smoke(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # kernels chosen by measurement as users get them, the decisions cached in a temporary folder
    env = {**os.environ, "FXLAB_DATA": str(mnist_root), "FXLAB_KERNELS": "auto",
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("cache"))}
    proc = subprocess.run([sys.executable, "-m", "fxlab.bench", "--quick", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert not [p for p in out.parent.iterdir() if p.name != out.name], "temporary files left behind"
    return json.loads(out.read_text()), proc.stdout


def positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_top_level(smoke: tuple[dict[str, Any], str]) -> None:
    result, stdout = smoke
    assert {"inference", "passes", "training", "kernels", "environment", "targets"} <= set(result)
    env = result["environment"]
    assert env["torch"] and env["device"] and env["cpu_count"] >= 1
    assert result["config"]["quick"] is True
    for heading in ("inference, batch 1", "inference, batch 256", "pass application", "training mymodule",
                    "kernel choices on", "targets:"):
        assert heading in stdout


def test_inference(smoke: tuple[dict[str, Any], str]) -> None:
    inference = smoke[0]["inference"]
    rows = inference["rows"]
    models = {r["model"] for r in rows}
    assert {"mymodule", "simplenn"} <= models
    for model in models:
        for batch in inference["batches"]:
            variants = {r["variant"]: r for r in rows if r["model"] == model and r["batch"] == batch}
            assert {"float32", "fused", *bench.QUANT_MODES, "torch.ao dynamic", "torch.compile"} <= set(variants)
            base = variants["float32"]
            assert base["status"] == "ok" and base["speedup"] == pytest.approx(1.0)
            for r in variants.values():
                if r["status"] != "ok":  # a missing or failing variant says why
                    assert r["status"].startswith(("failed", "not built", "skipped", "n/a")), r["status"]
                    continue
                assert positive(r["latency"]["median_s"]) and positive(r["throughput"]) and positive(r["speedup"])
                assert r["latency"]["q1_s"] <= r["latency"]["median_s"] <= r["latency"]["q3_s"]
                assert r["latency"]["rounds"] >= 3
                assert r["peak_tensor_bytes"] >= 0 and positive(r["state_dict_bytes"])
                assert r["throughput"] == pytest.approx(batch / r["latency"]["median_s"])
                # speed-up: the median of same-round ratios against float32
                per_round = [a / b for a, b in zip(base["latency"]["samples_s"], r["latency"]["samples_s"])]
                assert len(per_round) == r["latency"]["rounds"] == base["latency"]["rounds"]
                assert r["speedup"] == pytest.approx(statistics.median(per_round))
    # fxlab's own variants ran (the anchors may be missing where torch lacks them: their rows say why)
    ok = {(r["model"], r["variant"]) for r in rows if r["status"] == "ok"}
    assert {("simplenn", "fused"), *(("mymodule", mode) for mode in bench.QUANT_MODES)} <= ok
    # a CNN also in each mode with its convs quantized too; an MLP has no such variant
    with_convs = {f"{mode}+conv" for mode in ("dynamic", "weight-only", "bf16", "fp16")}
    assert {("lenet5", v) for v in with_convs} <= ok
    assert not {v for m, v in ok if m == "mymodule"} & with_convs
    # the kernels these figures ran are on record, lenet5's convs among them
    used = {(d["op"], d["bucket"]): d for d in inference["kernel_decisions"]}
    # lenet5's second conv: its input is channels-last where the first conv ran the int8 reference
    assert {("dynamic-conv", "256x6x14x14x16k5x5"), ("dynamic-conv", "256x6x14x14x16k5x5/nhwc")} & set(used)
    assert ("dynamic", "256x784x128") in used
    assert all(d["chosen"] in d["times_us"] or d["source"] != "measured" for d in used.values())
    pipelines = {r["variant"]: r["pipeline"] for r in rows if r["model"] == "lenet5"}
    assert pipelines["bf16+conv"] == pipelines["bf16"] + ",quantize-conv{mode=bf16}"
    # int8 state dicts are much smaller than float32 ones
    size = {(r["model"], r["variant"]): r["state_dict_bytes"] for r in rows if r["batch"] == 1}
    assert size[("mymodule", "dynamic")] < 0.4 * size[("mymodule", "float32")]


def test_passes(smoke: tuple[dict[str, Any], str]) -> None:
    passes = smoke[0]["passes"]
    assert len(passes["depths"]) == 3
    ok = [r for r in passes["rows"] if r["status"] == "ok"]
    assert {r["implementation"] for r in ok} >= {"fxlab.apply", "hand-written torch.fx", "torch.ao fuse_fx", "trace only"}
    for r in ok:
        assert positive(r["time_s"]) and r["input_untouched"] is True
        if "max_abs_diff_vs_hand" in r:  # fxlab and the hand-written transform compute the same function
            assert r["max_abs_diff_vs_hand"] <= 1e-5, r
    for ratio in passes["ratios"]:
        assert ratio["fxlab_over_hand"] is None or positive(ratio["fxlab_over_hand"])
    assert passes["growth"] and all(positive(g["time_ratio"]) for g in passes["growth"])


def test_training(smoke: tuple[dict[str, Any], str]) -> None:
    training = smoke[0]["training"]
    phases = {(r["phase"], r["implementation"]): r for r in training["rows"]}
    epochs = {name for phase, name in phases if phase == "epoch"}
    assert epochs == {"seeds' loop (DataLoader, batch 64)", "fxlab.train.fit, batch 64",
                      "fxlab.train.fit, batch 64, torch's threads", "fxlab.train.fit, default batch 256"}
    assert len(phases) == 6  # and the two evaluations
    for r in phases.values():
        assert r["status"] == "ok" and positive(r["time_s"])
        if r["phase"] == "epoch":
            assert 10 < r["accuracy"] <= 100  # better than chance after one short epoch
    assert training["memory"].get("status") in (None, "ok") or training["memory"]["status"].startswith("failed")


def test_targets(smoke: tuple[dict[str, Any], str]) -> None:
    targets = smoke[0]["targets"]
    names = {t["target"] for t in targets}
    assert {"fused SimpleNN speed-up", "int8 dynamic vs float32", "pass application grows linearly",
            "fxlab within 2× of hand-written torch.fx", "training epoch vs seeds' loop",
            "evaluation vs seeds' loop"} <= names
    for t in targets:
        assert t["met"] in (True, False, None)
        if "points" in t["required"]:  # a difference of accuracies: any finite sign
            assert t["measured"] is None or math.isfinite(t["measured"])
        else:  # a ratio or a time
            assert t["measured"] is None or positive(t["measured"])


def test_kernels(smoke: tuple[dict[str, Any], str]) -> None:
    kernels = smoke[0]["kernels"]
    assert kernels["machine"]["cpu"] and kernels["machine"]["torch"]
    assert not kernels["failures"]
    ops = {r["op"] for r in kernels["rows"]}
    assert {"dynamic", "weight-only", "bf16", "fp16", "static", "linear-relu"} <= ops
    assert {"dynamic-conv", "bf16-conv", "fp16-conv"} <= ops  # lenet5's convs
    # the second conv's input is channels-last when the first chose a channels-last kernel (measured)
    conv_buckets = {r["bucket"].removesuffix("/nhwc") for r in kernels["rows"] if r["op"] == "bf16-conv"}
    assert {"256x1x28x28x6k5x5p2x2", "256x6x14x14x16k5x5"} <= conv_buckets
    for r in kernels["rows"]:
        timed = {n: t for n, t in r["times_us"].items() if t is not None}
        assert r["chosen"] in timed and all(positive(t) for t in timed.values())
        assert timed[r["chosen"]] == min(timed.values())  # the fastest measured was kept
        assert all(r["times_us"][n] is None for n in r["rejected"])  # left out: never timed, never chosen
        assert r["models"]
    rows_of = {(r["op"], r["bucket"].split("x")[0]) for r in kernels["rows"]}
    assert ("dynamic", "1") in rows_of and ("dynamic", "256") in rows_of


def test_explain(smoke: tuple[dict[str, Any], str]) -> None:
    explain = smoke[0]["explain"]
    rows = explain["bisection"]
    assert [r["steps"] for r in rows] == [4, 16, 64]
    assert all(r["found"] and r["verifications"] <= r["bound"] for r in rows)
    assert positive(explain["node_overhead"]["ratio"])
    assert "bisection (one lying step among N exact ones)" in smoke[1]


# -- units --------------------------------------------------------------------------------------


def test_compare_reports_failures_and_keeps_order() -> None:
    def boom() -> None:
        raise ValueError("no kernel")

    result = bench.compare({"a": lambda: sum(range(100)), "b": boom, "c": lambda: None}, rounds=3, round_time=0.001)
    assert list(result) == ["a", "b", "c"]
    assert result["b"] == "failed: ValueError: no kernel"
    for name in ("a", "c"):
        t = result[name]
        assert isinstance(t, bench.Timing) and t.rounds == 3 and t.calls >= 1
        assert t.min <= t.q1 <= t.median <= t.q3 <= t.max and t.spread >= 0


def test_ratios_pair_the_rounds() -> None:
    """A candidate's samples are its rounds in order; a ratio is the median of same-round ratios, so a
    round in which the machine slowed both down weighs like any other."""
    result = bench.compare({"a": lambda: sum(range(2000)), "b": lambda: sum(range(200))}, rounds=5, round_time=0.001)
    a, b = result["a"], result["b"]
    assert len(a.samples) == len(b.samples) == 5 and sorted(a.samples)[2] == a.median
    assert harness.ratio(a, b) == pytest.approx(statistics.median(x / y for x, y in zip(a.samples, b.samples)))
    slow = bench.Timing.of([2.0, 8.0, 2.2, 9.0, 2.1], 1, None)  # rounds 2 and 4: the machine slowed both
    fast = bench.Timing.of([1.0, 4.0, 1.1, 4.5, 1.0], 1, None)
    assert harness.ratio(slow, fast) == pytest.approx(2.0)
    assert slow.median / fast.median == pytest.approx(2.2 / 1.1)  # what the medians alone would say
    assert harness.latency_ratio(slow.to_json(), fast.to_json()) == pytest.approx(2.0)
    old = {k: v for k, v in slow.to_json().items() if k != "samples_s"}  # a file saved before rounds were kept
    assert harness.latency_ratio(old, fast.to_json()) == pytest.approx(2.2 / 1.1)


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"
    with pytest.raises(WriteError, match="folder .*sub does not exist"):  # outputs never create folders
        bench.write_json_atomic(path, {"x": 1.5, "y": [1, 2]})
    path.parent.mkdir()
    bench.write_json_atomic(path, {"x": 1.5, "y": [1, 2]})
    assert json.loads(path.read_text()) == {"x": 1.5, "y": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_hand_written_transforms_match_fxlab() -> None:
    import torch

    import fxlab
    from fxlab.passes import FuseLinearReLU, InsertRelu

    model = bench.deep_mlp(6, 4)
    x = torch.randn(3, 4)
    assert torch.equal(bench.hand_insert_relu(model, None)(x), fxlab.apply(model, [InsertRelu(torch.nn.Linear)])(x))
    assert torch.equal(bench.hand_insert_relu(model, {"layers.4"})(x), fxlab.apply(model, [InsertRelu("layers.4")])(x))
    assert torch.allclose(bench.hand_fuse_linear_relu(model)(x), fxlab.apply(model, [FuseLinearReLU()])(x))
    assert torch.allclose(bench.ao_fuse_fx(model)(x), model(x))


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("bench", ["--suite", "nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err
