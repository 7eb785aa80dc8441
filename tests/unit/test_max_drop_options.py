"""quantize-linear / quantize-conv ``max_drop``: options, pipeline text, and the errors that need no data.

Accuracy-aware quantization on real MNIST is tested in tests/integration/test_max_drop.py.
"""

from __future__ import annotations

import pytest
import torch

import fxlab
from fxlab.errors import PassError, PipelineError
from fxlab.models import build
from fxlab.passes import QuantizeConv, QuantizeLinear
from fxlab.pipeline import PassRecord, PassRecords


@pytest.mark.parametrize("text, max_drop, eval_images", [
    ("quantize-linear{mode=dynamic max_drop=0.2}", 0.2, None),
    ("quantize-linear{mode=static max_drop=1.5 eval_images=2000}", 1.5, 2000),
    ("quantize-conv{mode=dynamic exclude=conv1 max_drop=0.0}", 0.0, None),
])
def test_text_round_trip(text: str, max_drop: float, eval_images: int | None) -> None:
    (p,) = fxlab.parse_pipeline(text)
    assert (p.max_drop, p.eval_images) == (max_drop, eval_images)
    assert str(p) == text
    assert fxlab.parse_pipeline(str(p)) == [p]
    assert str(type(p)(mode=p.mode, exclude=p.exclude, max_drop=max_drop, eval_images=eval_images)) == text


def test_data_is_an_input_not_an_option() -> None:
    p = QuantizeLinear(mode="dynamic", max_drop=0.2, data="/nowhere")
    assert "data" not in p.options() and "calibration" not in p.options()
    assert str(p) == "quantize-linear{mode=dynamic max_drop=0.2}"
    assert p == QuantizeLinear(mode="dynamic", max_drop=0.2)  # data takes no part in equality
    assert "data" not in repr(p)
    c = QuantizeConv(mode="dynamic", max_drop=0.2, data="/nowhere")
    assert "data" not in c.options() and str(c) == "quantize-conv{mode=dynamic max_drop=0.2}"


def test_budget_is_max_drop_when_set() -> None:
    assert QuantizeLinear(mode="dynamic").budget == 0.3
    assert QuantizeLinear(mode="dynamic", max_drop=0.7).budget == 0.7
    assert QuantizeConv(mode="bf16", max_drop=0.05).budget == 0.05


@pytest.mark.parametrize("kwargs, message", [
    ({"max_drop": -1.0}, "max_drop must be a number of accuracy points ≥ 0"),
    ({"max_drop": "a lot"}, "max_drop must be a number"),
    ({"max_drop": 0.5, "eval_images": 0}, "eval_images must be a number of test images ≥ 1"),
    ({"eval_images": 100}, "eval_images is the evaluation set of max_drop"),
])
def test_bad_options(kwargs: dict, message: str) -> None:
    for cls in (QuantizeLinear, QuantizeConv):
        with pytest.raises(PassError, match=message):
            cls(mode="dynamic", **kwargs)


def test_bad_option_in_text_names_it() -> None:
    with pytest.raises(PipelineError, match="max_drop must be"):
        fxlab.parse_pipeline("quantize-linear{mode=dynamic max_drop=-2}")


@pytest.mark.parametrize("passes", [
    "quantize-linear{mode=dynamic max_drop=0.5}",
    [QuantizeLinear(mode="weight-only", max_drop=0.5)],
])
def test_missing_data_says_how_to_supply_it(passes) -> None:
    with pytest.raises(PassError) as info:
        fxlab.apply(build("mymodule").eval(), passes)
    message = str(info.value)
    assert "max_drop needs evaluation data" in message
    assert "data=fxlab.data.load()" in message and "fxlab.verify" in message


def test_missing_data_quantize_conv() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(PassError, match="quantize-conv: max_drop needs evaluation data"):
        fxlab.apply(model.eval(), "quantize-conv{mode=dynamic max_drop=0.5}")


def test_bad_data_type() -> None:
    with pytest.raises(PassError, match="data must be what fxlab.data.load"):
        fxlab.apply(build("mymodule").eval(), [QuantizeLinear(mode="dynamic", max_drop=0.5, data=[1, 2])])


def test_no_layer_to_rank_measures_nothing() -> None:
    # a model with no conv: quantize-conv has nothing to rank, needs no data and records no sensitivity
    gm = fxlab.apply(build("mymodule").eval(), "quantize-conv{mode=dynamic max_drop=0.5}")
    assert fxlab.records(gm)[-1].sensitivity is None
    assert gm.meta["fxlab.pipeline"] == "quantize-conv{mode=dynamic max_drop=0.5}"


def test_sensitivity_line_in_the_table() -> None:
    s = {"max_drop": 0.5, "images": 10000, "float_accuracy": 97.9, "accuracy": 97.86, "drop": 0.04,
         "kept": ["layer1"], "ranking": [
             {"node": "layer1", "accuracy": 11.6, "change": -86.3, "error": 0.99, "kept": True},
             {"node": "layer3", "accuracy": 97.86, "change": -0.04, "error": 0.004, "kept": False}]}
    record = PassRecord("quantize-linear", "approximate", 0.1, 8, 8, 0, 0, 2, sensitivity=s,
                        rewritten=["layer3"], skipped=[("layer1", "kept in float32 by max_drop=0.5 (alone: -86.30 points)")])
    table = PassRecords([record]).table()
    assert table.splitlines()[-2] == "quantize-linear: layer1: kept in float32 by max_drop=0.5 (alone: -86.30 points)"
    assert table.splitlines()[-1] == ("quantize-linear: max_drop=0.5 on 10000 images: ranking layer1 -86.30 (kept), "
                                      "layer3 -0.04; 97.90% → 97.86% (drop 0.04)")


def test_a_measuring_pass_records_its_sensitivity_and_replay_text() -> None:
    """``sites.measured``: apply keeps the measurement on the record and the replay text as the pipeline."""
    from dataclasses import dataclass

    from fxlab.pipeline import Pass, sites

    @dataclass
    class Measuring(Pass):
        name = "measuring-test-pass"
        kind = "exact"

        def call(self, gm):
            sites.looked(gm)
            sites.measured(gm, {"max_drop": 1.0, "ranking": []}, "dce")
            return gm

    gm = fxlab.apply(build("mymodule").eval(), [Measuring()])
    record = fxlab.records(gm)[-1]
    assert record.sensitivity == {"max_drop": 1.0, "ranking": []}
    assert gm.meta["fxlab.pipeline"] == "dce"
    gm = fxlab.apply(gm, "dce")  # the next pass measured nothing
    assert fxlab.records(gm)[-1].sensitivity is None and gm.meta["fxlab.pipeline"] == "dce,dce"
