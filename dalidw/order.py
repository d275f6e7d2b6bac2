"""The order of tiles: epoch permutations, shards and batches, pure functions of (seed, epoch)."""

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


def local_order(groups: np.ndarray, window: int, epoch: int, *, seed: int) -> np.ndarray:
    """A shuffle that keeps a bounded cache useful: a permutation of the groups (regions), cut into
    windows of ``window`` groups; the tiles of each window are shuffled among themselves.

    Args:
        groups: int (n_tiles,) the group (region) of each tile.
        window: groups per window (>= 1).

    Returns:
        tile positions 0..n_tiles-1, each once, a pure function of (seed, epoch).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x10C])
    names = np.unique(groups)
    picked = names[rng.permutation(len(names))]
    parts = []
    for start in range(0, len(picked), window):
        tiles = np.flatnonzero(np.isin(groups, picked[start : start + window]))
        parts.append(tiles[rng.permutation(len(tiles))])
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def batch_count(n_tiles: int, batch_size: int) -> int:
    """Batches per epoch: ceil(n_tiles / batch_size); the last one may be partial."""
    return -(-n_tiles // batch_size)


def shard_batch_sizes(n_tiles: int, batch_size: int, *, shard_id: int = 0, num_shards: int = 1) -> np.ndarray:
    """Tiles in each batch of one shard's epoch.

    Shard ``shard_id`` holds every ``num_shards``-th tile of the epoch order, so shard sizes differ
    by at most one tile. Every shard has the same number of batches, ceil(ceil(n / shards) / batch),
    so replicas step in lockstep: full batches, then a partial last one. A shard one tile short of
    the largest, whose last batch would be empty, ends with batches of ``batch_size - 1`` and 1 instead.
    With one shard this is ceil(n / batch) batches with only the last one partial.

    Raises:
        ValueError: fewer tiles than shards, or ``batch_size=1`` with unequal shards.
    """
    if n_tiles < num_shards:
        raise ValueError(f"{n_tiles} tiles cannot be split over {num_shards} shards: every shard needs a tile")
    size = n_tiles // num_shards + (1 if shard_id < n_tiles % num_shards else 0)
    count = batch_count(-(-n_tiles // num_shards), batch_size)
    sizes = np.full(count, batch_size, dtype=np.int64)
    sizes[-1] = size - (count - 1) * batch_size
    if sizes[-1] == 0:
        if batch_size == 1:
            raise ValueError(f"batch_size=1 cannot split {n_tiles} tiles over {num_shards} shards so that every shard "
                             "runs the same number of steps; use a batch size of 2 or more")
        sizes[-2] -= 1
        sizes[-1] = 1
    return sizes


def batch_positions(order: np.ndarray, batch: int, batch_size: int, *, shard_id: int = 0,
                    num_shards: int = 1) -> np.ndarray:
    """The tile positions of batch ``batch`` of shard ``shard_id`` of an epoch whose order is ``order``.

    Raises:
        IndexError: the batch is outside ``[0, batch count)``.
    """
    sizes = shard_batch_sizes(len(order), batch_size, shard_id=shard_id, num_shards=num_shards)
    if not 0 <= batch < len(sizes):
        raise IndexError(f"batch index {batch} is out of range for {len(sizes)} batches per epoch")
    start = int(sizes[:batch].sum())
    return order[shard_id::num_shards][start : start + int(sizes[batch])]
