"""SequenceDataLoader: ties the table, the checks, the order, the frames and the DALI graph together."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .augment import draw_codes, parse_augment
from .bands import ChannelSpec
from .decode import RegionDecoder
from .devices import resolve_device
from .index import LAST_IMAGE, build_table
from .normalize import affine
from .order import batch_positions, epoch_order, local_order, shard_batch_sizes
from .pipeline import FRAMES, TARGET, GraphSpec, build_pipeline
from .regions import FrameSource, RegionCache
from .validate import check_images

#: Default bound of the decoded-region cache, in bytes (2 GiB).
DEFAULT_CACHE_BYTES = 2 << 30


def _check_options(labels: Sequence[Any], dim: Any, batch_size: Any) -> tuple[int, int]:
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or len(labels) == 0:
        raise ValueError("Expected `labels` to be a non-empty list of labels (e.g. years). "
                         f"Received: labels={labels!r}")
    if len({str(v) for v in labels}) != len(labels):
        raise ValueError(f"Expected `labels` to hold each label once. Received: labels={list(labels)!r}")
    ok_dim = (isinstance(dim, (tuple, list)) and len(dim) == 2
              and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in dim))
    if not ok_dim:
        raise ValueError(f"Expected `dim` to be (height, width) of positive ints. Received: dim={dim!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive int. Received: batch_size={batch_size!r}")
    return int(dim[0]), int(dim[1])


def _check_shard(shard_id: Any, num_shards: Any) -> tuple[int, int]:
    ints = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (shard_id, num_shards))
    if not ints or num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError("Expected 0 <= shard_id < num_shards. "
                         f"Received: shard_id={shard_id!r}, num_shards={num_shards!r}")
    return int(shard_id), int(num_shards)


def _check_locality(locality: Any, shuffle: bool) -> None:
    if locality is None:
        return
    count = isinstance(locality, (int, np.integer)) and not isinstance(locality, bool) and locality >= 1
    if locality != "auto" and not count:
        raise ValueError(f"Expected `locality` to be a number of regions >= 1, 'auto' or None. "
                         f"Received: locality={locality!r}")
    if not shuffle:
        raise ValueError("`locality` shapes the shuffle: it needs shuffle=True")


def _interpolation(interpolation: Any, num_classes: int | None) -> str:
    if interpolation is None:
        return "nearest" if num_classes else "linear"
    if interpolation not in ("linear", "nearest"):
        raise ValueError("Expected `interpolation` to be 'linear' or 'nearest'. "
                         f"Received: interpolation={interpolation!r}")
    if num_classes and interpolation != "nearest":
        raise ValueError("`num_classes` one-hot encodes class ids, which only interpolation='nearest' keeps intact")
    return interpolation


class SequenceDataLoader:
    """Batches of tile sequences cut from per-label region images, decoded and resized by DALI.

    Args:
        labels: the labels (e.g. years) in frame order; T = len(labels).
        data: the tiles table: ``tile_id``, ``region_id``, ``region_coordinates``
            ("(xmin, ymin, xmax, ymax)" in pixels, half-open) and the target column(s);
            optionally ``label_id`` (long format: box and target from the last label's rows).
        image_dir: images are read from ``image_dir/{label}/{region_id}{extension}``.
        dim: (height, width) of the output frames, in pixels.
        batch_size: tiles per batch; the last batch of an epoch may be smaller.
        n_channels: 3 (RGB, the default) or 1 (gray: a 1-band image, or ITU-R 601 luma of RGB);
            with ``bands`` it follows them.
        random_seed: seed of the epoch permutations; None draws one.
        shuffle: a new permutation every epoch; False keeps the table order.
        normalize: divide integer samples by their type's range (255, 65535, 32767); float samples
            are kept as they are unless ``scale`` is given. False keeps raw values.
        target: a column name, a list of names (y is (B, k)), or "last-image" (x holds the
            first T-1 frames and y is the last frame).
        device: "auto" (the GPU when DALI sees one), "cpu", "gpu" or "gpu:N".
        extension: the image file extension.
        cache_bytes: bound of the decoded-region cache in host memory, in bytes.
        min_tile_size: smallest box side accepted, in pixels.
        num_threads: DALI's CPU threads (default: the machine's cores).
        progress: show a progress bar while checking headers (None: when it is worth it).
        verify_decode: decode every region a second time with tifffile and compare (slow; for
            auditing a dataset). Without it, only images that decode to all zeros are re-checked.
        bands: 0-based band indices to pick from multi-band images, in output order.
        num_classes: one-hot encode a single-band class map to this many channels (ids 0..K-1).
        interpolation: "linear" (default; antialiased when shrinking) or "nearest" (the default
            with ``num_classes``; never invents values, for class maps).
        scale: with ``normalize``, divide by this instead of the type's range (10000 for
            Sentinel-2 reflectance, say).
        mean, std: per channel (or one for all), standardize as (value - mean) / std after scaling.
        augment: True (random flips and quarter turns), "flip", "rot90" or a list of those; one
            transform drawn per sample from (random_seed, epoch), the same for all its frames.
        locality: with ``shuffle``, shuffle regions, then the tiles within windows of this many
            regions, so that a cache smaller than the dataset decodes each region image about once
            per epoch. "auto": as many regions as ``cache_bytes`` holds; None (default): shuffle
            all tiles together.
        shard_id, num_shards: this loader sees shard ``shard_id`` of ``num_shards`` of every epoch:
            every ``num_shards``-th tile of the epoch order. Over all shards every tile appears
            once per epoch, and all shards have the same number of batches.

    Raises:
        DataError: the table or the images have problems (all of them are listed).
        DeviceUnavailableError: a GPU was asked for and DALI sees none.
        ValueError: an option is out of range.
    """

    def __init__(
        self,
        labels: Sequence[Any],
        data: pd.DataFrame,
        image_dir: str | os.PathLike,
        dim: tuple[int, int] = (64, 64),
        batch_size: int = 32,
        n_channels: int | None = None,
        random_seed: int | None = 42,
        shuffle: bool = True,
        normalize: bool = True,
        target: str | Sequence[str] = "target",
        device: str = "auto",
        extension: str = ".tif",
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        min_tile_size: int = 1,
        num_threads: int | None = None,
        progress: bool | None = None,
        verify_decode: bool = False,
        bands: Sequence[int] | None = None,
        num_classes: int | None = None,
        interpolation: str | None = None,
        scale: float | None = None,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        augment: bool | str | Sequence[str] | None = None,
        locality: int | str | None = None,
        shard_id: int = 0,
        num_shards: int = 1,
    ):
        self.dim = _check_options(labels, dim, batch_size)
        self.shard_id, self.num_shards = _check_shard(shard_id, num_shards)
        self.channels = ChannelSpec.from_options(n_channels, bands, num_classes)
        self.interpolation = _interpolation(interpolation, self.channels.num_classes)
        if self.channels.num_classes and (scale is not None or mean is not None or std is not None):
            raise ValueError("`num_classes` gives one-hot channels of 0 and 1: `scale`, `mean` and `std` do not apply")
        self._augment = parse_augment(augment, self.dim)
        _check_locality(locality, bool(shuffle))
        self.labels = list(labels)
        self.batch_size = int(batch_size)
        self.n_channels = self.channels.out_channels
        self.shuffle = bool(shuffle)
        self.normalize = bool(normalize)
        self.target = target
        self.split_last = isinstance(target, str) and target == LAST_IMAGE
        if self.split_last and len(self.labels) < 2:
            raise ValueError(f"target='{LAST_IMAGE}' needs at least 2 labels. Received: labels={self.labels!r}")
        self.random_seed = (int(random_seed) if random_seed is not None
                            else int(np.random.SeedSequence().entropy % (1 << 32)))
        self.device, self.device_id = resolve_device(device)
        self.num_threads = int(num_threads or os.cpu_count() or 1)

        self.table = build_table(data, self.labels, target, min_tile_size=min_tile_size)
        norm = dict(normalize=self.normalize and not self.channels.num_classes, scale=scale, mean=mean, std=std)
        affine(np.dtype("uint8"), self.channels.n_channels, **norm)  # bad options fail before any file is read
        self.images = check_images(self.table, self.labels, image_dir, extension, self.channels,
                                   progress=progress)
        self._gain, self._offset = affine(self.images.dtype, self.channels.n_channels, **norm)
        decoder = RegionDecoder(dtype=self.images.dtype, device=self.device, device_id=self.device_id,
                                num_threads=self.num_threads, verify=verify_decode,
                                slow_path=self.images.slow_path)
        decoder.warn_slow_path(list(self.images.slow_path))
        self._frames = FrameSource(self.table, self.images, decoder, RegionCache(cache_bytes), self.channels)
        self._batch_sizes = shard_batch_sizes(self.n_tiles, self.batch_size, shard_id=self.shard_id,
                                              num_shards=self.num_shards)
        self.locality = self._locality_window(locality, cache_bytes)
        self._uniform_box, self._antialias = self._box_facts()
        self.epoch = 0
        self._numpy_pipe = None
        self._numpy_lock = threading.Lock()
        self._per_epoch: dict[tuple[str, int], np.ndarray | None] = {}

    # -- order -------------------------------------------------------------------------------
    @property
    def n_tiles(self) -> int:
        """Tiles per epoch."""
        return len(self.table)

    def __len__(self) -> int:
        """Batches per epoch: ceil(n_tiles / batch_size); with shards, ceil(ceil(n_tiles / num_shards) / batch_size)."""
        return len(self._batch_sizes)

    @property
    def batch_sizes(self) -> np.ndarray:
        """Tiles in each batch of an epoch (the same every epoch)."""
        return self._batch_sizes.copy()

    def _locality_window(self, locality: Any, cache_bytes: int) -> int | None:
        """Regions per shuffle window, or None for a shuffle of all tiles."""
        if locality is None:
            return None
        if locality == "auto":
            per_region = (len(self.labels) * self.images.heights.max(axis=0).astype(np.int64)
                          * self.images.widths.max(axis=0) * self.channels.n_channels * self.images.dtype.itemsize)
            return max(1, int(cache_bytes // max(int(per_region.max()), 1)))
        return int(locality)

    def _memo(self, kind: str, epoch: int, make):
        """``make()`` for (kind, epoch), kept for the last few epochs (the numpy path and the
        TensorFlow input thread may be an epoch apart)."""
        key = (kind, epoch)
        if key not in self._per_epoch:
            if len(self._per_epoch) > 8:
                self._per_epoch.pop(next(iter(self._per_epoch)))
            self._per_epoch[key] = make()
        return self._per_epoch[key]

    def _order(self, epoch: int) -> np.ndarray:
        if self.locality is not None:
            return self._memo("order", epoch, lambda: local_order(self._frames._region_cols, self.locality, epoch,
                                                                  seed=self.random_seed))
        return self._memo("order", epoch, lambda: epoch_order(self.n_tiles, epoch, seed=self.random_seed,
                                                              shuffle=self.shuffle))

    def _positions(self, index: int, epoch: int) -> np.ndarray:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"batch index must be an int, got {type(index).__name__}")
        if index < 0:
            index += len(self)
        return batch_positions(self._order(epoch), int(index), self.batch_size, shard_id=self.shard_id,
                               num_shards=self.num_shards)

    def _codes(self, epoch: int, positions: np.ndarray) -> np.ndarray | None:
        """The augmentation transform of each tile at ``positions`` in ``epoch``, or None."""
        codes = self._memo("augment", epoch, lambda: draw_codes(self._augment, self.n_tiles, epoch, self.random_seed))
        return None if codes is None else codes[positions]

    @property
    def slow_path(self) -> dict[str, str]:
        """Images decoded by tifffile on the CPU instead of DALI: path -> why."""
        return dict(self._frames.decoder.slow_path)

    def tile_ids(self, index: int) -> np.ndarray:
        """The tile_ids of batch ``index`` of the current epoch, in the order of its x and y."""
        return self.table.tile_ids[self._positions(index, self.epoch)]

    def on_epoch_end(self) -> None:
        """Move to the next epoch (a new order when shuffling)."""
        self.epoch += 1

    # -- data --------------------------------------------------------------------------------
    @property
    def frames_per_sample(self) -> int:
        """T, or T-1 with "last-image" (frames in x)."""
        return len(self.labels) - 1 if self.split_last else len(self.labels)

    def _spec(self) -> GraphSpec:
        return GraphSpec(
            batch_size=self.batch_size, dim=self.dim, channels=self.channels.n_channels, frames=len(self.labels),
            input_dtype=self.images.dtype, gain=self._gain, offset=self._offset, interpolation=self.interpolation,
            num_classes=self.channels.num_classes or 0, split_last=self.split_last, antialias=self._antialias,
            target_size=0 if self.split_last else len(self.table.target_names),
            device=self.device, device_id=self.device_id, num_threads=self.num_threads)

    def _inputs(self, positions: np.ndarray, codes: np.ndarray | None) -> tuple[Any, Any]:
        """The DALI inputs of one batch: frames and targets, as one array each where all boxes
        share one size, else as lists of per-sample arrays."""
        dense = self.uniform_box is not None
        frames = self._frames.frames(positions, range(len(self.labels)), codes, dense=dense)
        if self.split_last:
            return frames, None
        targets = self.table.targets[positions]
        return frames, (targets if dense else list(targets))

    def _shape_y(self, y: Any) -> Any:
        """DALI gives targets as (B, k); a single target column is (B,)."""
        if not self.split_last and len(self.table.target_names) == 1:
            return y[:, 0]
        return y

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch.

        Returns:
            x: float32 (B, T, H, W, C) (T-1 frames with "last-image"), in [0, 1] when normalizing.
            y: float32 (B,) for one target column, (B, k) for k columns, (B, H, W, C) for "last-image".
        """
        positions = self._positions(index, self.epoch)
        return self._run(positions, self._codes(self.epoch, positions))

    def sample(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile at ``position`` in the table (not in the epoch order), as one sample:
        x float32 (T, H, W, C) and its y, preprocessed exactly as in the batches (without augmentation)."""
        if not 0 <= position < self.n_tiles:
            raise IndexError(f"tile position {position} is out of range for {self.n_tiles} tiles")
        x, y = self._run(np.array([position], dtype=np.int64), None)
        return x[0], y[0]

    def _run(self, positions: np.ndarray, codes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        frames, targets = self._inputs(positions, codes)
        with self._numpy_lock:
            if self._numpy_pipe is None:
                self._numpy_pipe = build_pipeline(self._spec(), prefetch_queue_depth=1)
                self._numpy_pipe.build()
            pipe = self._numpy_pipe
            pipe.feed_input(FRAMES, frames)
            if not self.split_last:
                pipe.feed_input(TARGET, targets)
            x, y = pipe.run()
        if self.device == "gpu":
            x, y = x.as_cpu(), y.as_cpu()
        return x.as_array(), self._shape_y(y.as_array())

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of the current epoch, in order."""
        for index in range(len(self)):
            yield self[index]

    # -- TensorFlow --------------------------------------------------------------------------
    def _padded_positions(self, epoch: int, index: int) -> np.ndarray:
        """Batch positions padded to a full batch by repeating its first tile (trimmed later)."""
        positions = self._positions(index, epoch)
        if len(positions) < self.batch_size:
            positions = np.concatenate([positions, np.repeat(positions[:1], self.batch_size - len(positions))])
        return positions

    def _box_facts(self) -> tuple[tuple[int, int] | None, bool]:
        """(the one (h, w) of every frame, augmented or not, else None; whether any frame is
        resized smaller than it is along some axis, where antialiasing matters)."""
        sizes = np.unique(self.table.boxes[:, 3:1:-1] - self.table.boxes[:, 1::-1], axis=0)  # (h, w) rows
        turns = any(c & 1 for c in self._augment)  # quarter turns give (w, h) frames too
        h_max, w_max = (int(v) for v in sizes.max(axis=0))
        if turns:
            h_max = w_max = max(h_max, w_max)
        h, w = (int(v) for v in sizes[0])
        uniform = (h, w) if len(sizes) == 1 and (h == w or not turns) else None
        return uniform, h_max > self.dim[0] or w_max > self.dim[1]

    @property
    def uniform_box(self) -> tuple[int, int] | None:
        """(h, w) when every tile's box, augmented or not, has that one size; else None."""
        return self._uniform_box

    def _stream(self, kind: str, start_epoch: int, *, dense: bool = False) -> Iterator[np.ndarray]:
        """Inputs for the DALI input ``kind``, epoch after epoch, forever: sample after sample, or
        with ``dense`` (all boxes of one size) one (B, ...) array per batch."""
        epoch = start_epoch
        while True:
            for index in range(len(self)):
                positions = self._padded_positions(epoch, index)
                if kind == FRAMES:
                    codes = self._codes(epoch, positions)
                    batch = self._frames.frames(positions, range(len(self.labels)), codes, dense=dense)
                else:
                    batch = self.table.targets[positions]
                if dense:
                    yield batch
                else:
                    yield from batch
            epoch += 1

    def dataset(self, *, start_epoch: int = 0):
        """A repeating ``tf.data.Dataset`` of (x, y) batches fed by DALI.

        Its epoch e (counted from ``start_epoch``) holds, batch for batch, the tiles of
        ``loader[i]`` after e calls of ``on_epoch_end()``. It has no end: pass
        ``steps_per_epoch=len(loader)`` to ``model.fit``.
        """
        from .tf import make_dataset

        return make_dataset(self, start_epoch=start_epoch)

    def as_pydataset(self):
        """This loader as a ``keras.utils.PyDataset`` (like the old ``keras.utils.Sequence``), for
        ``model.fit(loader.as_pydataset(), epochs=E)``. Keras calls ``on_epoch_end`` after each epoch."""
        from .keras_adapter import as_pydataset

        return as_pydataset(self)

    # -- several replicas ------------------------------------------------------------------------
    def shard(self, shard_id: int, num_shards: int, *, batch_size: int | None = None,
              device: str | None = None) -> SequenceDataLoader:
        """A loader of one shard of this loader's tiles, sharing its checked table, images and
        region cache (no file is read again). It starts at epoch 0 with the same seed, so all
        shards agree on every epoch's order.

        Args:
            shard_id, num_shards: which shard, of how many.
            batch_size: tiles per batch of the shard (default: this loader's).
            device: where the shard's DALI graph runs (default: this loader's device).
        """
        if self.num_shards != 1:
            raise ValueError("shard() splits an unsharded loader; this one is already shard "
                             f"{self.shard_id} of {self.num_shards}")
        part = copy.copy(self)
        part.shard_id, part.num_shards = _check_shard(shard_id, num_shards)
        if batch_size is not None:
            _check_options(self.labels, self.dim, batch_size)
            part.batch_size = int(batch_size)
        if device is not None:
            part.device, part.device_id = resolve_device(device)
        part.epoch = 0
        part._numpy_pipe = None
        part._numpy_lock = threading.Lock()
        part._per_epoch = {}
        part._batch_sizes = shard_batch_sizes(self.n_tiles, part.batch_size, shard_id=part.shard_id,
                                              num_shards=part.num_shards)
        return part

    def distributed_dataset(self, strategy, *, start_epoch: int = 0):
        """The dataset for ``model.fit`` under a ``tf.distribute`` strategy: one DALI pipeline per
        input pipeline, each on its own shard, with ``batch_size`` as the global batch.

        MirroredStrategy: one pipeline per replica, placed on the replica's device (its GPU, or
        the CPU). MultiWorkerMirroredStrategy: one pipeline per worker, on the worker's shard;
        each worker must hold one replica. Give ``model.fit`` ``steps_per_epoch=len(...)`` of a
        shard, :meth:`steps_per_epoch`.
        """
        from .tf import distribute

        return distribute(self, strategy, start_epoch=start_epoch)

    def steps_per_epoch(self, strategy) -> int:
        """Steps of one epoch under ``strategy``: the batches of each replica's shard."""
        replicas = int(strategy.num_replicas_in_sync)
        return len(shard_batch_sizes(self.n_tiles, max(1, self.batch_size // replicas), num_shards=replicas))
