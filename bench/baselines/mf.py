"""Matrix factorisation (MF-BPR, Rendle et al. 2009): the transductive embedding reference."""

from __future__ import annotations

from torch import Tensor, nn


class MF(nn.Module):
    """One free vector per user and per item.

    Args:
        num_users, num_items: table sizes.
        dim: embedding width.

    ``forward()`` returns (users [U, dim], items [I, dim]); score(u, i) = <users[u], items[i]>.
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 64):
        super().__init__()
        self.user = nn.Embedding(num_users, dim)
        self.item = nn.Embedding(num_items, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.user.weight, self.item.weight

    def ego(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Layer-0 vectors of a batch, for the L2 penalty."""
        return self.user(users), self.item(items)
