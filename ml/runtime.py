"""Process-level set-up shared by training and evaluation: device choice, threads, seeds."""

from __future__ import annotations

import random

import numpy as np
import torch
from threadpoolctl import threadpool_limits


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise; the same code runs on both."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


_threads: list[int] = []  # the last set_threads' n: a worker's every task sets it, and BLAS's limit costs ~1 ms


def set_threads(n: int) -> None:
    """Intra-op threads for CPU sparse/dense kernels, torch's and BLAS's (a process's last call holds for both);
    one per core is fastest on small machines."""
    if _threads == [n] and torch.get_num_threads() == n:
        return
    torch.set_num_threads(n)
    threadpool_limits(n)
    _threads[:] = [n]


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a CPU generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
