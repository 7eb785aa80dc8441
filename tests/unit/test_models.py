"""Built-in CNNs and the user's own classes: names, strict loads, recognition, specs and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fxlab
from fxlab.cli import run
from fxlab.models import LeNet5, MnistCNN, build, match_seed, names, seed_names
from fxlab.serialization import load_file

X = torch.randn(3, 1, 28, 28)

CNN_KEYS = {
    "mnist-cnn": {"conv1.weight": [32, 1, 3, 3], "conv2.weight": [64, 32, 3, 3], "fc1.weight": [128, 9216],
                  "fc2.weight": [10, 128]},
    "lenet5": {"conv1.weight": [6, 1, 5, 5], "bn1.running_mean": [6], "conv2.weight": [16, 6, 5, 5],
               "bn2.num_batches_tracked": [], "fc1.weight": [120, 400], "fc2.weight": [84, 120],
               "fc3.weight": [10, 84]},
}


def test_names_include_the_cnns_after_the_seeds() -> None:
    assert names() == [*seed_names(), "mnist-cnn", "lenet5"]
    assert build("mnist-cnn").fxlab_arch == ("mnist-cnn", {})
    assert isinstance(build("lenet5"), LeNet5)


@pytest.mark.parametrize("name", ["mnist-cnn", "lenet5"])
def test_cnn_layer_names_and_shapes(name: str) -> None:
    state = build(name).state_dict()
    for key, shape in CNN_KEYS[name].items():
        assert list(state[key].shape) == shape


def hand_made_mnist_cnn_state() -> dict[str, torch.Tensor]:
    """What the classic PyTorch MNIST example saves, written out by hand."""
    shapes = {"conv1.weight": (32, 1, 3, 3), "conv1.bias": (32,), "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,),
              "fc1.weight": (128, 9216), "fc1.bias": (128,), "fc2.weight": (10, 128), "fc2.bias": (10,)}
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


def test_hand_made_state_dict_loads_strictly_and_is_recognised(tmp_path: Path) -> None:
    state = hand_made_mnist_cnn_state()
    MnistCNN().load_state_dict(state, strict=True)
    assert match_seed(state) == ("mnist-cnn", {})
    path = tmp_path / "mnist_cnn.pt"
    torch.save(state, path)
    loaded = load_file(path)
    assert loaded.kind == "state dict" and loaded.arch == "mnist-cnn" and isinstance(loaded.model, MnistCNN)
    out = loaded.model(X)
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)  # log_softmax output


@pytest.mark.parametrize("name", ["mnist-cnn", "lenet5"])
def test_bare_cnn_state_dict_is_recognised(name: str, tmp_path: Path) -> None:
    model = build(name).eval()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    loaded = load_file(tmp_path / "m.pth")
    assert loaded.arch == name and type(loaded.model) is type(model)
    assert torch.equal(loaded.model(X), model(X))


def test_cnn_save_round_trip(tmp_path: Path) -> None:
    model = build("lenet5").eval()
    gm = fxlab.apply(model, "dce")
    path = fxlab.save(gm, tmp_path / "l.pth")
    assert torch.load(path, weights_only=True)["arch"] == "lenet5"
    assert torch.equal(fxlab.load(path)(X), gm(X))


def test_evaluate_loss_of_log_softmax_is_the_nll() -> None:
    logp = F.log_softmax(torch.randn(8, 10), 1)
    y = torch.randint(0, 10, (8,))
    assert torch.allclose(F.cross_entropy(logp, y), F.nll_loss(logp, y))


# -- the user's own classes ----------------------------------------------------------------------

FILE_MODEL = '''
import torch
from torch import nn

class FileNet(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.a = nn.Linear(784, width)
        self.b = nn.Linear(width, 10)

    def forward(self, x):
        return self.b(torch.relu(self.a(x.flatten(1))))
'''


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    from user_models import TinyNet

    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(TinyNet(32).state_dict(), path)
    return path


@pytest.fixture
def file_model(tmp_path: Path) -> Path:
    path = tmp_path / "mynets" / "filenet.py"
    path.parent.mkdir()
    path.write_text(FILE_MODEL)
    return path


def test_user_class_by_module_name(tiny: Path, tmp_path: Path) -> None:
    from user_models import TinyNet

    loaded = load_file(tiny, model="user_models:TinyNet", model_args={"hidden": 32})
    assert isinstance(loaded.model, TinyNet) and loaded.arch == "user:user_models:TinyNet"
    assert loaded.kwargs == {"hidden": 32}
    assert fxlab.load(tiny, model=TinyNet, model_args={"hidden": 32}).fxlab_arch == ("user:user_models:TinyNet",
                                                                                        {"hidden": 32})
    assert isinstance(fxlab.load(tiny, model=lambda: TinyNet(32)), TinyNet)
    instance = TinyNet(32)
    assert fxlab.load(tiny, model=instance) is instance
    # saved on the user's class, loaded back by importing the same module
    gm = fxlab.apply(loaded.model, "fuse-linear-relu")
    path = fxlab.save(gm, tmp_path / "fused.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == "user:user_models:TinyNet" and raw["kwargs"] == {"hidden": 32}
    assert torch.equal(fxlab.load(path)(X), gm(X))


def test_user_class_from_a_file(file_model: Path, tmp_path: Path, capsys) -> None:
    spec = f"{file_model}:FileNet"
    model = fxlab.models.build_spec(spec, {"width": 4})
    torch.save(model.state_dict(), tmp_path / "f.pth")
    loaded = load_file(tmp_path / "f.pth", model=spec, model_args={"width": 4})
    assert type(loaded.model).__name__ == "FileNet" and loaded.arch == f"user:{file_model.resolve()}:FileNet"
    assert torch.equal(loaded.model(X), model.eval()(X))
    assert run("show", [str(tmp_path / "f.pth"), "--model", spec, "--model-args", '{"width": 4}']) == 0
    assert "FileNet" in capsys.readouterr().out
    out = tmp_path / "applied.pth"
    assert run("apply", [str(tmp_path / "f.pth"), "dce", "-o", str(out), "--model", spec,
                         "--model-args", '{"width": 4}']) == 0
    assert torch.equal(fxlab.load(out)(X), model(X))


def test_show_a_user_class_with_random_weights(capsys) -> None:
    assert run("show", ["--model", "user_models:TinyNet", "--model-args", json.dumps({"hidden": 5})]) == 0
    assert "TinyNet" in capsys.readouterr().out


def test_a_file_naming_a_class_not_imported_needs_model_or_trust(file_model: Path, tmp_path: Path, capsys) -> None:
    spec = f"{file_model}:FileNet"
    gm = fxlab.apply(fxlab.models.build_spec(spec), "dce")
    path = fxlab.save(gm, tmp_path / "f.pth")
    import sys

    for name in [m for m in sys.modules if m.startswith("fxlab_user_filenet")]:
        del sys.modules[name]
    assert run("show", [str(path)]) == 2
    assert "--model" in capsys.readouterr().err
    assert run("show", [str(path), "--model", spec]) == 0


ERRORS = [
    (["--model", "user_modls:TinyNet"], "no module named 'user_modls' (closest: user_models"),
    (["--model", "user_models:TinyNt"], "no class 'TinyNt' (closest: TinyNet)"),
    (["--model", "user_models:NotAModule"], "not an nn.Module class"),
    (["--model", "user_models:not_a_class"], "function, not an nn.Module class"),
    (["--model", "user_models:TinyNet", "--model-args", "{bad"], "--model-args is not valid JSON"),
    (["--model", "user_models:TinyNet", "--model-args", "[1]"], "must be a JSON object"),
    (["--model", "user_models:TinyNet", "--model-args", '{"width": 3}'], "unexpected keyword argument 'width'"),
    (["--model", "user_models:TinyNet"], "shapes differ: body.weight [32, 784] vs [16, 784]"),
    (["--model", "lenet5"], "missing conv1.weight"),
    (["--model", "/no/such/dir/net.py:Net"], "no such file: /no/such/dir/net.py"),
    (["--model", "user_models"], "unknown model 'user_models'"),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[m[:24] for _, m in ERRORS])
def test_every_mistake_is_one_line(tiny: Path, args: list[str], message: str, capsys) -> None:
    assert run("show", [str(tiny), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err, err


def test_unexpected_keys_are_named(tmp_path: Path, capsys) -> None:
    state = {**build("lenet5").state_dict(), "extra.weight": torch.zeros(3)}
    torch.save(state, tmp_path / "x.pth")
    assert run("show", [str(tmp_path / "x.pth"), "--model", "lenet5"]) == 2
    assert "unexpected extra.weight" in capsys.readouterr().err
