"""Accuracy-aware quantization on real MNIST: ``max_drop`` keeps in float exactly the layer that must stay float.

The models are trained ones with an outlier planted so that the float function is unchanged and one
layer cannot take int8:

- ``mymodule``: ``layer1``'s column of pixel 0 (a corner pixel, 0 in every MNIST image) is set to
  1000× the row's largest weight and the bias compensates for the constant input, so the float
  outputs are the same while the per-channel int8 weights of ``layer1`` lose every other weight;
- ``lenet5``: ``bn1``'s channel 0 is scaled by 1000 (ReLU and max-pool pass the factor through) and
  ``conv2``'s weights on that channel by 1/1000, so the float outputs are the same while ``conv2``'s
  int8 activations (one scale per sample) lose the other channels.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import fxlab
from fxlab.cli import run as cli
from fxlab.models import build
from fxlab.nn import Int8DynamicLinear
from fxlab.passes import QuantizeConv, QuantizeLinear
from fxlab.train import evaluate, fit

MAX_DROP = 0.5


@pytest.fixture(scope="module")
def outlier(trained, mnist) -> nn.Module:
    """The trained ``mymodule`` with the outlier column in ``layer1``."""
    model = trained["mymodule"]
    pixel = mnist.test.images[:, 0, 0, 0]
    assert bool((pixel == pixel[0]).all()), "pixel 0 is not constant on the MNIST test set"
    with torch.no_grad():
        w, b = model.layer1.weight, model.layer1.bias
        old = w[:, 0].clone()
        w[:, 0] = 1000 * w.abs().max(1).values
        b -= (w[:, 0] - old) * pixel[0]
    return model.eval()


def test_the_outlier_keeps_the_float_function(outlier, trained, mnist) -> None:
    x = mnist.test.images[:1000]
    with torch.no_grad():
        assert (outlier(x) - trained["mymodule"](x)).abs().max() < 1e-3
    assert abs(evaluate(outlier, mnist).accuracy - trained.accuracy("mymodule")) <= 0.02


def test_plain_int8_is_ruined_by_layer1_alone(outlier, trained, mnist) -> None:
    base = trained.accuracy("mymodule")
    everything = evaluate(fxlab.apply(outlier, "quantize-linear{mode=dynamic}"), mnist).accuracy
    without_layer1 = evaluate(fxlab.apply(outlier, "quantize-linear{mode=dynamic exclude=layer1}"), mnist).accuracy
    assert base - everything > 20, f"{base:.2f}% → {everything:.2f}%"
    assert base - without_layer1 < MAX_DROP


def test_max_drop_keeps_exactly_layer1(outlier, mnist) -> None:
    base = evaluate(outlier, mnist).accuracy
    gm = fxlab.apply(outlier, [QuantizeLinear(mode="dynamic", max_drop=MAX_DROP, data=mnist)])
    assert type(gm.layer1) is nn.Linear
    assert isinstance(gm.layer2, Int8DynamicLinear) and isinstance(gm.layer3, Int8DynamicLinear)
    after = evaluate(gm, mnist).accuracy
    assert base - after <= MAX_DROP

    record = fxlab.records(gm)[-1]
    assert record.rewritten == ["layer2", "layer3"]
    ((node, reason),) = record.skipped
    assert node == "layer1" and reason.startswith(f"kept in float32 by max_drop={MAX_DROP} (alone: -")
    s = record.sensitivity
    assert s["kept"] == ["layer1"] and s["images"] == 10000 and s["max_drop"] == MAX_DROP
    assert (s["float_accuracy"], s["accuracy"]) == (base, after)  # measured on the same test images
    ranking = s["ranking"]
    assert [r["node"] for r in ranking][0] == "layer1" and sorted(r["node"] for r in ranking) == ["layer1", "layer2", "layer3"]
    assert [r["kept"] for r in ranking] == [True, False, False]
    assert ranking[0]["change"] < -20 and ranking[0]["error"] > 10 * max(r["error"] for r in ranking[1:])
    assert f"(alone: {ranking[0]['change']:+.2f} points)" in reason
    assert "ranking layer1" in fxlab.records(gm).table()
    # the result's pipeline is what it did, without data: a saved model rebuilds from it
    assert gm.meta["fxlab.pipeline"] == "quantize-linear{mode=dynamic exclude=layer1}"


def test_max_drop_from_an_mnist_root_on_fewer_images(outlier, mnist_root) -> None:
    gm = fxlab.apply(outlier, [QuantizeLinear(mode="weight-only", max_drop=MAX_DROP, eval_images=2000,
                                              data=mnist_root)])
    s = fxlab.records(gm)[-1].sensitivity
    assert s["kept"] == ["layer1"] and s["images"] == 2000 and s["drop"] <= MAX_DROP
    assert type(gm.layer1) is nn.Linear and type(gm.layer2) is not nn.Linear


def test_saved_max_drop_model_loads_without_data(outlier, mnist, tmp_path) -> None:
    gm = fxlab.apply(outlier, [QuantizeLinear(mode="dynamic", max_drop=MAX_DROP, data=mnist)])
    path = fxlab.save(gm, tmp_path / "kept.pth")
    back = fxlab.load(path)
    assert type(back.layer1) is nn.Linear and isinstance(back.layer2, Int8DynamicLinear)
    x = mnist.test.images[:256]
    with torch.no_grad():
        assert torch.equal(back(x), gm(x))


def test_verify_supplies_the_data(outlier, mnist) -> None:
    report = fxlab.verify(outlier, "quantize-linear{mode=dynamic max_drop=0.5}", data=mnist, nodes=False)
    (step,) = report.steps
    assert report.ok, step.verdict
    assert step.pass_text == "quantize-linear{mode=dynamic max_drop=0.5}" and step.budget == MAX_DROP
    assert step.skipped[0][0] == "layer1" and -step.delta <= MAX_DROP
    assert step.sensitivity["kept"] == ["layer1"]
    assert "sensitivity: max_drop=0.5 on 10000 images: ranking layer1" in step.sites_text()
    data = json.loads(report.to_json())
    assert data["steps"][0]["sensitivity"]["ranking"][0]["node"] == "layer1"


def test_cli_verify_supplies_the_data_and_apply_says_how(outlier, mnist_root, tmp_path, capsys) -> None:
    model_file, report = tmp_path / "outlier.pth", tmp_path / "report.json"
    torch.save(outlier.state_dict(), model_file)
    code = cli("verify", [str(model_file), "--passes", "quantize-linear{mode=dynamic max_drop=0.5}",
                          "--data", str(mnist_root), "--device", "cpu", "--json", str(report), "--no-diff"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(report.read_text())["steps"][0]["sensitivity"]["kept"] == ["layer1"]

    code = cli("apply", [str(model_file), "quantize-linear{mode=dynamic max_drop=0.5}", "-o", str(tmp_path / "q.pth")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "max_drop needs evaluation data" in err and "fxlab.verify" in err
    assert not (tmp_path / "q.pth").exists()


@pytest.fixture(scope="module")
def lenet_outlier(mnist) -> tuple[nn.Module, float]:
    """lenet5 trained briefly (60 steps), with the conv2 outlier; and its float accuracy before it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build("lenet5")
        fit(model, mnist, epochs=1, max_steps=60, device="cpu", seed=0, progress=False, evaluate_each_epoch=False)
    model.eval()
    base = evaluate(model, mnist, batch_size=2000).accuracy
    with torch.no_grad():
        model.bn1.weight[0] *= 1000
        model.bn1.bias[0] *= 1000
        model.conv2.weight[:, 0] /= 1000
    return model, base


