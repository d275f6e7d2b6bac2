"""SequenceDataLoader: a thin facade that checks the options, has the parts built (assemble) and
keeps the epoch. Data flows through the parts in this order: the table and the images (index,
validate), the region store (regions), the epoch order (order), the batch feed (feed), the DALI graph
(pipeline), and the adapters to TensorFlow (tf) and Keras (keras_adapter)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .assemble import assemble_feed
from .augment import parse_augment
from .bands import ChannelSpec
from .devices import resolve_device, share_gpu_if_tensorflow
from .errors import DataError
from .feed import BatchFeed, per_replica_batch
from .index import TileTable, build_table, splits_last
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
from .validate import MAX_IMAGE_PIXELS, ImageSet, check_images


@dataclass(frozen=True)
class LoaderSetup:
    """What a loader and its shards share: the options as checked, the checked tiles table and
    images. (The batch size, the device and the order are the feed's.)"""

    labels: list[Any]
    dim: tuple[int, int]
    channels: ChannelSpec
    interpolation: str
    shuffle: bool
    normalize: bool
    target: str | Sequence[str]
    split_last: bool
    random_seed: int
    num_threads: int
    device_fixed: bool
    table: TileTable
    images: ImageSet


#: Default bound of the decoded-region cache, in bytes (2 GiB).
DEFAULT_CACHE_BYTES = 2 << 30


class SequenceDataLoader:
    """Batches of tile sequences cut from per-label region images, decoded and resized by DALI.

    ``loader[i]`` is batch i of the current epoch as numpy (x, y); ``loader.dataset()`` feeds the
    same batches to TensorFlow's ``model.fit``, ``loader.as_pydataset()`` to Keras on any backend.
    Each option is described, in the order of this signature, in the "Parameters" table of
    docs/loader.md; each method in its "What you get" table.

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
        labels = check_labels(labels)
        dim, batch_size = check_dim(dim), check_batch_size(batch_size)
        shard = check_shard(shard_id, num_shards)
        channels = ChannelSpec.from_options(n_channels, bands, num_classes)
        interpolation = check_interpolation(interpolation, channels.num_classes)
        norm = check_normalization(channels, normalize, scale, mean, std)
        augment_codes = parse_augment(augment, dim)
        check_locality(locality, bool(shuffle))
        split_last = splits_last(target, labels)
        seed = check_seed(random_seed)
        nodata_rule = NodataRule.from_options(nodata, nodata_fill)
        check_limits(cache_bytes=cache_bytes, device_cache_bytes=device_cache_bytes, min_tile_size=min_tile_size,
                     max_image_pixels=max_image_pixels, num_threads=num_threads)
        kind, device_id = resolve_device(device)
        if kind == "gpu":
            share_gpu_if_tensorflow()
        threads = int(num_threads or os.cpu_count() or 1)
        table = build_table(data, labels, target, min_tile_size=min_tile_size)
        images = check_images(table, labels, image_dir, extension, channels, progress=progress,
                              max_pixels=max_image_pixels, allow_outside_links=bool(allow_outside_links),
                              allow_mixed_sizes=bool(allow_mixed_sizes))
        feed = assemble_feed(
            table, images, channels, norm=norm, nodata=nodata_rule, cache_bytes=cache_bytes,
            device_cache_bytes=device_cache_bytes, device=kind, device_id=device_id, num_threads=threads,
            user_threads=num_threads, verify_decode=verify_decode, batch_size=batch_size, seed=seed,
            shuffle=bool(shuffle), locality=locality, augment=augment_codes, shard=shard, dim=dim,
            interpolation=interpolation, split_last=split_last)
        self._attach(LoaderSetup(labels=labels, dim=dim, channels=channels, interpolation=interpolation,
                                 shuffle=bool(shuffle), normalize=bool(normalize), target=target,
                                 split_last=split_last, random_seed=seed, num_threads=threads,
                                 device_fixed=device != "auto", table=table, images=images), feed)

    def _attach(self, setup: LoaderSetup, feed: BatchFeed) -> None:
        """Wire this loader to ``setup`` and ``feed``, at epoch 0 (the constructor, and :meth:`_of`)."""
        self._setup = setup
        self.feed = feed
        self.epoch = 0

    @classmethod
    def _of(cls, setup: LoaderSetup, feed: BatchFeed) -> SequenceDataLoader:
        """A loader of checked ``setup`` and a built ``feed``, nothing checked or read again (:meth:`shard`)."""
        loader = cls.__new__(cls)
        cls._attach(loader, setup, feed)
        return loader

    @property
    def labels(self) -> list[Any]:
        """The labels (e.g. years) in frame order."""
        return list(self._setup.labels)

    @property
    def dim(self) -> tuple[int, int]:
        """(height, width) of the output frames."""
        return self._setup.dim

    @property
    def batch_size(self) -> int:
        """Tiles per batch (the last batch of an epoch may be smaller)."""
        return self.feed.spec.batch_size

    @property
    def channels(self) -> ChannelSpec:
        """The band selection: bands kept, one-hot classes."""
        return self._setup.channels

    @property
    def n_channels(self) -> int:
        """C of the output frames."""
        return self._setup.channels.out_channels

    @property
    def interpolation(self) -> str:
        """"linear" or "nearest", as resolved from None."""
        return self._setup.interpolation

    @property
    def shuffle(self) -> bool:
        """Whether every epoch has a new permutation."""
        return self._setup.shuffle

    @property
    def normalize(self) -> bool:
        """Whether integer samples are divided by their type's range (or ``scale``)."""
        return self._setup.normalize

    @property
    def target(self) -> str | Sequence[str]:
        """The target column(s), or "last-image"."""
        return self._setup.target

    @property
    def split_last(self) -> bool:
        """Whether y is the last frame (``target="last-image"``)."""
        return self._setup.split_last

    @property
    def random_seed(self) -> int:
        """The seed of the order and the augmentation (the one drawn where None was given)."""
        return self._setup.random_seed

    @property
    def locality(self) -> int | None:
        """Regions per shuffle window (as resolved from "auto"), or None."""
        return self.feed.order.locality

    @property
    def num_threads(self) -> int:
        """DALI's CPU threads of the region decoder."""
        return self._setup.num_threads

    @property
    def device(self) -> str:
        """"cpu" or "gpu": where the graph runs."""
        return self.feed.spec.device

    @property
    def device_id(self) -> int | None:
        """The GPU of the graph, or None on the CPU."""
        return self.feed.spec.device_id

    @property
    def table(self) -> TileTable:
        """The checked tiles table."""
        return self._setup.table

    @property
    def images(self) -> ImageSet:
        """The images' checked headers."""
        return self._setup.images

    @property
    def last_error(self) -> DataError | None:
        """The last DataError (a DecodeError, say) raised while a batch was prepared, here or inside
        TensorFlow's input pipeline, which re-raises it as an error of its own; None if none."""
        return self.feed.last_error

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

    def check_strips(self, *, progress: bool = False) -> list[str]:
        """Check every strip and tile of every image now, as a decode does first: one problem line per
        damaged file ([] when all are sound). Sound files are remembered: decoding them later costs
        only a CRC-32 of their bytes. ``progress``: a progress bar over the files."""
        paths = [str(p) for p in self.images.paths.ravel().tolist()]
        if progress:
            from tqdm.auto import tqdm

            paths = tqdm(paths, leave=False, unit="file", desc="dalidw: checking strips and tiles")
        decoder = self.feed.store.decoder
        return [line for path in paths for line in decoder.check(path)]

    def tile_ids(self, index: int) -> np.ndarray:
        """The tile_ids of batch ``index`` of the current epoch, in the order of its x and y."""
        return self.table.tile_ids[self.feed.positions(self.epoch, index)]

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
        """A repeating ``tf.data.Dataset`` of (x, y) (on the CPU DALI's batches shared through DLPack,
        on the GPU DALI's TensorFlow dataset): its epoch e (from ``start_epoch``) is ``loader[i]``
        after e calls of ``on_epoch_end()``. Give fit ``steps_per_epoch``."""
        from .tf import make_dataset

        return make_dataset(self.feed, start_epoch=check_epoch(start_epoch), device_fixed=self._setup.device_fixed)

    def as_pydataset(self, *, start_epoch: int = 0, backend: str | None = None):
        """This loader as a ``keras.utils.PyDataset`` for ``model.fit(..., shuffle=False)``: fit's k-th
        epoch reads this loader's epoch ``start_epoch + k`` (see "Resuming training"), the graph run a
        few batches ahead. Its batches are arrays of ``backend`` (default: Keras's active backend) on
        the graph's device, with no copy: ``jax.Array`` or ``torch.Tensor`` on the loader's GPU,
        NumPy arrays from the CPU (see ``dalidw.arrays``).

        Raises:
            OptionError: an unknown backend, or one that is not installed.
            DeviceUnavailableError: a GPU loader and a backend that sees no GPU, or computes on another.
        """
        import keras

        from .keras_adapter import FeedBatches, SourceDataset

        batches = FeedBatches(self.feed, backend or keras.backend.backend())
        return SourceDataset(batches, start_epoch=check_epoch(start_epoch), loader=self)

    def shard(self, shard_id: int, num_shards: int, *, batch_size: int | None = None,
              device: str | None = None) -> SequenceDataLoader:
        """A loader of one shard of this loader's tiles, sharing its checked table, images and region
        cache (no file is read again), at epoch 0 with the same seed, so all shards agree on every
        epoch's order. ``batch_size`` and ``device`` default to this loader's; on a GPU the shard
        cuts its frames from the regions resident there, as this loader does."""
        self.feed.check_unsharded("shard()")
        shard = check_shard(shard_id, num_shards)
        kind, device_id = resolve_device(device) if device is not None else (self.device, self.device_id)
        batch = self.batch_size if batch_size is None else check_batch_size(batch_size)
        return self._of(self._setup, self.feed.for_shard(*shard, batch_size=batch, device=kind, device_id=device_id))

    def distributed_dataset(self, strategy, *, start_epoch: int = 0):
        """The dataset for ``model.fit`` under a ``tf.distribute`` strategy, ``batch_size`` the global batch:
        one DALI pipeline per replica (or worker) on its device and shard. See :meth:`steps_per_epoch`."""
        from .tf import distribute

        return distribute(self.feed, strategy, start_epoch=check_epoch(start_epoch),
                          device_fixed=self._setup.device_fixed)

    def steps_per_epoch(self, strategy) -> int:
        """Steps of one epoch under ``strategy``: the batches of each replica's shard."""
        replicas = int(strategy.num_replicas_in_sync)
        return len(self.feed.order.for_shard(0, replicas, batch_size=per_replica_batch(self.batch_size, replicas)))
