"""The process around training: torchrun's process group, peak memory."""

from __future__ import annotations

import os
import resource
import sys

import torch

from .._util import default_device


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB (CPU; Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device) if device else default_device()
    if world <= 1:
        return 0, 1, dev
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), dev

