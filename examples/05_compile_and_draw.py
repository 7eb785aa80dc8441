"""Seed 004 with fxlab: transform the model, `torch.compile` the GraphModule, draw the graph.

Seed 004 trains `NeuralNetwork` (Flatten + Sequential 784 → 312 → 256 → 10) under
`torch.compile` and looks at the saved model in Netron. Here the traced model is transformed
(`fuse-linear-relu`), compiled, compared with the original for speed and outputs, and drawn to
SVG with Graphviz (changed nodes coloured) — a Netron view without a GUI.

    python examples/05_compile_and_draw.py

Environment: FXLAB_DATA (MNIST root; fetched if missing), FXLAB_OUT (output folder, default
./out), FXLAB_QUICK=1 (a shorter training run). torch.compile on CPU needs a C++ compiler; the
`dot` program comes from the system package `graphviz`.
"""

import os
import statistics
import time
from pathlib import Path

import torch

import fxlab
from fxlab.data import load
from fxlab.models import LinearReluStack
from fxlab.train import evaluate, fit

QUICK = os.environ.get("FXLAB_QUICK") == "1"
OUT = Path(os.environ.get("FXLAB_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

mnist = load()  # FXLAB_DATA, else fxlab's cache folder (fetched once)
torch.manual_seed(0)
model = LinearReluStack()  # seed 004's NeuralNetwork
fit(model, mnist, epochs=1 if QUICK else 2, batch_size=320, max_steps=100 if QUICK else None, seed=0,
    progress=False, device="cpu")
model.eval()

gm = fxlab.apply(model, "fuse-linear-relu")
print(fxlab.render(gm, "graph", diff_against=model))
print(f"test accuracy: original {evaluate(model, mnist).accuracy:.2f}%, transformed {evaluate(gm, mnist).accuracy:.2f}%")

# the graph as SVG (and Graphviz source), changed nodes coloured ----------------------------------
(OUT / "05_graph.svg").write_text(fxlab.render(gm, "svg", diff_against=model))
(OUT / "05_graph.dot").write_text(fxlab.render(gm, "dot", diff_against=model))
print(f"wrote {OUT / '05_graph.svg'} and {OUT / '05_graph.dot'}")


def median_ms(fn, x, repeats=7, calls=20):
    """Median milliseconds per call over `repeats` rounds of `calls` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


x = mnist.test.images[:320].cpu()  # seed 004's batch size
runs = {"original (eager)": model, "fuse-linear-relu (eager)": gm}
try:
    compiled = torch.compile(gm)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(x)  # the first call compiles
    print(f"\ntorch.compile(gm): first call (compilation) {time.perf_counter() - start:.1f} s")
    runs["fuse-linear-relu + torch.compile"] = compiled
except Exception as exc:  # e.g. no C++ compiler on this machine
    print(f"\ntorch.compile is not available here: {type(exc).__name__}: {str(exc).splitlines()[0]}")

with torch.no_grad():
    reference = model(x)
    for name, fn in runs.items():
        for _ in range(20):  # warm-up
            fn(x)
        diff = (fn(x) - reference).abs().max().item()
        print(f"{name:34s} {median_ms(fn, x):7.3f} ms per batch of {len(x)}   max |Δ| vs original {diff:.1e}")
