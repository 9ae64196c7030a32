"""Training losses shared by the encoders' trainers and the bench-only references."""

from __future__ import annotations

import torch


def bpr_loss(u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(<u, pos> - <u, neg>), averaged; shapes [B, d]."""
    return torch.nn.functional.softplus(-((u * pos).sum(-1) - (u * neg).sum(-1))).mean()
