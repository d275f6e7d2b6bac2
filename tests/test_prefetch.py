"""Prefetch: the values of consecutive steps, made on a thread of their own ahead of the caller."""

import threading
import time

import pytest

from dalidw.prefetch import Prefetch


def test_consecutive_steps_are_made_ahead_on_another_thread():
    made = []

    def make(step):
        made.append((step, threading.current_thread().name))
        return step * 10

    ahead = Prefetch(make, ahead=2)
    assert ahead(3) == 30
    deadline = time.monotonic() + 5
    while len(made) < 4 and time.monotonic() < deadline:  # 3 taken, 4 and 5 held, 6 waiting to be put
        time.sleep(0.01)
    assert [step for step, _ in made[:3]] == [3, 4, 5]
    assert all(name == "dalidw-prefetch" for _, name in made)
    assert [ahead(4), ahead(5), ahead(6)] == [40, 50, 60]
    ahead.close()


def test_a_step_out_of_sequence_starts_over_from_it():
    ahead = Prefetch(lambda step: step, ahead=2)
    assert [ahead(0), ahead(1), ahead(7), ahead(8), ahead(0)] == [0, 1, 7, 8, 0]
    ahead.close()


def test_an_error_reaches_the_caller_of_its_step_and_the_step_is_tried_again():
    tries = {}

    def make(step):
        tries[step] = tries.get(step, 0) + 1
        if step == 2 and tries[step] == 1:
            raise KeyError("region 7")
        return step

    ahead = Prefetch(make)
    assert [ahead(0), ahead(1)] == [0, 1]
    with pytest.raises(KeyError, match="region 7"):
        ahead(2)
    assert ahead(2) == 2 and tries[2] == 2
    ahead.close()


def test_close_stops_the_thread_and_the_next_step_starts_it_again():
    ahead = Prefetch(lambda step: step, ahead=1)
    ahead(0)
    assert ahead.running
    ahead.close()
    assert not ahead.running
    assert ahead(1) == 1 and ahead.running
    ahead.close()


def test_closed_from_its_own_thread_it_returns_and_the_thread_ends():
    # a Prefetch may be collected, and so closed, on its own thread
    taken, closed = threading.Event(), threading.Event()
    holder = {}

    def make(step):
        if step == 1:
            taken.wait(5)  # once the caller has step 0
            holder["ahead"].close()
            closed.set()
        return step

    holder["ahead"] = ahead = Prefetch(make, ahead=1)
    assert ahead(0) == 0
    taken.set()
    assert closed.wait(5), "close() on the prefetch thread did not return"
    assert not ahead.running
    assert ahead(5) == 5
    ahead.close()
