"""Seed 003 with fxlab: `MyMNIST` with configurable hidden layers, a transform, ONNX export.

Seed 003 exports its model with input `images`, output `numbers` and a dynamic batch axis, for
onnxruntime, OpenVINO or TensorRT. Here the float model and an int8 weight-only version of it
(`quantize-linear{mode=weight-only}`) are both exported that way, run with onnxruntime on the
whole test set in one batch, and compared with PyTorch.

    python examples/04_onnx_export.py [--hidden 256,32] [--passes "quantize-linear{mode=weight-only}"]

Environment: FXLAB_DATA (MNIST root; fetched if missing), FXLAB_OUT (output folder, default
./out), FXLAB_QUICK=1 (a shorter training run). Needs `pip install onnx onnxruntime onnxscript`.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import fxlab
from fxlab.data import load
from fxlab.models import MyMNIST
from fxlab.train import evaluate, fit

QUICK = os.environ.get("FXLAB_QUICK") == "1"
OUT = Path(os.environ.get("FXLAB_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--hidden", default="256,32", help="hidden layer sizes, e.g. 512,128,32")
parser.add_argument("--passes", default="quantize-linear{mode=weight-only}", help="the transform (pipeline text)")
args = parser.parse_args()

mnist = load()  # FXLAB_DATA, else fxlab's cache folder (fetched once)
torch.manual_seed(0)
hidden = [int(n) for n in args.hidden.split(",")]
model = MyMNIST(hidden_layers=hidden)
fit(model, mnist, epochs=1 if QUICK else 2, max_steps=150 if QUICK else None, seed=0, progress=False,
    device="cpu")  # on CPU, where onnxruntime runs too
model.eval()
print(f"MyMNIST(hidden_layers={hidden}): test accuracy {evaluate(model, mnist).accuracy:.2f}%")

transformed = fxlab.apply(model, args.passes)
print(f"after {args.passes}: test accuracy {evaluate(transformed, mnist).accuracy:.2f}%")
print(fxlab.records(transformed).table())

images = mnist.test.images.cpu()  # all 10 000 test images: (10000, 1, 28, 28)
labels = mnist.test.labels.cpu().numpy()
for name, net in [("mnist.onnx", model), ("mnist-transformed.onnx", transformed)]:
    path = fxlab.export_onnx(net, OUT / name)  # `images` → `numbers`, dynamic batch axis, checked
    graph = onnx.load(path).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    numbers = session.run(["numbers"], {"images": images.numpy()})[0]  # one batch of 10 000
    with torch.no_grad():
        expected = net(images).numpy()
    accuracy = 100 * float((numbers.argmax(1) == labels).mean())
    print(f"\n{path} ({path.stat().st_size / 1024:.0f} kB): input {graph.input[0].name}{dims} → "
          f"output {graph.output[0].name}, {len(graph.node)} ONNX nodes")
    print(f"  onnxruntime on {len(images)} images: accuracy {accuracy:.2f}%, "
          f"max |onnxruntime − PyTorch| = {np.abs(numbers - expected).max():.2e}, "
          f"same predictions: {(numbers.argmax(1) == expected.argmax(1)).mean() * 100:.2f}%")
