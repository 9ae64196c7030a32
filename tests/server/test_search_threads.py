"""Searches run FAISS on the calling thread alone, whichever thread serves the call."""

from __future__ import annotations

import threading

import faiss

from server.engine import Engine, ItemFilter
from tests.server.conftest import base_settings, load_items


def test_a_search_from_a_front_end_thread_runs_faiss_single_threaded(server_graph_settings) -> None:
    engine = Engine(base_settings(), server_graph_settings, None)
    load_items(engine)  # 300 items over ann_min_items 100: an IVF base, whose search has OpenMP parallel regions
    assert engine.serving is not None and engine.serving.index.base.is_ivf
    seen: list[int] = []

    def front_end_thread() -> None:
        # OpenMP's thread count is per thread: a thread other than main starts from OMP_NUM_THREADS or the
        # core count, whatever the main thread set. Start from 2, as on this machine without the variable.
        faiss.omp_set_num_threads(2)
        answer = engine.similar_items("item-0", 5, ItemFilter())
        assert len(answer.items) == 5
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=front_end_thread)
    thread.start()
    thread.join()
    assert seen == [1]
