"""SequenceDataLoader: a thin facade that checks the options and wires the parts together:
table and images in (index, validate), the region store (regions), the epoch order (order), the
batch feed (feed), the DALI graph (pipeline), and the adapters to TensorFlow (tf) and Keras
(keras_adapter)."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .augment import parse_augment
from .bands import ChannelSpec
from .decode import RegionDecoder
from .devices import resolve_device
from .feed import BatchFeed, per_replica_batch
from .index import LAST_IMAGE, build_table
from .nodata import NodataRule
from .normalize import affine
from .options import (
    check_batch_size,
    check_dim,
    check_interpolation,
    check_labels,
    check_locality,
    check_seed,
    check_shard,
)
from .order import EpochOrder, check_epoch
from .pipeline import GPU_GRAPH_THREADS, GraphSpec, box_facts
from .regions import DeviceRegionStore, RegionStore
from .validate import MAX_IMAGE_PIXELS, check_images

#: Default bound of the decoded-region cache, in bytes (2 GiB).
DEFAULT_CACHE_BYTES = 2 << 30


def _device_store(store: RegionStore, device_id: int, cache_bytes: int | None) -> DeviceRegionStore | None:
    """The GPU region store, or None (crops cut on the host, with a warning) where CuPy is missing."""
    try:
        return DeviceRegionStore(store, device_id, cache_bytes)
    except ImportError as err:
        warnings.warn(f"dalidw: {err}. Until then crops are cut on the host and uploaded batch by batch.",
                      RuntimeWarning, stacklevel=3)
        return None


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
        device: "auto" (the GPU when DALI and TensorFlow, where installed, see one), "cpu", "gpu"
            or "gpu:N".
        extension: the image file extension.
        cache_bytes: bound of the decoded-region cache in host memory, in bytes. Its unit is a
            region's stack of T images; a stack larger than the bound is decoded whenever needed.
        min_tile_size: smallest box side accepted, in pixels.
        num_threads: DALI's CPU threads (default: the machine's cores; on the GPU the graph's own
            default is ``pipeline.GPU_GRAPH_THREADS``, as its CPU side only reads per-sample boxes).
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
        nodata: invalid samples, replaced by ``nodata_fill`` in each decoded image before anything is
            resized: a value in stored units (NaN in float images is invalid too), float("nan") for NaN
            alone, or "tag" for each file's GDAL_NODATA tag. None (default): none; NaN in an image
            is then reported once per file.
        nodata_fill: what invalid samples become, in stored units (before normalization).
        max_image_pixels: largest image accepted, height x width in pixels, checked from the headers
            before anything is decoded (a guard against decompression bombs).
        device_cache_bytes: with device "gpu", bound of the region stacks kept in GPU memory, in
            bytes; None (default): half of the GPU memory free when the loader is built.
        allow_outside_links: read images that symbolic links inside ``image_dir`` lead out of it to.
            False (default): such images are refused by name when the loader is built, and again
            before each decode.
        shard_id, num_shards: this loader sees shard ``shard_id`` of ``num_shards`` of every epoch:
            every ``num_shards``-th tile of the epoch order. Over all shards every tile appears
            once per epoch, and all shards have the same number of batches.

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
                 shard_id: int = 0, num_shards: int = 1):
        self.labels = check_labels(labels)
        self.dim, self.batch_size = check_dim(dim), check_batch_size(batch_size)
        shard = check_shard(shard_id, num_shards)
        self.channels = ChannelSpec.from_options(n_channels, bands, num_classes)
        self.n_channels = self.channels.out_channels
        self.interpolation = check_interpolation(interpolation, self.channels.num_classes)
        if self.channels.num_classes and (scale is not None or mean is not None or std is not None):
            raise ValueError("`num_classes` gives one-hot channels of 0 and 1: `scale`, `mean` and `std` do not apply")
        augment_codes = parse_augment(augment, self.dim)
        check_locality(locality, bool(shuffle))
        self.shuffle, self.normalize, self.target = bool(shuffle), bool(normalize), target
        self.split_last = isinstance(target, str) and target == LAST_IMAGE
        if self.split_last and len(self.labels) < 2:
            raise ValueError(f"target='{LAST_IMAGE}' needs at least 2 labels. Received: labels={self.labels!r}")
        self.random_seed = check_seed(random_seed)
        nodata_rule = NodataRule.from_options(nodata, nodata_fill)
        self._device_fixed = device != "auto"
        self.device, self.device_id = resolve_device(device)
        self.num_threads = int(num_threads or os.cpu_count() or 1)
        graph_threads = self.num_threads if num_threads or self.device == "cpu" else GPU_GRAPH_THREADS

        self.table = build_table(data, self.labels, target, min_tile_size=min_tile_size)
        norm = dict(normalize=self.normalize and not self.channels.num_classes, scale=scale, mean=mean, std=std)
        affine(np.dtype("uint8"), self.channels.kept, **norm)  # bad options fail before any file is read
        self.images = check_images(self.table, self.labels, image_dir, extension, self.channels, progress=progress,
                                   max_pixels=max_image_pixels, allow_outside_links=bool(allow_outside_links))
        decoder = RegionDecoder(dtype=self.images.dtype, device=self.device, device_id=self.device_id,
                                num_threads=self.num_threads, verify=verify_decode, slow_path=self.images.slow_path)
        decoder.warn_slow_path(list(self.images.slow_path))
        nodata_rule.check_dtype(self.images.dtype)
        store = RegionStore(self.images, decoder, self.channels, cache_bytes, nodata_rule)
        regions = np.array([self.images.region_index[r] for r in self.table.region_ids], dtype=np.int64)
        self.locality = store.regions_within(cache_bytes) if locality == "auto" else locality
        order = EpochOrder(len(self.table), self.batch_size, seed=self.random_seed, shuffle=self.shuffle,
                           groups=regions, locality=self.locality, augment=augment_codes,
                           shard_id=shard[0], num_shards=shard[1])
        turns = any(c & 1 for c in augment_codes)
        gain, offset = affine(self.images.dtype, self.channels.kept, **norm)
        device_store = _device_store(store, self.device_id, device_cache_bytes) if self.device == "gpu" else None
        spec = GraphSpec(
            batch_size=self.batch_size, dim=self.dim, channels=self.channels.kept, frames=len(self.labels),
            input_dtype=self.images.dtype, gain=gain, offset=offset, interpolation=self.interpolation,
            num_classes=self.channels.num_classes or 0, split_last=self.split_last,
            target_size=0 if self.split_last else len(self.table.target_names), device=self.device,
            device_id=self.device_id, num_threads=graph_threads, turns=turns,
            flips=any(c & 6 for c in augment_codes), source="crops" if device_store is None else "regions",
            **box_facts(self.table.sizes, self.dim, turns=turns))
        self.feed, self.epoch = BatchFeed(self.table, regions, order, store, spec, device_store), 0

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
    def uniform_box(self) -> tuple[int, int] | None:
        """(h, w) when every tile's box has that one size; else None."""
        return None if self.feed.spec.ragged else self.feed.box()

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
        """Batch ``index`` of the current epoch.

        Returns:
            x: float32 (B, T, H, W, C) (T-1 frames with "last-image"), in [0, 1] when normalizing.
            y: float32 (B,) for one target column, (B, k) for k columns, (B, H, W, C) for "last-image".
        """
        return self.feed.run(self.feed.inputs(self.epoch, index))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of the current epoch, in order."""
        for index in range(len(self)):
            yield self[index]

    def sample(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile at ``position`` in the table (not in the epoch order), as one sample:
        x float32 (T, H, W, C) and its y, preprocessed exactly as in the batches (without augmentation)."""
        if not 0 <= position < self.n_tiles:
            raise IndexError(f"tile position {position} is out of range for {self.n_tiles} tiles")
        x, y = self.feed.run(self.feed.inputs_at(np.array([position], dtype=np.int64), None))
        return x[0], y[0]

    def dataset(self, *, start_epoch: int = 0):
        """A repeating ``tf.data.Dataset`` of (x, y) batches fed by DALI, the DALI dataset its last node.

        Its epoch e (counted from ``start_epoch``) holds, batch for batch, the tiles of
        ``loader[i]`` after e calls of ``on_epoch_end()``. It has no end: pass
        ``steps_per_epoch=len(loader)`` to ``model.fit``. The batch dimension is None.
        """
        from .tf import make_dataset

        return make_dataset(self.feed, start_epoch=check_epoch(start_epoch))

    def as_pydataset(self, *, start_epoch: int = 0):
        """This loader as a ``keras.utils.PyDataset`` (like the old ``keras.utils.Sequence``), for
        ``model.fit(loader.as_pydataset(), epochs=E, shuffle=False)``: fit's k-th epoch reads this
        loader's epoch ``start_epoch + k`` (and leaves ``loader.epoch`` at the next one). To resume at
        fit's epoch k: ``model.fit(loader.as_pydataset(start_epoch=k), initial_epoch=k, epochs=E,
        shuffle=False)``. With ``shuffle=True`` (fit's default) Keras reads each epoch's batches in an
        order of its own."""
        from .keras_adapter import SourceDataset

        return SourceDataset(self, check_epoch(start_epoch))

    def shard(self, shard_id: int, num_shards: int, *, batch_size: int | None = None,
              device: str | None = None) -> SequenceDataLoader:
        """A loader of one shard of this loader's tiles, sharing its checked table, images and region
        cache (no file is read again), at epoch 0 with the same seed, so all shards agree on every
        epoch's order. ``batch_size`` and ``device`` default to this loader's."""
        if self.feed.order.num_shards != 1:
            raise ValueError("shard() splits an unsharded loader; this one is already shard "
                             f"{self.feed.order.shard_id} of {self.feed.order.num_shards}")
        shard = check_shard(shard_id, num_shards)
        kind, device_id = resolve_device(device) if device is not None else (self.device, self.device_id)
        part = copy.copy(self)
        part.batch_size = self.batch_size if batch_size is None else check_batch_size(batch_size)
        part.device, part.device_id, part.epoch = kind, device_id, 0
        part.feed = self.feed.for_shard(*shard, batch_size=part.batch_size, device=kind, device_id=device_id)
        return part

    def distributed_dataset(self, strategy, *, start_epoch: int = 0):
        """The dataset for ``model.fit`` under a ``tf.distribute`` strategy, ``batch_size`` the global
        batch: one DALI pipeline per replica (MirroredStrategy), on the replica's device, or one per
        worker (MultiWorkerMirroredStrategy, one replica per worker), each on its own shard. Give
        ``model.fit`` ``steps_per_epoch=loader.steps_per_epoch(strategy)``."""
        from .tf import distribute

        return distribute(self.feed, strategy, start_epoch=check_epoch(start_epoch), device_fixed=self._device_fixed)

    def steps_per_epoch(self, strategy) -> int:
        """Steps of one epoch under ``strategy``: the batches of each replica's shard."""
        replicas = int(strategy.num_replicas_in_sync)
        return len(self.feed.order.for_shard(0, replicas, batch_size=per_replica_batch(self.batch_size, replicas)))
