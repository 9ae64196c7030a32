import numpy as np
import scipy.sparse as sp
import torch

from ml.sampling import NegativeSampler, cap_neighbours


def test_cap_keeps_top_n_by_weight_ties_by_id():
    # target node 0 has sources 5,3,4,2 with weights 1,2,2,2 -> cap 2 keeps the weight-2 edges of sources 2 and 3
    index = torch.tensor([[5, 3, 4, 2, 1], [0, 0, 0, 0, 1]])
    weight = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5])
    keep = cap_neighbours(index, weight, cap=2)
    kept = sorted(index[0, keep & (index[1] == 0)].tolist())
    assert kept == [2, 3]
    assert bool(keep[4])  # node 1 has one edge: kept


def test_cap_is_independent_of_edge_order_and_other_nodes():
    g = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randint(0, 50, (300,), generator=g), torch.randint(0, 10, (300,), generator=g)])
    weight = torch.randint(1, 4, (300,), generator=g).float()
    full = cap_neighbours(index, weight, cap=5)
    kept_full = {(int(s), int(d)) for s, d in index[:, full].T}
    perm = torch.randperm(300, generator=g)
    kept_perm = {(int(s), int(d)) for s, d in index[:, perm][:, cap_neighbours(index[:, perm], weight[perm], 5)].T}
    assert kept_full == kept_perm
    # the subgraph of node 3's edges alone keeps exactly node 3's edges of the full cap
    m = index[1] == 3
    sub = cap_neighbours(index[:, m], weight[m], 5)
    assert {(int(s), 3) for s in index[0, m][sub]} == {e for e in kept_full if e[1] == 3}
    assert all(sum(1 for e in kept_full if e[1] == d) <= 5 for d in range(10))


def test_negatives_are_not_positives():
    r = sp.csr_matrix(np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=np.float32))
    s = NegativeSampler(r, np.random.default_rng(0))
    users = np.array([0, 1] * 200)
    neg = s.sample(users, tries=20)
    assert not s.is_positive(users, neg).any()
