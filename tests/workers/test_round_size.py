"""A round's size (workers.round_size): as many marks as the process's recent rounds took in the target seconds,
within the floor and the batch, most of them the newest; growing while rounds find a backlog, up to the maximum
seconds; off at a target of 0."""

from __future__ import annotations

import pytest

from workers.round_size import FLOOR, RoundSize


def test_the_first_round_takes_the_floor_then_rounds_follow_the_measured_rate():
    size = RoundSize(target_s=0.5, batch=20000, oldest_share=0.1)
    assert size.next() == (FLOOR, FLOOR - 10)  # nothing measured: the floor, not the batch (a 25-s round)
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


def test_rounds_double_while_they_find_a_backlog_up_to_the_maximum_then_return_to_the_target():
    size = RoundSize(target_s=0.5, batch=20000, oldest_share=0.0, max_s=2.0, rate=800.0)
    assert size.next()[0] == 400
    taken = []
    for _ in range(4):  # each round takes all it may, and finds more (the rate measured stays 800/s)
        limit = size.next()[0]
        size.record(limit, limit / 800.0, backlog=True)
        taken.append(size.next()[0])
    assert taken == [800, 1600, 1600, 1600]  # 1 s, then 2 s of marks: the maximum
    size.record(300, 300 / 800.0, backlog=False)  # caught up
    assert size.next()[0] == 400


def test_the_first_rounds_grow_from_the_floor_under_a_backlog():
    size = RoundSize(target_s=0.5, batch=20000, oldest_share=0.0, max_s=2.0)
    size.record(FLOOR, 2.0, backlog=True)  # a cold start: 50 marks/s measured, and more waiting
    assert size.next()[0] == FLOOR  # 1 s of 50/s
    size.record(FLOOR, 0.1, backlog=True)  # 1,000/s: the average 525/s, 2 s of it
    assert size.next()[0] == 1050


def test_no_growth_with_the_maximum_at_or_below_the_target():
    size = RoundSize(target_s=0.5, batch=20000, oldest_share=0.0, max_s=0.0, rate=800.0)
    size.record(400, 0.5, backlog=True)
    assert size.next()[0] == 400


@pytest.mark.parametrize("share, newest", [(0.0, 400), (1.0, 0)])
def test_the_oldest_share_bounds_the_newest(share, newest):
    size = RoundSize(target_s=0.5, batch=20000, oldest_share=share, rate=800.0)
    assert size.next() == (400, newest)


def test_a_target_of_zero_takes_the_oldest_batch():
    size = RoundSize(target_s=0.0, batch=20000, oldest_share=0.1, rate=800.0)
    size.record(20000, 25.0, backlog=True)
    assert size.next() == (20000, 0)
