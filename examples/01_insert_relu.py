"""Seed 000 with fxlab: insert a ReLU after `layer3`, then read a digit from a PNG file.

Seed 000 trains `MyModule`, saves its state dict to `model_state_dict.pth`, predicts the digit in
`test9.png` with Pillow (`numberlize.py`), and edits the traced graph by hand (`fx_demo.py`).
Here `fxlab.apply` makes the graph edit, and the script makes its own `test9.png` from a real
MNIST test image.

    python examples/01_insert_relu.py

Environment: FXLAB_DATA (MNIST root; fetched if missing), FXLAB_OUT (output folder, default
./out), FXLAB_QUICK=1 (a shorter training run).
"""

import os
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

import fxlab
from fxlab.data import load
from fxlab.models import MyModule
from fxlab.passes import InsertRelu
from fxlab.train import evaluate, fit

QUICK = os.environ.get("FXLAB_QUICK") == "1"
OUT = Path(os.environ.get("FXLAB_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

# 1. fx_demo.py: trace MyModule and insert torch.relu after layer3 -------------------------------
model = MyModule()
gm = fxlab.apply(model, [InsertRelu("layer3")])

print("graph before:")
print(fxlab.format_graph(fxlab.trace(model)))
print("\ngraph after insert-relu{after=layer3}:")
print(fxlab.format_graph(gm))
print()
print(fxlab.render(gm, "graph", diff_against=model))
print(fxlab.records(gm).table())

x = torch.randn(4, 1, 28, 28)
assert torch.equal(gm(x), torch.relu(model(x)))  # the new model is relu(old model)
print("\ncheck: gm(x) == relu(model(x)) on a random batch")

# 2. test.py: train MyModule on MNIST and save its state dict -------------------------------------
mnist = load()  # FXLAB_DATA, else fxlab's cache folder (fetched once)
torch.manual_seed(0)
fit(model, mnist, epochs=1, max_steps=150 if QUICK else None, progress=False, seed=0)
print(f"\ntrained MyModule: test accuracy {evaluate(model, mnist).accuracy:.2f}%")
torch.save(model.state_dict(), OUT / "model_state_dict.pth")

# 3. a PNG to read: the first 9 of the MNIST test set, as an 8-bit grey image (white on black) -----
raw = load().test
index = int((raw.labels == 9).nonzero()[0])
pixels = raw.images[index, 0] * 0.3081 + 0.1307  # undo the normalisation: back to [0, 1]
png = OUT / "test9.png"
Image.fromarray((pixels * 255).round().clamp(0, 255).to(torch.uint8).numpy()).save(png)
print(f"wrote {png} (MNIST test image #{index}, label 9)")

# 4. numberlize.py: load the weights, preprocess the PNG with Pillow + torchvision, predict -------
net = MyModule()
net.load_state_dict(torch.load(OUT / "model_state_dict.pth", weights_only=True))
net.eval()
preprocess = transforms.Compose([
    transforms.Grayscale(),
    transforms.Resize((28, 28)),
    transforms.ToTensor(),
    transforms.Normalize((0.1307,), (0.3081,)),
])
image = preprocess(Image.open(png)).unsqueeze(0)  # (1, 1, 28, 28)
with torch.no_grad():
    digit = int(net(image).argmax(1))
    digit_relu = int(fxlab.apply(net, [InsertRelu("layer3")])(image).argmax(1))
print(f"{png.name}: predicted {digit} (with the ReLU after layer3: {digit_relu})")
