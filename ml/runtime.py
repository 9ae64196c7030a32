"""Process-level set-up shared by training and evaluation: device choice, threads, seeds."""

from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA when present (or asked for), CPU otherwise; the same code runs on both."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def set_threads(n: int) -> None:
    """Intra-op threads for CPU sparse/dense kernels; one per core is fastest on small machines."""
    torch.set_num_threads(n)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a CPU generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
