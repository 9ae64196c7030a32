"""A round's size under a backlog (workers.round_size): as many marks as the process's recent rounds took in the
target seconds, within the floor and the batch, most of them the newest; off at a target of 0."""

from __future__ import annotations

import pytest

from workers.round_size import FLOOR, RoundSize


def test_the_first_round_takes_the_batch_then_rounds_follow_the_measured_rate():
    size = RoundSize(target_s=0.5, batch=20000, oldest_share=0.1)
    assert size.next() == (20000, 18000)  # nothing measured: the batch, as before
    size.record(6000, 7.5)  # 800 marks/s
    assert size.next() == (400, 360)  # 0.5 s of it, 40 of them the oldest
    size.record(400, 0.25)  # 1,600 marks/s: the average moves halfway
    assert size.next() == (600, 540)


def test_small_rounds_do_not_move_the_rate_and_the_floor_and_batch_bound_it():
    size = RoundSize(target_s=0.5, batch=1000, oldest_share=0.25)
    size.record(FLOOR - 1, 10.0)  # a quiet round: its fixed cost, not the per-mark rate
    assert size.rate is None
    size.record(FLOOR, 100.0)  # 1 mark/s
    assert size.next() == (FLOOR, FLOOR - 25)
    size.record(10**6, 1.0)
    assert size.next()[0] == 1000


@pytest.mark.parametrize("share, newest", [(0.0, 400), (1.0, 0)])
def test_the_oldest_share_bounds_the_newest(share, newest):
    size = RoundSize(target_s=0.5, batch=20000, oldest_share=share, rate=800.0)
    assert size.next() == (400, newest)


def test_a_target_of_zero_takes_the_oldest_batch():
    size = RoundSize(target_s=0.0, batch=20000, oldest_share=0.1, rate=800.0)
    assert size.next() == (20000, 0)
