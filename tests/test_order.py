"""Epoch order: every tile once per epoch, reproducible from (seed, epoch), and batches that cover it."""

import numpy as np
import pytest

from dalidw.order import batch_count, batch_positions, epoch_order


@pytest.mark.parametrize("n", [1, 7, 100, 1001])
def test_every_tile_appears_exactly_once_per_epoch(n):
    for epoch in range(3):
        order = epoch_order(n, epoch, seed=3, shuffle=True)
        assert sorted(order.tolist()) == list(range(n))


def test_same_seed_and_epoch_give_the_same_order_and_epochs_differ():
    a = epoch_order(500, 0, seed=42, shuffle=True)
    assert np.array_equal(a, epoch_order(500, 0, seed=42, shuffle=True))
    assert not np.array_equal(a, epoch_order(500, 1, seed=42, shuffle=True))
    assert not np.array_equal(a, epoch_order(500, 0, seed=43, shuffle=True))


def test_order_ignores_global_random_state():
    np.random.seed(0)
    a = epoch_order(100, 2, seed=1, shuffle=True)
    np.random.seed(99)
    np.random.rand(10)
    assert np.array_equal(a, epoch_order(100, 2, seed=1, shuffle=True))


def test_no_shuffle_keeps_table_order():
    assert epoch_order(5, 4, seed=None, shuffle=False).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n, b", [(10, 3), (9, 3), (1, 5), (100, 32)])
def test_batches_cover_the_epoch_and_only_the_last_is_partial(n, b):
    order = epoch_order(n, 0, seed=0, shuffle=True)
    batches = [batch_positions(order, i, b) for i in range(batch_count(n, b))]
    assert np.array_equal(np.concatenate(batches), order)
    assert all(len(x) == b for x in batches[:-1])
    assert len(batches[-1]) == n - b * (len(batches) - 1)


def test_batch_index_out_of_range_is_an_index_error():
    with pytest.raises(IndexError, match="out of range for 4 batches"):
        batch_positions(np.arange(10), 4, 3)


def test_a_local_shuffle_keeps_every_tile_once_and_windows_of_regions_together():
    from dalidw.order import local_order

    groups = np.repeat(np.arange(6), [5, 9, 1, 7, 4, 8])
    for epoch in range(3):
        order = local_order(groups, 2, epoch, seed=4)
        assert sorted(order.tolist()) == list(range(len(groups)))
        in_order = groups[order]
        by_first_tile = sorted(range(6), key=lambda g: np.flatnonzero(in_order == g)[0])
        for k in range(0, 6, 2):  # windows of 2 regions, one after the other
            span = np.flatnonzero(np.isin(in_order, by_first_tile[k : k + 2]))
            assert span[-1] - span[0] + 1 == len(span), f"window {k // 2} is not contiguous"
    assert not np.array_equal(local_order(groups, 2, 0, seed=4), local_order(groups, 2, 1, seed=4))
    np.testing.assert_array_equal(local_order(groups, 2, 1, seed=4), local_order(groups, 2, 1, seed=4))
