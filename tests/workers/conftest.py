"""Fixtures of the worker tests: tiny hand-made graphs (see planted_graphs.py), no services."""

import pytest
import torch

from planted_graphs import planted

torch.set_num_threads(1)  # tiny graphs: one thread, and no spin-wait fights with other jobs


@pytest.fixture()
def planted_split():
    return planted()