def test_quantize_conv_max_drop_keeps_exactly_conv2(lenet_outlier, mnist) -> None:
    model, base = lenet_outlier
    assert base > 80, f"lenet5 trained to {base:.2f}% only"
    assert abs(evaluate(model, mnist, batch_size=2000).accuracy - base) <= 0.02
    p = QuantizeConv(mode="dynamic", max_drop=MAX_DROP, eval_images=1000, data=mnist)
    gm = fxlab.apply(model, [p])
    s = fxlab.records(gm)[-1].sensitivity
    assert s["kept"] == ["conv2"] and [r["node"] for r in s["ranking"]] == ["conv2", "conv1"]
    assert s["ranking"][0]["change"] < -1, s  # conv2 alone costs points; all of them together too:
    assert s["float_accuracy"] - min(r["accuracy"] for r in s["ranking"]) > MAX_DROP and s["drop"] <= MAX_DROP
    assert type(gm.conv2) is nn.Conv2d and type(gm.conv1) is not nn.Conv2d
    assert gm.meta["fxlab.pipeline"] == "quantize-conv{mode=dynamic exclude=conv2}"


def test_verify_retries_a_step_that_misses_its_budget_through_qat(outlier, mnist) -> None:
    """By default an approximate step that misses its budget is done again with one epoch of
    quantization-aware training, and that attempt is the step, its plain conversion reported beside it;
    ``qat_epochs=0`` never trains."""
    plain = fxlab.verify(outlier, "quantize-linear{mode=dynamic}", data=mnist, device="cpu", qat_epochs=0, nodes=False)
    assert not plain.ok and plain.steps[0].qat is None
    assert plain.steps[0].pass_text == "quantize-linear{mode=dynamic}"
    report = fxlab.verify(outlier, "quantize-linear{mode=dynamic}", data=mnist, device="cpu", nodes=False)
    step = report.steps[0]
    assert step.pass_text == "quantize-linear{mode=dynamic qat_epochs=1}"
    assert step.qat is not None and step.qat["epochs"] == 1
    assert step.qat["plain_accuracy"] == pytest.approx(plain.steps[0].accuracy)
    assert step.qat["qat_accuracy"] == step.accuracy
