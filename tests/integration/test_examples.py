"""Every example runs as written, in quick mode, on real MNIST; its output and files are checked.

Each script runs in a subprocess with FXLAB_QUICK=1, FXLAB_DATA (never a download) and FXLAB_OUT
pointing at a temporary folder, from that folder as working directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, mnist_root: Path, out: Path, *args: str, measured_kernels: bool = False) -> str:
    """Run ``examples/name`` and return its stdout. With ``measured_kernels`` it runs as a user runs it:
    the quantized and fused modules measure their implementations (a fresh, empty decision cache)
    instead of the reference ops the tests pin with FXLAB_KERNELS=torch."""
    env = {**os.environ, "FXLAB_QUICK": "1", "FXLAB_DATA": str(mnist_root), "FXLAB_OUT": str(out),
           "MPLBACKEND": "Agg"}
    if measured_kernels:
        env.update(FXLAB_KERNELS="auto", XDG_CACHE_HOME=str(out / "cache"))
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=out, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == PNG, f"{path.name} is not a PNG"


def test_every_example_is_tested() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
    tested = sorted(n[len("test_"):] + ".py" for n in globals() if re.fullmatch(r"test_\d\d_\w+", n))
    assert scripts == tested


def test_01_insert_relu(mnist_root: Path, tmp_path: Path) -> None:
    out = run_example("01_insert_relu.py", mnist_root, tmp_path)
    assert "%relu_2 = torch.relu(%layer3)" in out
    assert "return %relu_2" in out
    assert "check: gm(x) == relu(model(x))" in out
    png = tmp_path / "test9.png"
    assert_png(png)
    from PIL import Image

    with Image.open(png) as image:
        assert image.size == (28, 28) and image.mode == "L"
    assert re.search(r"test9\.png: predicted \d \(with the ReLU after layer3: \d\)", out)
    state = torch.load(tmp_path / "model_state_dict.pth", weights_only=True)
    assert sorted(state) == ["layer1.bias", "layer1.weight", "layer2.bias", "layer2.weight",
                             "layer3.bias", "layer3.weight"]


def test_02_train_evaluate(mnist_root: Path, tmp_path: Path) -> None:
    out = run_example("02_train_evaluate.py", mnist_root, tmp_path)
    m = re.search(r"Got (\d+) / 10000 with accuracy (\d+\.\d\d)%", out)
    assert m, out
    correct, accuracy = int(m.group(1)), float(m.group(2))
    assert abs(correct / 100 - accuracy) < 0.01
    assert accuracy > 80  # even the quick run learns
    assert_png(tmp_path / "02_predictions.png")


def test_03_training_report(mnist_root: Path, tmp_path: Path) -> None:
    out = run_example("03_training_report.py", mnist_root, tmp_path)
    assert re.search(r"epoch 2/2: lr [\d.]+ +train loss", out)
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+(\d+)\s+(\d+\.\d\d)%$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == list(range(10))
    assert sum(int(r[1]) for r in rows) == 10_000
    for name in ("03_history.png", "03_confusion.png", "03_errors.png"):
        assert_png(tmp_path / name)
    checkpoint = torch.load(tmp_path / "simplenn_checkpoint.pth", weights_only=True)
    assert {"model_state_dict", "history", "final_val_acc"} <= set(checkpoint)
    assert "fc1.weight" in checkpoint["model_state_dict"]
    assert len(checkpoint["history"]["epochs"]) == 2
    m = re.search(r"reloaded: test accuracy (\d+\.\d\d)% \(saved: (\d+\.\d\d)%\)", out)
    assert m and m.group(1) == m.group(2)


def test_04_onnx_export(mnist_root: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    # measured kernels: the model is evaluated under inference_mode, then exported under no_grad
    out = run_example("04_onnx_export.py", mnist_root, tmp_path, "--hidden", "64,32", measured_kernels=True)
    assert "MyMNIST(hidden_layers=[64, 32])" in out
    for name in ("mnist.onnx", "mnist-transformed.onnx"):
        path = tmp_path / name
        model = onnx.load(path)
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == ["images"]
        assert [o.name for o in model.graph.output] == ["numbers"]
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch in (1, 3):
            (numbers,) = session.run(["numbers"], {"images": torch.randn(batch, 1, 28, 28).numpy()})
            assert numbers.shape == (batch, 10)
    diffs = [float(d) for d in re.findall(r"max \|onnxruntime − PyTorch\| = ([\d.e+-]+)", out)]
    assert len(diffs) == 2 and max(diffs) < 1e-3
    # the int8 weight-only file is much smaller than the float one
    assert (tmp_path / "mnist-transformed.onnx").stat().st_size < 0.5 * (tmp_path / "mnist.onnx").stat().st_size


def test_05_compile_and_draw(mnist_root: Path, tmp_path: Path) -> None:
    out = run_example("05_compile_and_draw.py", mnist_root, tmp_path)
    assert "LinearReLU(784→312)" in out
    svg = (tmp_path / "05_graph.svg").read_text()
    assert "<svg" in svg and "linear_relu_stack" in svg
    assert (tmp_path / "05_graph.dot").read_text().lstrip().startswith(("digraph", "strict digraph"))
    assert ("torch.compile(gm): first call" in out) or ("torch.compile is not available here" in out)
    diffs = [float(d) for d in re.findall(r"max \|Δ\| vs original ([\d.e+-]+)", out)]
    assert len(diffs) >= 2 and max(diffs) < 1e-4


def test_06_pass_library(mnist_root: Path, tmp_path: Path) -> None:
    out = run_example("06_pass_library.py", mnist_root, tmp_path)
    assert "ok: all 5 contracts hold" in out
    report = json.loads((tmp_path / "06_report.json").read_text())
    assert report["exact"]["ok"] is True
    assert [s["name"] for s in report["exact"]["steps"]] == [
        "remove-dropout", "fold-batchnorm", "fuse-linear-relu", "cse", "dce"]
    assert sorted(report["quantize"]) == ["bf16", "dynamic", "fp16", "static", "weight-only"]
    for mode, r in report["quantize"].items():
        (step,) = r["steps"]
        assert step["kind"] == "approximate" and 0 <= step["accuracy"] <= 100, mode
    (step,) = report["changes"]["steps"]
    assert step["kind"] == "changes" and step["retrained_accuracy"] is not None
    for name in ("06_exact.png", "06_changes.png"):
        assert_png(tmp_path / name)


def test_07_mnist_cnn(mnist_root: Path, tmp_path: Path) -> None:
    out = run_example("07_mnist_cnn.py", mnist_root, tmp_path)
    assert "state dict, loaded as mnist-cnn" in out
    assert "remove-dropout" in out and "dce" in out
    state = torch.load(tmp_path / "mnist_cnn.pt", weights_only=True)
    assert sorted(state) == ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight",
                             "fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    accuracy = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert accuracy > 90.0
