"""Low-bit quantization on trained seed models, judged on real MNIST: every mode and int4 group
size within its budget on every seed; the int2 stress mode visibly loses accuracy."""

from __future__ import annotations

import pytest

import fxlab
from fxlab.models import seed_names
from fxlab.passes import QuantizeLinear
from fxlab.passes.quantize import GROUPED_MODES
from fxlab.train import evaluate

#: (mode, group_size) pairs beyond the default configurations the regression suite verifies
CASES = [("int4", 32), ("int4", 64), ("int4", 128), ("int4", None), ("int8-int4", 32), ("int8-int4", None),
         ("fp8", None), ("int2", 32), ("int2", None)]


@pytest.mark.parametrize("model_name", seed_names())
def test_every_low_bit_mode_within_its_budget(trained, mnist, model_name: str) -> None:
    model = trained[model_name]
    base = trained.accuracy(model_name)
    drops = {}
    for mode, group in CASES:
        p = QuantizeLinear(mode=mode, **({"group_size": group} if mode in GROUPED_MODES else {}))
        gm = fxlab.apply(model, [p])
        drops[(mode, group)] = base - evaluate(gm, mnist).accuracy
        assert drops[(mode, group)] <= p.budget, f"{p} on {model_name}: {base:.2f}% → {base - drops[(mode, group)]:.2f}%"
    # the budgets are small where the scheme is good: int4 and fp8 lose well under a point here
    assert max(drops[c] for c in CASES if c[0] != "int2") < 0.5
    # int2 is a stress mode: it costs more than int4 at the same group size, visibly so on every seed
    # (0.4-4.5 points here; QAT wins it back: test_qat_wins_back_at_least_half_of_the_lost_accuracy)
    for group in (32, None):
        assert drops[("int2", group)] > drops[("int4", group)] + 0.1, drops
    assert max(drops[("int2", 32)], drops[("int2", None)]) > 0.4, drops


# -- quantization-aware training -----------------------------------------------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402


@pytest.mark.parametrize("model_name", ["mymodule", "neuralnetwork"])
@pytest.mark.parametrize("mode, group", [("int4", None), ("int2", 32)])
def test_qat_wins_back_at_least_half_of_the_lost_accuracy(trained, mnist, model_name: str, mode: str,
                                                          group: int | None) -> None:
    model = trained[model_name]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    base = trained.accuracy(model_name)
    plain = evaluate(fxlab.apply(model, [QuantizeLinear(mode=mode, group_size=group)]), mnist).accuracy
    gm = fxlab.apply(model, [QuantizeLinear(mode=mode, group_size=group, qat_epochs=1, data=mnist)])
    after = evaluate(gm, mnist).accuracy
    lost = base - plain
    assert lost > 0, f"{mode} lost nothing on {model_name}: nothing to win back"
    assert after - plain >= lost / 2, f"{mode} on {model_name}: {base:.2f} → plain {plain:.2f} → QAT {after:.2f}"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())  # the caller's model untouched
    assert type(gm.get_submodule(next(n for n, m in gm.named_modules() if hasattr(m, "weight_scale")))).__name__ \
        in ("Int4WeightOnlyLinear", "Int2WeightOnlyLinear")


def test_verify_reports_plain_and_qat_accuracy_with_the_budget(trained, mnist) -> None:
    model = trained["neuralnetwork"]
    report = fxlab.verify(model, "fuse-linear-relu,quantize-linear{mode=int2}", data=mnist, device="cpu",
                          qat_epochs=0.5)
    fuse, quant = report.steps
    assert fuse.qat is None and quant.qat is not None
    assert quant.pass_text == "quantize-linear{mode=int2 qat_epochs=0.5}"
    q = quant.qat
    assert q["qat_accuracy"] == quant.accuracy and q["budget"] == quant.budget == 10.0
    assert q["plain_accuracy"] < q["qat_accuracy"] and q["recovered"] > 0.5
    text = report.text(diffs=False)
    assert f"plain conversion {q['plain_accuracy']:.2f}%" in text and f"{q['qat_accuracy']:.2f}%" in text
    assert report.to_dict()["steps"][1]["qat"]["plain_accuracy"] == pytest.approx(q["plain_accuracy"])


def test_verify_cli_qat_epochs(trained, mnist_root, tmp_path) -> None:
    path = tmp_path / "nn.pth"
    torch.save(trained["neuralnetwork"].state_dict(), path)
    proc = subprocess.run([sys.executable, "-m", "fxlab.verify", str(path), "--passes", "quantize-linear{mode=int4 group_size=none}",
                           "--qat-epochs", "0.2", "--data", str(mnist_root), "--device", "cpu", "--no-diff"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quantize-linear{mode=int4 group_size=none qat_epochs=0.2}" in proc.stdout
    assert "quantization-aware training:" in proc.stdout and "plain conversion" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "fxlab.verify", str(path), "--passes", "quantize-linear{mode=int4}",
                          "--qat-epochs", "-1"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--qat-epochs must be a number ≥ 0" in bad.stderr


def test_a_qat_model_saves_and_loads_with_its_trained_weights(trained, mnist, tmp_path) -> None:
    gm = fxlab.apply(trained["neuralnetwork"], [QuantizeLinear(mode="int4", group_size=64, qat_epochs=0.05, data=mnist)])
    plain = fxlab.apply(trained["neuralnetwork"], [QuantizeLinear(mode="int4", group_size=64)])
    assert not torch.equal(gm.fc1.weight_packed, plain.fc1.weight_packed)  # training moved the weights
    path = tmp_path / "qat.fxlab"
    fxlab.save(gm, path)
    back = fxlab.load(path)  # rebuilt without training, then the saved (trained) state dict
    x = mnist.test.images[:64]
    with torch.no_grad():
        assert torch.equal(back(x), gm(x))
