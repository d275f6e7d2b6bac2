"""The loader's parts, built from its checked options and checked images: the decoder and the
region stores, the epoch order, the graph spec, and the batch feed over them."""

from __future__ import annotations

from typing import Any

import numpy as np

from .bands import ChannelSpec
from .decode import RegionDecoder
from .feed import BatchFeed, device_store, graph_spec, graph_threads
from .index import TileTable
from .nodata import NodataRule
from .normalize import affine
from .order import EpochOrder
from .regions import RegionStore
from .validate import ImageSet


def assemble_feed(table: TileTable, images: ImageSet, channels: ChannelSpec, *, norm: dict[str, Any],
                  nodata: NodataRule, cache_bytes: int, device_cache_bytes: int | None, device: str,
                  device_id: int | None, num_threads: int, user_threads: int | None, verify_decode: bool,
                  batch_size: int, seed: int, shuffle: bool, locality: int | str | None, augment: tuple[int, ...],
                  shard: tuple[int, int], dim: tuple[int, int], interpolation: str, split_last: bool) -> BatchFeed:
    """The batch feed of a loader over ``table`` and ``images``.

    Args:
        norm: ``normalize``, ``scale``, ``mean`` and ``std`` for :func:`normalize.affine`.
        num_threads: DALI threads of the region decoder (and of a graph on the CPU).
        user_threads: ``num_threads`` as the user set it, or None (see ``feed.graph_threads``).
        locality: regions per shuffle window, "auto" (as many as ``cache_bytes`` holds) or None.
        augment: the transform codes drawn from (``augment.parse_augment``).
        shard: (shard_id, num_shards).
        The others as the loader's options of those names, checked.

    Raises:
        OptionError: ``nodata`` does not fit the images' sample type.
    """
    decoder = RegionDecoder(dtype=images.dtype, device=device, device_id=device_id, num_threads=num_threads,
                            verify=verify_decode, slow_path=images.slow_path)
    decoder.slow.warn(images.slow_path)
    nodata.check_dtype(images.dtype)
    regions = np.array([images.region_index[r] for r in table.region_ids], dtype=np.int64)
    store = RegionStore(images, decoder, channels, regions, table.boxes, cache_bytes, nodata)
    window = store.regions_within(cache_bytes) if locality == "auto" else locality
    order = EpochOrder(len(table), batch_size, seed=seed, shuffle=shuffle, groups=regions, locality=window,
                       augment=augment, shard_id=shard[0], num_shards=shard[1])
    on_device = device_store(store, device, device_id, device_cache_bytes)
    gain, offset = affine(images.dtype, channels.kept, **norm)
    spec = graph_spec(batch_size=batch_size, dim=dim, channels=channels, frames=images.paths.shape[0],
                      dtype=images.dtype, gain=gain, offset=offset, interpolation=interpolation, split_last=split_last,
                      target_size=len(table.target_names), sizes=table.sizes, augment=augment, device=device,
                      device_id=device_id, num_threads=graph_threads(device, num_threads, user_threads),
                      frames_from_host=device == "gpu" and on_device is None)
    return BatchFeed(table, order, store, spec, device_store=on_device, device_cache_bytes=device_cache_bytes,
                     cores=num_threads, user_threads=user_threads)
