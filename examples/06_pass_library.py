"""The whole pass library on a trained model, each pass verified on MNIST.

`SimpleNN` (seed 002) is trained, then:
1. the exact passes — remove-dropout, fold-batchnorm, fuse-linear-relu, cse, dce — each checked
   to keep the outputs (max abs diff, 100 % argmax agreement);
2. every quantization mode on the fused model, each checked against its accuracy budget, with
   its state-dict size and latency;
3. a pass that changes the function on purpose (seed 000's ReLU after the last layer), with
   fine-tuning and the accuracy it recovers.
Reports are printed as tables and written as JSON and PNG.

    python examples/06_pass_library.py

Environment: FXLAB_DATA (MNIST root; fetched if missing), FXLAB_OUT (output folder, default
./out), FXLAB_QUICK=1 (shorter training).
"""

import io
import json
import os
import statistics
import time
from pathlib import Path

import torch
from tabulate import tabulate

import fxlab
from fxlab.data import load
from fxlab.models import SimpleNN
from fxlab.passes import QuantizeLinear
from fxlab.train import fit

QUICK = os.environ.get("FXLAB_QUICK") == "1"
OUT = Path(os.environ.get("FXLAB_OUT", "out"))
OUT.mkdir(parents=True, exist_ok=True)

mnist = load(device="cpu")  # FXLAB_DATA, else fxlab's cache folder (fetched once)
torch.manual_seed(0)
model = SimpleNN()
fit(model, mnist, epochs=1 if QUICK else 4, max_steps=200 if QUICK else None, seed=0, progress=False, device="cpu")
model.eval()

# 1. exact passes: same function up to float rounding ---------------------------------------------
exact = fxlab.verify(model, "remove-dropout,fold-batchnorm,fuse-linear-relu,cse,dce", data=mnist, device="cpu")
print(exact.table())
print(exact.summary())
fused = exact.model

# 2. quantization modes on the fused model: accuracy within budget, smaller, faster? -------------
calibration = [mnist.train.batch(slice(i, i + 256))[0] for i in range(0, 1024, 256)]  # for static mode
x = mnist.test.images[:256]


def state_dict_kb(m):
    buffer = io.BytesIO()
    torch.save(m.state_dict(), buffer)
    return buffer.tell() / 1024


def latency_ms(m, repeats=5, calls=10):
    with torch.no_grad():
        for _ in range(20):  # warm-up
            m(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                m(x)
            times.append((time.perf_counter() - start) / calls * 1e3)
    return statistics.median(times)


rows = [["float32 (fused)", "", f"{exact.steps[-1].accuracy:.2f}%", "", "", f"{state_dict_kb(fused):.0f}",
         f"{latency_ms(fused):.3f}", ""]]
quantized = {}
for mode in ["dynamic", "weight-only", "bf16", "fp16", "static"]:
    q = QuantizeLinear(mode=mode, calibration=calibration if mode == "static" else None)
    report = fxlab.verify(fused, [q], data=mnist, device="cpu")
    step = report.steps[0]
    quantized[mode] = report
    rows.append([f"quantize-linear{{mode={mode}}}", step.kind, f"{step.accuracy:.2f}%", f"{step.delta:+.2f}",
                 f"≤ {step.budget}", f"{state_dict_kb(report.model):.0f}", f"{latency_ms(report.model):.3f}",
                 step.verdict])
print()
print(tabulate(rows, headers=["model", "kind", "accuracy", "Δ", "budget", "state dict kB",
                              "ms / batch of 256", "verdict"], disable_numparse=True))
print(quantized["dynamic"].steps[0].diff_text())

# 3. a pass that changes the function: ReLU after the last layer, then fine-tuning ----------------
changed = fxlab.verify(model, "insert-relu{after=fc3}", data=mnist, device="cpu",
                       retrain_epochs=0.1 if QUICK else 1)
print()
print(changed.table())
print(changed.summary())

# reports as JSON and pictures ---------------------------------------------------------------------
document = {
    "exact": exact.to_dict(),
    "quantize": {mode: r.to_dict() for mode, r in quantized.items()},
    "changes": changed.to_dict(),
}
(OUT / "06_report.json").write_text(json.dumps(document, indent=1) + "\n")
exact.plot(OUT / "06_exact.png")
changed.plot(OUT / "06_changes.png")
for name in ("06_report.json", "06_exact.png", "06_changes.png"):
    print(f"wrote {OUT / name}")
