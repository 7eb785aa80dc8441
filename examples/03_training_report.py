"""Seed 002 with fxlab: train `SimpleNN` and report on it — history plots, confusion matrix,
per-class accuracy, the misclassified images, and a checkpoint dict.

    python examples/03_training_report.py

Environment: FXLAB_DATA (MNIST root; fetched if missing), FXLAB_OUT (output folder, default
./out), FXLAB_QUICK=1 (two short epochs). A progress bar shows when run in a terminal.
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no windows
import matplotlib.pyplot as plt
import torch
from tabulate import tabulate

from fxlab.data import load
from fxlab.models import SimpleNN
from fxlab.train import evaluate, fit, load_checkpoint, save_checkpoint

QUICK = os.environ.get("FXLAB_QUICK") == "1"
OUT = Path(os.environ.get("FXLAB_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

mnist = load()  # FXLAB_DATA, else fxlab's cache folder (fetched once)
torch.manual_seed(0)
model = SimpleNN(input_size=784, hidden_size=128, num_classes=10)
print(f"SimpleNN: {sum(p.numel() for p in model.parameters()):,} parameters")

# train, one line per epoch (the tqdm bar shows on a terminal) ------------------------------------
epochs, batch_size = (2, 512) if QUICK else (6, 128)
history = fit(model, mnist, epochs=epochs, batch_size=batch_size, seed=0,
              on_epoch=lambda e: print(f"epoch {e['epoch']}/{epochs}: lr {e['lr']:.5f}  "
                                       f"train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.2f}%  "
                                       f"test loss {e['test_loss']:.4f} acc {e['test_accuracy']:.2f}%"))

# history: loss, accuracy and learning rate per epoch ---------------------------------------------
ep = [e["epoch"] for e in history.epochs]
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
axes[0].plot(ep, [e["train_loss"] for e in history.epochs], "o-", label="train")
axes[0].plot(ep, [e["test_loss"] for e in history.epochs], "o-", label="test")
axes[0].set(title="loss", xlabel="epoch")
axes[1].plot(ep, [e["train_accuracy"] for e in history.epochs], "o-", label="train")
axes[1].plot(ep, [e["test_accuracy"] for e in history.epochs], "o-", label="test")
axes[1].set(title="accuracy (%)", xlabel="epoch")
axes[2].plot(ep, [e["lr"] for e in history.epochs], "o-")
axes[2].set(title="learning rate at the end of the epoch", xlabel="epoch")
for ax in axes[:2]:
    ax.legend()
for ax in axes:
    ax.grid(True)
plt.tight_layout()
fig.savefig(OUT / "03_history.png")
plt.close(fig)

# confusion matrix and per-class accuracy ----------------------------------------------------------
result = evaluate(model, mnist)
cm = result.confusion  # rows: true digit, columns: predicted digit
print(f"\ntest accuracy {result.accuracy:.2f}%, loss {result.loss:.4f}")
fig, ax = plt.subplots(figsize=(8, 7))
ax.imshow(cm.numpy(), cmap="Blues")
for t in range(10):
    for p in range(10):
        ax.text(p, t, int(cm[t, p]), ha="center", va="center", fontsize=8,
                color="white" if cm[t, p] > cm.max() / 2 else "black")
ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title="confusion matrix")
plt.tight_layout()
fig.savefig(OUT / "03_confusion.png")
plt.close(fig)

per_class = [[d, int(cm[d].sum()), int(cm[d, d]), f"{100 * cm[d, d] / cm[d].sum():.2f}%"] for d in range(10)]
print(tabulate(per_class, headers=["digit", "images", "correct", "accuracy"]))

# error analysis: the first 20 misclassified test images ------------------------------------------
model.eval()
with torch.no_grad():
    predicted = model(mnist.test.images).argmax(1)
wrong = (predicted != mnist.test.labels).nonzero().flatten()
print(f"\n{len(wrong)} misclassified test images; the first 20 are in 03_errors.png")
fig, axes = plt.subplots(4, 5, figsize=(10, 9))
for ax, i in zip(axes.flatten(), wrong[:20].tolist()):
    ax.imshow(mnist.test.images[i, 0].cpu().numpy(), cmap="gray")
    ax.set_title(f"#{i}: true {int(mnist.test.labels[i])}, pred {int(predicted[i])}", fontsize=9)
for ax in axes.flatten():
    ax.axis("off")
plt.tight_layout()
fig.savefig(OUT / "03_errors.png")
plt.close(fig)

# checkpoint: a plain dict with the seed's keys, loadable with torch.load(weights_only=True) -------
path = save_checkpoint(OUT / "simplenn_checkpoint.pth", model, name="simplenn", history=history,
                       accuracy=result.accuracy, final_val_acc=result.accuracy)
checkpoint = torch.load(path, weights_only=True)
print(f"\nwrote {path}: keys {sorted(checkpoint)}")
restored, meta = load_checkpoint(path)
print(f"reloaded: test accuracy {evaluate(restored, mnist).accuracy:.2f}% (saved: {meta['final_val_acc']:.2f}%)")
for name in ("03_history.png", "03_confusion.png", "03_errors.png"):
    print(f"wrote {OUT / name}")
