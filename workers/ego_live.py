"""Users' ego-graph vectors on the live graph, computed wherever their user vectors are (incremental and full).

A user's ego-graph is built from exactly what their user vector reads: the capped items (`capped_neighbours`)
and what each sends to its users (the version's ``in_known`` row, or the vector a new item sends, computed in
the same recompute). Categories and brands come from the version's catalogue (the checkpoint's), so a new item
joins the graph with its vector only. Same inputs, same function: incremental equals full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ml.checkpoint import Checkpoint
from ml.encoders.ego_gin import EgoGIN
from ml.train_ego import ego_vectors
from workers.live import LiveEncoder


def load_ego(state: Mapping | None) -> EgoGIN | None:
    """The checkpoint's ``ego`` entry (hparams + state_dict) as a model, or None for a checkpoint without one."""
    if not state:
        return None
    model = EgoGIN(**state["hparams"])
    model.load_state_dict(state["state_dict"])
    return model.eval()


class EgoEncoder:
    """Ego vectors of users for one model version."""

    def __init__(self, model: EgoGIN, ck: Checkpoint, enc: LiveEncoder) -> None:
        self.model = model.to(enc.device)
        self.enc = enc
        n = len(ck.item_ids)
        ic = ck.item_category if ck.item_category is not None else torch.zeros(2, 0, dtype=torch.long)
        order = np.lexsort((np.arange(ic.size(1)), ic[0].numpy()))
        self.cat_item, self.cat_id = ic[0].numpy()[order], ic[1].numpy()[order]
        self.cat_ptr = np.searchsorted(self.cat_item, np.arange(n + 1))
        self.brand = ck.item_brand.numpy() if ck.item_brand is not None else np.full(n, -1, np.int64)

    @torch.no_grad()
    def vectors(
        self, neighbours: Mapping[str, Sequence[str]], users: Sequence[str], sends: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """Unit vectors [len(users), out] from each user's capped items; ``sends``: what every item not fixed for
        the version that the users reach sends them (as `LiveEncoder.users` takes it)."""
        enc = self.enc
        local: dict[str, int] = {}
        for u in users:
            for i in neighbours.get(u, ()):
                local.setdefault(i, len(local))
        ids = list(local)
        known = [n for n, i in enumerate(ids) if enc.is_fixed(i) and i not in sends]
        vecs = torch.zeros(len(ids), enc.in_known.size(1), device=enc.device)
        if known:
            rows = torch.tensor([enc.row[ids[n]] for n in known], dtype=torch.long, device=enc.device)
            vecs[torch.tensor(known, device=enc.device)] = enc.in_known[rows]
        for n, i in enumerate(ids):
            if i in sends:
                vecs[n] = sends[i].to(enc.device)
        # the catalogue facts of the known items, in local indices (a new item has none in this version)
        pairs_i, pairs_c, brand = [], [], np.full(len(ids), -1, np.int64)
        for n in known:
            r = enc.row[ids[n]]
            cats = self.cat_id[self.cat_ptr[r] : self.cat_ptr[r + 1]]
            pairs_i.extend([n] * len(cats))
            pairs_c.extend(cats.tolist())
            brand[n] = self.brand[r]
        item_category = torch.tensor([pairs_i, pairs_c], dtype=torch.long).reshape(2, -1)
        items = [np.asarray([local[i] for i in neighbours.get(u, ())], np.int64) for u in users]
        return ego_vectors(self.model, items, vecs, item_category, torch.from_numpy(brand)).cpu()


_CACHE: dict[str, EgoEncoder | None] = {}


def ego_encoder(enc: LiveEncoder) -> EgoEncoder | None:
    """The ego encoder of the encoder's version (None when its checkpoint has no ego model), made once."""
    if enc.version not in _CACHE:
        model = load_ego(enc.ck.ego)
        _CACHE[enc.version] = None if model is None else EgoEncoder(model, enc.ck, enc)
    return _CACHE[enc.version]
