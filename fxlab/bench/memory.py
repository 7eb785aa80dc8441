"""Memory probes: peak tensor bytes of one call, state-dict size, peak RSS of a training process."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .harness import failed


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C++ writes to fd 2 (the profiler's own log lines) for the duration."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def _cpu_allocation_events(fn: Callable[[], Any]) -> list[tuple[int, int]]:
    """(time, bytes) of every allocation (+) and free (-) of the CPU tensor allocator while ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
        del out
        try:  # every allocation and free of the CPU allocator, in order (inside compiled code too)
            raw = prof.profiler.kineto_results.events()
            return sorted((e.start_ns(), e.nbytes()) for e in raw if e.name() == "[memory]")
        except AttributeError:  # older torch: allocations attributed to operators instead
            return sorted(
                (e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage
            )


def peak_tensor_bytes(fn: Callable[[], Any], device: Any) -> int:
    """Peak bytes of tensors allocated and alive at once while ``fn()`` runs, beyond what existed.

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset. On CPU: replays torch.profiler's
    record of every allocation and free of the CPU tensor allocator, in order. Both count tensor
    storage only: weights and inputs that already exist are excluded; scratch memory that
    libraries allocate outside torch's allocator (e.g. oneDNN's) is not seen.
    """
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak)
    current = peak = 0
    for _, delta in _cpu_allocation_events(fn):
        current += delta
        peak = max(peak, current)
    return int(peak)


def state_dict_bytes(module: Any) -> int:
    """Size of ``torch.save(module.state_dict())``: weights as stored (int8 weights and scales included)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(module.state_dict(), buffer)
    return buffer.tell()


# The probe process: VmHWM is its own peak (Linux's ru_maxrss keeps the parent's peak across fork + exec).
_RSS_PROBE = (
    "import resource, sys\n"
    "from fxlab import data, models, train\n"
    "steps = None if sys.argv[2] == 'epoch' else int(sys.argv[2])\n"
    "d = data.load(sys.argv[1], download=False)\n"
    "train.fit(models.build('mymodule'), d, epochs=1, device='cpu', progress=False, max_steps=steps)\n"
    "try:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
    "    print(int(hwm.split()[1]) * 1024)\n"
    "except (OSError, IndexError):\n"
    "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == 'darwin' else 1024))\n"
)


def training_rss(root: str, steps: int | None) -> dict[str, Any]:
    """Peak RSS of a fresh CPU process that loads MNIST and trains mymodule with fxlab's defaults.

    ``steps``: optimizer steps (``None``: one full epoch). Returns ``status`` and, when it ran,
    ``peak_rss_bytes``, ``seconds`` and ``what`` was measured.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, root, "epoch" if steps is None else str(steps)],
            capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"status": failed(exc)}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"status": f"failed: {tail[:200]}"}
    what = "one epoch" if steps is None else f"{steps} steps"
    return {"status": "ok", "peak_rss_bytes": int(proc.stdout.strip().splitlines()[-1]),
            "seconds": time.perf_counter() - start,
            "what": f"VmHWM of a fresh Python process that imports torch + fxlab, loads MNIST, trains mymodule {what}"}
