"""fit, evaluate, fit_recipe, fxlab.data.load and fxlab.models.build refuse bad input with fxlab errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fxlab import data
from fxlab.errors import FxlabError, LoadError, UsageError
from fxlab.models import build
from fxlab.train import Recipe, evaluate, fit, fit_recipe

UNAVAILABLE = ["bogus", "meta", *([] if torch.cuda.is_available() else ["cuda"]),
               *([] if torch.backends.mps.is_available() else ["mps"])]


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("device", UNAVAILABLE)
def test_fit_and_evaluate_refuse_a_device_this_machine_lacks(mnist, device):
    model = build("mymodule")
    with pytest.raises(UsageError, match=repr(device)):
        fit(model, mnist, device=device, max_steps=3)
    with pytest.raises(UsageError, match=repr(device)):
        evaluate(model, mnist, device=device)


@pytest.mark.parametrize("device", UNAVAILABLE)
def test_load_and_to_refuse_a_device_this_machine_lacks(mnist, mnist_root, device):
    with pytest.raises(UsageError, match=repr(device)):
        data.load(mnist_root, device=device, download=False)
    with pytest.raises(UsageError, match=repr(device)):
        mnist.to(device)


@pytest.mark.parametrize(("option", "value"), [
    ("batch_size", 0), ("batch_size", -1), ("epochs", -1), ("epochs", 0), ("epochs", 1.5),
    ("max_steps", 0), ("max_steps", -2), ("threads", 1.5), ("threads", 0),
    ("lr", -1.0), ("lr", math.nan), ("lr", math.inf), ("weight_decay", -1.0),
    ("label_smoothing", 2.0), ("label_smoothing", -0.1), ("schedule", "linear"), ("seed", 2**70), ("seed", 1.5),
])
def test_fit_refuses_bad_options_before_any_work(mnist, option, value):
    model = build("mymodule")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UsageError) as exc:
        fit(model, mnist, **{"max_steps": 3, option: value})
    assert option in _one_line(exc)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("option", "value"), [
    ("epochs", 0), ("batch_size", 2.5), ("lr", math.nan), ("weight_decay", -1.0), ("label_smoothing", 2.0),
    ("threads", 0), ("schedule", "linear"), ("seed", 2**70),
])
def test_a_recipe_refuses_bad_fields(option, value):
    with pytest.raises(UsageError, match=option):
        Recipe(**{option: value})


@pytest.mark.parametrize("outputs", [20, 5])
@pytest.mark.parametrize("tail", [[], [nn.Tanh()]], ids=["linear-chain", "autograd"])
def test_a_model_without_ten_outputs_is_refused_before_training(mnist, outputs, tail):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, outputs), *tail)
    before = model[1].weight.detach().clone()
    with pytest.raises(UsageError, match=f"gives {outputs} outputs per image, where MNIST has 10 classes"):
        fit(model, mnist, max_steps=5)
    assert torch.equal(model[1].weight, before)
    with pytest.raises(UsageError, match=f"gives {outputs} outputs per image"):
        evaluate(model, mnist)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_models_in_other_dtypes_train_and_evaluate_in_their_own_dtype(mnist, dtype):
    model = build("mymodule").to(dtype)
    history = fit(model, mnist, epochs=1, max_steps=3, progress=False, evaluate_each_epoch=False, seed=0)
    assert history.final["steps"] == 3 and math.isfinite(history.final["train_loss"])
    assert all(p.dtype == dtype for p in model.parameters())
    accuracy, loss, confusion = evaluate(model, mnist)
    assert 0 <= accuracy <= 100 and math.isfinite(loss) and int(confusion.sum()) == 10_000


@pytest.mark.parametrize("pipeline", ["quantize-linear{mode=fp16}", "quantize-linear{mode=bf16}",
                                      "quantize-linear{mode=fp8}"])
@pytest.mark.parametrize("bias", [True, False])
def test_quantized_models_are_evaluated_on_float32_images(mnist, pipeline, bias):
    """A half or fp8 Linear holds its weight in that dtype and takes float32 input: the images stay float32."""
    import fxlab

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10, bias=bias))
    gm = fxlab.apply(model, pipeline)
    with torch.no_grad():
        right = (gm(mnist.test.images).argmax(1) == mnist.test.labels).sum().item()
    accuracy, _, confusion = evaluate(gm, mnist)
    assert int(confusion.trace()) == right and int(confusion.sum()) == len(mnist.test.labels)
    assert accuracy == pytest.approx(100 * right / len(mnist.test.labels))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_evaluate_refuses_a_bad_batch_size(mnist, batch_size):
    with pytest.raises(UsageError, match="batch_size must be a whole number"):
        evaluate(build("mymodule"), mnist, batch_size=batch_size)


@pytest.mark.parametrize(("name", "kwargs", "reason"), [
    ("mymodule", {"foo": 1}, "unexpected keyword argument 'foo'"),
    ("mymnist", {"hidden_layers": [-1]}, "RuntimeError"),
    (None, {}, "unknown model None"),
    ("mymodul", {}, "closest: mymodule"),
])
def test_build_gives_load_errors(name, kwargs, reason):
    with pytest.raises(LoadError, match=reason) as exc:
        build(name, **kwargs)
    _one_line(exc)


def test_fit_recipe_keywords_override_the_recipe(mnist):
    history = fit_recipe(build("mymodule"), mnist, Recipe(epochs=3), seed=3, epochs=1, max_steps=2,
                         evaluate_each_epoch=False, progress=False)
    assert len(history.epochs) == 1 and history.final["steps"] == 2


def test_fit_recipe_refuses_what_is_not_a_recipe(mnist):
    with pytest.raises(FxlabError, match="Recipe"):
        fit_recipe(build("mymodule"), mnist, {"epochs": 1})


def test_fxlab_data_expands_a_home_relative_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FXLAB_DATA", "~/x")
    assert data.default_root() == tmp_path / "x"
    assert data.resolve_root() == (tmp_path / "x").resolve()
