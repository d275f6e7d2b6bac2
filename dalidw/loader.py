"""SequenceDataLoader: a thin facade that checks the options, has the parts built (assemble) and
keeps the epoch. Data flows through the parts in this order: the table and the images (index,
validate), the region store (regions), the epoch order (order), the batch feed (feed), the DALI graph
(pipeline), and the adapters to TensorFlow (tf) and Keras (keras_adapter)."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .assemble import assemble_feed
from .augment import parse_augment
from .bands import ChannelSpec
from .devices import resolve_device
from .feed import per_replica_batch
from .index import build_table, splits_last
from .nodata import NodataRule
from .normalize import check_normalization
from .options import (
    check_batch_size,
    check_dim,
    check_interpolation,
    check_labels,
    check_limits,
    check_locality,
    check_seed,
    check_shard,
)
from .order import check_epoch
from .validate import MAX_IMAGE_PIXELS, check_images

#: Default bound of the decoded-region cache, in bytes (2 GiB).
DEFAULT_CACHE_BYTES = 2 << 30


class SequenceDataLoader:
    """Batches of tile sequences cut from per-label region images, decoded and resized by DALI.

    ``loader[i]`` is batch i of the current epoch as numpy (x, y); ``loader.dataset()`` feeds the
    same batches to ``model.fit`` through DALI's TensorFlow dataset. Each option is described, in
    the order of this signature, in the README's "Parameters" table; each method in its "What you
    get" table.

    Raises:
        DataError: the table or the images have problems (all of them are listed).
        DeviceUnavailableError: a GPU was asked for and DALI sees none.
        ValueError: an option is out of range.
    """

    def __init__(self, labels: Sequence[Any], data: pd.DataFrame, image_dir: str | os.PathLike,
                 dim: tuple[int, int] = (64, 64), batch_size: int = 32, n_channels: int | None = None,
                 random_seed: int | None = 42, shuffle: bool = True, normalize: bool = True,
                 target: str | Sequence[str] = "target", device: str = "auto", extension: str = ".tif", *,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, min_tile_size: int = 1, num_threads: int | None = None,
                 progress: bool | None = None, verify_decode: bool = False, bands: Sequence[int] | None = None,
                 num_classes: int | None = None, interpolation: str | None = None, scale: float | None = None,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 augment: bool | str | Sequence[str] | None = None, locality: int | str | None = None,
                 device_cache_bytes: int | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS,
                 nodata: float | str | None = None, nodata_fill: float = 0.0, allow_outside_links: bool = False,
                 allow_mixed_sizes: bool = False, shard_id: int = 0, num_shards: int = 1):
        self.labels = check_labels(labels)
        self.dim, self.batch_size = check_dim(dim), check_batch_size(batch_size)
        shard = check_shard(shard_id, num_shards)
        self.channels = ChannelSpec.from_options(n_channels, bands, num_classes)
        self.n_channels = self.channels.out_channels
        self.interpolation = check_interpolation(interpolation, self.channels.num_classes)
        norm = check_normalization(self.channels, normalize, scale, mean, std)
        augment_codes = parse_augment(augment, self.dim)
        check_locality(locality, bool(shuffle))
        self.shuffle, self.normalize, self.target = bool(shuffle), bool(normalize), target
        self.split_last = splits_last(target, self.labels)
        self.random_seed = check_seed(random_seed)
        nodata_rule = NodataRule.from_options(nodata, nodata_fill)
        check_limits(cache_bytes=cache_bytes, device_cache_bytes=device_cache_bytes, min_tile_size=min_tile_size,
                     max_image_pixels=max_image_pixels, num_threads=num_threads)
        self._device_fixed = device != "auto"
        self.device, self.device_id = resolve_device(device)
        self.num_threads = int(num_threads or os.cpu_count() or 1)
        self.table = build_table(data, self.labels, target, min_tile_size=min_tile_size)
        self.images = check_images(self.table, self.labels, image_dir, extension, self.channels, progress=progress,
                                   max_pixels=max_image_pixels, allow_outside_links=bool(allow_outside_links),
                                   allow_mixed_sizes=bool(allow_mixed_sizes))
        self.feed = assemble_feed(
            self.table, self.images, self.channels, norm=norm, nodata=nodata_rule, cache_bytes=cache_bytes,
            device_cache_bytes=device_cache_bytes, device=self.device, device_id=self.device_id,
            num_threads=self.num_threads, graph_threads=num_threads,
            verify_decode=verify_decode, batch_size=self.batch_size, seed=self.random_seed, shuffle=self.shuffle,
            locality=locality, augment=augment_codes, shard=shard, dim=self.dim, interpolation=self.interpolation,
            split_last=self.split_last)
        self.locality, self.epoch = self.feed.order.locality, 0

    @property
    def n_tiles(self) -> int:
        """Tiles per epoch (of all shards)."""
        return len(self.table)

    def __len__(self) -> int:
        """Batches per epoch: ceil(n_tiles / batch_size); with shards, ceil(ceil(n_tiles / num_shards) / batch_size)."""
        return len(self.feed)

    @property
    def batch_sizes(self) -> np.ndarray:
        """Tiles in each batch of an epoch (the same every epoch); only the last may be smaller."""
        return self.feed.batch_sizes

    @property
    def slow_path(self) -> dict[str, str]:
        """Images decoded by tifffile on the CPU instead of DALI: path -> why."""
        return dict(self.feed.store.decoder.slow_path)

    @property
    def decoded_images(self) -> int:
        """Images decoded so far (a region's stack of T labels counts T)."""
        return self.feed.store.decoded_images

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded regions held in the host cache now (at most ``cache_bytes``)."""
        return self.feed.store.cache.nbytes

    def tile_ids(self, index: int) -> np.ndarray:
        """The tile_ids of batch ``index`` of the current epoch, in the order of its x and y."""
        return self.table.tile_ids[self.feed.order.positions(self.epoch, index)]

    def on_epoch_end(self) -> None:
        """Move to the next epoch (a new order when shuffling)."""
        self.epoch += 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of the current epoch: x float32 (B, T, H, W, C) (T-1 frames with "last-image"),
        in [0, 1] when normalizing; y float32 (B,) for one target, (B, k) for k, (B, H, W, C) for "last-image"."""
        return self.feed.run(self.feed.inputs(self.epoch, index))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of the current epoch, in order."""
        return (self[index] for index in range(len(self)))

    def sample(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile at ``position`` in the table (not in the epoch order), as one sample:
        x float32 (T, H, W, C) and its y, preprocessed exactly as in the batches (without augmentation)."""
        if not 0 <= position < self.n_tiles:
            raise IndexError(f"tile position {position} is out of range for {self.n_tiles} tiles")
        x, y = self.feed.run(self.feed.inputs_at(np.array([position], dtype=np.int64), None))
        return x[0], y[0]

    def dataset(self, *, start_epoch: int = 0):
        """A repeating ``tf.data.Dataset`` of (x, y), DALI's dataset its last node: its epoch e (from
        ``start_epoch``) is ``loader[i]`` after e calls of ``on_epoch_end()``. Give fit ``steps_per_epoch``."""
        from .tf import make_dataset

        return make_dataset(self.feed, start_epoch=check_epoch(start_epoch))

    def as_pydataset(self, *, start_epoch: int = 0):
        """This loader as a ``keras.utils.PyDataset`` for ``model.fit(..., shuffle=False)``: fit's k-th
        epoch reads this loader's epoch ``start_epoch + k`` (see the README's "Resuming training")."""
        from .keras_adapter import SourceDataset

        return SourceDataset(self, check_epoch(start_epoch))

    def shard(self, shard_id: int, num_shards: int, *, batch_size: int | None = None,
              device: str | None = None) -> SequenceDataLoader:
        """A loader of one shard of this loader's tiles, sharing its checked table, images and region
        cache (no file is read again), at epoch 0 with the same seed, so all shards agree on every
        epoch's order. ``batch_size`` and ``device`` default to this loader's."""
        self.feed.check_unsharded("shard()")
        shard = check_shard(shard_id, num_shards)
        kind, device_id = resolve_device(device) if device is not None else (self.device, self.device_id)
        part = copy.copy(self)
        part.batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        part.device, part.device_id, part.epoch = kind, device_id, 0
        part.feed = self.feed.for_shard(*shard, batch_size=part.batch_size, device=kind, device_id=device_id)
        return part

    def distributed_dataset(self, strategy, *, start_epoch: int = 0):
        """The dataset for ``model.fit`` under a ``tf.distribute`` strategy, ``batch_size`` the global batch:
        one DALI pipeline per replica (or worker) on its device and shard. See :meth:`steps_per_epoch`."""
        from .tf import distribute

        return distribute(self.feed, strategy, start_epoch=check_epoch(start_epoch), device_fixed=self._device_fixed)

    def steps_per_epoch(self, strategy) -> int:
        """Steps of one epoch under ``strategy``: the batches of each replica's shard."""
        replicas = int(strategy.num_replicas_in_sync)
        return len(self.feed.order.for_shard(0, replicas, batch_size=per_replica_batch(self.batch_size, replicas)))
