"""The order of tiles: epoch permutations, shards, batches and augmentation draws, pure functions
of (seed, epoch). Nothing here knows of images or DALI."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from .augment import draw_codes
from .errors import OptionError
from .options import is_int

#: Salts that keep the random streams of one (seed, epoch) apart.
LOCALITY_SALT = 0x10C
AUGMENT_SALT = 0xA06


def epoch_rng(seed: int, epoch: int, salt: int | None = None) -> np.random.Generator:
    """The generator of one (seed, epoch) stream; seeds are taken modulo 2**32."""
    key = [int(seed) & 0xFFFFFFFF, int(epoch)] + ([] if salt is None else [salt])
    return np.random.default_rng(key)


def epoch_order(n_tiles: int, epoch: int, *, seed: int | None, shuffle: bool) -> np.ndarray:
    """Tile positions (0..n_tiles-1) in the order of the given epoch.

    With ``shuffle=False`` this is the table order. With ``shuffle=True`` it is a permutation
    drawn from a generator seeded with ``(seed, epoch)`` alone, so every epoch is reproducible
    on its own and no global random state is read or changed.

    Raises:
        ValueError: ``shuffle=True`` without a seed (the loader draws one where none is given).
    """
    if not shuffle:
        return np.arange(n_tiles, dtype=np.int64)
    if seed is None:
        raise ValueError("epoch_order needs a seed when shuffle=True; the loader draws one if none is given")
    return epoch_rng(seed, epoch).permutation(n_tiles).astype(np.int64)


def local_order(groups: np.ndarray, window: int, epoch: int, *, seed: int) -> np.ndarray:
    """A shuffle that keeps a bounded cache useful: a permutation of the groups (regions), cut into
    windows of ``window`` groups; the tiles of each window are shuffled among themselves.

    Args:
        groups: int (n_tiles,) the group (region) of each tile.
        window: groups per window (>= 1).

    Returns:
        tile positions 0..n_tiles-1, each once, a pure function of (seed, epoch).
    """
    rng = epoch_rng(seed, epoch, LOCALITY_SALT)
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
        raise OptionError(f"{n_tiles} tiles cannot be split over {num_shards} shards: every shard needs a tile")
    size = n_tiles // num_shards + (1 if shard_id < n_tiles % num_shards else 0)
    count = batch_count(-(-n_tiles // num_shards), batch_size)
    sizes = np.full(count, batch_size, dtype=np.int64)
    sizes[-1] = size - (count - 1) * batch_size
    if sizes[-1] == 0:
        if batch_size == 1:
            raise OptionError(f"batch_size=1 cannot split {n_tiles} tiles over {num_shards} shards so that every shard "
                             "runs the same number of steps; use a batch size of 2 or more")
        sizes[-2] -= 1
        sizes[-1] = 1
    return sizes


def batch_positions(order: np.ndarray, batch: int, batch_size: int, *, shard_id: int = 0,
                    num_shards: int = 1, sizes: np.ndarray | None = None) -> np.ndarray:
    """The tile positions of batch ``batch`` of shard ``shard_id`` of an epoch whose order is ``order``
    (``sizes``: that shard's :func:`shard_batch_sizes`, when already known).

    Raises:
        IndexError: the batch is outside ``[0, batch count)``.
    """
    if sizes is None:
        sizes = shard_batch_sizes(len(order), batch_size, shard_id=shard_id, num_shards=num_shards)
    if not 0 <= batch < len(sizes):
        raise IndexError(f"batch index {batch} is out of range for {len(sizes)} batches per epoch")
    start = int(sizes[:batch].sum())
    return order[shard_id::num_shards][start : start + int(sizes[batch])]


class EpochOrder:
    """Which tiles, in which order and with which augmentation, make up each batch of each epoch.

    A pure function of (seed, epoch, shard): ``positions(epoch, i)`` is the same whenever and from
    whichever thread it is asked. The last two epochs asked for are memoized (the numpy path and the
    TensorFlow input thread may be an epoch apart), under a lock of its own.

    Args:
        n_tiles: tiles in the table.
        batch_size: tiles per batch (the last batch of a shard's epoch may be smaller).
        seed: the seed of the permutations and augmentation draws.
        shuffle: a new permutation every epoch; False keeps the table order.
        groups: int (n_tiles,) region of each tile, with ``locality``.
        locality: regions per shuffle window (see :func:`local_order`), or None.
        augment: the transform codes to draw from (``augment.parse_augment``); (0,) for none.
        shard_id, num_shards: this order's shard of every epoch.
    """

    def __init__(self, n_tiles: int, batch_size: int, *, seed: int, shuffle: bool = True,
                 groups: np.ndarray | None = None, locality: int | None = None, augment: tuple[int, ...] = (0,),
                 shard_id: int = 0, num_shards: int = 1):
        if locality is not None and groups is None:
            raise ValueError("EpochOrder with locality needs the groups (regions) of the tiles")
        self.n_tiles = int(n_tiles)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.groups = groups
        self.locality = locality
        self.augment = tuple(augment)
        self.shard_id = int(shard_id)
        self.num_shards = int(num_shards)
        self.batch_sizes = shard_batch_sizes(self.n_tiles, self.batch_size, shard_id=self.shard_id,
                                             num_shards=self.num_shards)
        self._memo: dict[tuple[str, int], np.ndarray | None] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Batches per epoch of this shard."""
        return len(self.batch_sizes)

    @property
    def augments(self) -> bool:
        """Whether samples get a random transform."""
        return self.augment != (0,)

    def for_shard(self, shard_id: int, num_shards: int, *, batch_size: int | None = None) -> EpochOrder:
        """The same epochs seen as shard ``shard_id`` of ``num_shards``."""
        return EpochOrder(self.n_tiles, self.batch_size if batch_size is None else batch_size, seed=self.seed,
                          shuffle=self.shuffle, groups=self.groups, locality=self.locality, augment=self.augment,
                          shard_id=shard_id, num_shards=num_shards)

    def _memoized(self, kind: str, epoch: int, make: Callable[[], np.ndarray | None]) -> np.ndarray | None:
        key = (kind, epoch)
        with self._lock:
            if key not in self._memo:
                if len(self._memo) >= 4:
                    self._memo.pop(next(iter(self._memo)))
                self._memo[key] = make()
            return self._memo[key]

    def epoch(self, epoch: int) -> np.ndarray:
        """int64 (n_tiles,) tile positions of the whole epoch, before sharding."""
        epoch = check_epoch(epoch)
        if self.locality is not None:
            return self._memoized("order", epoch, lambda: local_order(self.groups, self.locality, epoch,
                                                                      seed=self.seed))
        return self._memoized("order", epoch, lambda: epoch_order(self.n_tiles, epoch, seed=self.seed,
                                                                  shuffle=self.shuffle))

    def positions(self, epoch: int, index: int) -> np.ndarray:
        """int64 (b,) table positions of batch ``index`` (negative counts from the end) of ``epoch``.

        Raises:
            TypeError: ``index`` is not an int.
            IndexError: ``index`` is outside the epoch's batches.
        """
        if not is_int(index):
            raise TypeError(f"batch index must be an int, got {type(index).__name__}")
        index = int(index) + (len(self) if index < 0 else 0)
        return batch_positions(self.epoch(epoch), index, self.batch_size, shard_id=self.shard_id,
                               num_shards=self.num_shards, sizes=self.batch_sizes)

    def codes(self, epoch: int, positions: np.ndarray) -> np.ndarray | None:
        """int8 (b,) augmentation transform of each tile at ``positions`` in ``epoch``, or None."""
        if not self.augments:
            return None
        epoch = check_epoch(epoch)
        codes = self._memoized("augment", epoch, lambda: draw_codes(self.augment, self.n_tiles,
                                                                    epoch_rng(self.seed, epoch, AUGMENT_SALT)))
        return codes[positions]


def check_epoch(epoch: object) -> int:
    """``epoch`` as an int >= 0.

    Raises:
        ValueError: it is not a non-negative int.
    """
    if not is_int(epoch) or epoch < 0:
        raise OptionError(f"Expected an epoch to be an int >= 0. Received: {epoch!r}")
    return int(epoch)
