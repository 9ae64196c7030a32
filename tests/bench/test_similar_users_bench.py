"""bench.similar_users' neighbour methods and scores on a hand-made population (no services needed)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from bench.similar_users import nearest_by_cooccurrence, nearest_by_vector, neighbour_scores, random_users


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), np.float32), (r, c)), shape=(len(rows), n_items))


# users 0-2 share items 0-2; user 3 shares one item with user 0; user 4 shares nothing
TRAIN = _csr([[0, 1, 2], [0, 1, 5], [0, 1, 2, 6], [2, 7], [9]], 12)
TEST = _csr([[6], [2], [], [], []], 12)  # user 0 will buy 6 (user 2 has it), user 1 will buy 2 (users 0, 2, 3 have it)


def test_cooccurrence_ranks_by_shared_items_then_index() -> None:
    nb = nearest_by_cooccurrence(TRAIN, np.arange(5), 3)
    assert nb[0].tolist() == [2, 1, 3]  # 3 shared, 2 shared, 1 shared
    assert nb[4].tolist() == [0, 1, 2]  # nothing shared: lowest indices, never itself
    assert all(u not in row for u, row in enumerate(nb))


def test_scores_count_neighbours_holding_the_held_out_item() -> None:
    users = np.array([0, 1])
    nb = np.array([[2, 1] + [3] * 48, [4, 3] + [0] * 48])
    out = neighbour_scores(nb, users, TRAIN, TEST)
    assert out["hit@10"] == 1.0  # user 0: neighbour 2 has item 6; user 1: neighbour 3 has item 2
    assert np.isclose(out["precision@10"], (1 / 10 + 9 / 10) / 2)  # user 1: neighbour 3 and eight copies of user 0
    miss = neighbour_scores(np.array([[4] * 50, [4] * 50]), users, TRAIN, TEST)
    assert miss["hit@10"] == 0.0 and miss["precision@50"] == 0.0


def test_vector_neighbours_exclude_the_user_and_random_ones_are_others() -> None:
    v = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.01]])
    nb = nearest_by_vector(v, np.array([0, 2]), 2)
    assert nb[0].tolist() == [3, 1] and nb[1].tolist()[0] == 1
    rnd = random_users(5, np.arange(5), 4, seed=1)
    assert all(sorted(row.tolist()) == sorted(set(range(5)) - {u}) for u, row in enumerate(rnd))
