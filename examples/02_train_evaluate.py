"""Seed 001 with fxlab: train and evaluate `NeuralNetwork` (784 → 50 → 10), plot 10 predictions.

Seed 001 trains with a DataLoader of batch 64 for 10 epochs and reports
`Got 9714 / 10000 with accuracy 97.14`. fxlab holds MNIST in memory as tensors and trains with
its default recipe (Adam, one-cycle schedule), which is faster and more accurate.

    python examples/02_train_evaluate.py

Environment: FXLAB_DATA (MNIST root; fetched if missing), FXLAB_OUT (output folder, default
./out), FXLAB_QUICK=1 (one short epoch instead of five).
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no windows
import matplotlib.pyplot as plt
import torch

from fxlab.data import load
from fxlab.models import NeuralNetwork
from fxlab.train import evaluate, fit

QUICK = os.environ.get("FXLAB_QUICK") == "1"
OUT = Path(os.environ.get("FXLAB_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

mnist = load()  # FXLAB_DATA, else fxlab's cache folder (fetched once)
torch.manual_seed(0)
model = NeuralNetwork(input_size=784, num_classes=10)

epochs = 1 if QUICK else 5
history = fit(model, mnist, epochs=epochs, max_steps=200 if QUICK else None, seed=0, progress=False,
              on_epoch=lambda e: print(f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}, "
                                       f"test accuracy {e['test_accuracy']:.2f}% ({e['seconds']:.1f} s)"))

result = evaluate(model, mnist)
num_samples = len(mnist.test)
num_correct = round(result.accuracy * num_samples / 100)
print(f"Got {num_correct} / {num_samples} with accuracy {result.accuracy:.2f}%")

# 10 test images with their label and the model's prediction, as seed 001 plots them
model.eval()
images, labels = mnist.test.images[:10], mnist.test.labels[:10]
with torch.no_grad():
    predictions = model(images).argmax(1)
fig, axs = plt.subplots(2, 5, figsize=(12, 6))
for ax, image, label, prediction in zip(axs.flatten(), images.cpu(), labels.tolist(), predictions.tolist()):
    ax.imshow(image[0].numpy(), cmap="gray")
    ax.set_title(f"Label: {label} - Prediction: {prediction}", color="black" if label == prediction else "red")
    ax.axis("off")
plt.tight_layout()
fig.savefig(OUT / "02_predictions.png")
print(f"wrote {OUT / '02_predictions.png'}")
