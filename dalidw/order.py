"""The order of tiles: epoch permutations and batches, pure functions of (seed, epoch)."""

from __future__ import annotations

import numpy as np


def epoch_order(n_tiles: int, epoch: int, *, seed: int | None, shuffle: bool) -> np.ndarray:
    """Tile positions (0..n_tiles-1) in the order of the given epoch.

    With ``shuffle=False`` this is the table order. With ``shuffle=True`` it is a permutation
    drawn from a generator seeded with ``(seed, epoch)`` alone, so every epoch is reproducible
    on its own and no global random state is read or changed. ``seed=None`` draws a fresh seed.
    """
    if not shuffle:
        return np.arange(n_tiles, dtype=np.int64)
    if seed is None:
        raise ValueError("epoch_order needs a seed when shuffle=True; the loader draws one if none is given")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
    return rng.permutation(n_tiles).astype(np.int64)


def batch_count(n_tiles: int, batch_size: int) -> int:
    """Batches per epoch: ceil(n_tiles / batch_size); the last one may be partial."""
    return -(-n_tiles // batch_size)


def batch_positions(order: np.ndarray, batch: int, batch_size: int) -> np.ndarray:
    """The tile positions of batch ``batch`` of an epoch whose order is ``order``.

    Raises:
        IndexError: the batch is outside ``[0, batch_count)``.
    """
    count = batch_count(len(order), batch_size)
    if not 0 <= batch < count:
        raise IndexError(f"batch index {batch} is out of range for {count} batches per epoch")
    return order[batch * batch_size : (batch + 1) * batch_size]
