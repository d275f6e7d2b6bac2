"""The loader's parts, built from its checked options and checked images: the decoder and the
region stores, the epoch order, the graph spec, and the batch feed over them."""

from __future__ import annotations

from typing import Any

import numpy as np

from .bands import ChannelSpec
from .decode import RegionDecoder
from .errors import warn
from .feed import BatchFeed
from .index import TileTable
from .nodata import NodataRule
from .normalize import affine
from .order import EpochOrder
from .pipeline import GPU_GRAPH_THREADS, GraphSpec, box_facts
from .regions import DeviceRegionStore, RegionStore
from .validate import ImageSet


def device_store(store: RegionStore, device_id: int, cache_bytes: int | None) -> DeviceRegionStore | None:
    """The GPU region store, or None (crops cut on the host, with a warning) where CuPy is missing."""
    try:
        return DeviceRegionStore(store, device_id, cache_bytes)
    except ImportError as err:
        warn(f"dalidw: {err}. Until then crops are cut on the host and uploaded batch by batch.")
        return None


def assemble_feed(table: TileTable, images: ImageSet, channels: ChannelSpec, *, norm: dict[str, Any],
                  nodata: NodataRule, cache_bytes: int, device_cache_bytes: int | None, device: str,
                  device_id: int | None, num_threads: int, graph_threads: int | None, verify_decode: bool,
                  batch_size: int, seed: int, shuffle: bool, locality: int | str | None, augment: tuple[int, ...],
                  shard: tuple[int, int], dim: tuple[int, int], interpolation: str, split_last: bool) -> BatchFeed:
    """The batch feed of a loader over ``table`` and ``images``.

    Args:
        norm: ``normalize``, ``scale``, ``mean`` and ``std`` for :func:`normalize.affine`.
        num_threads: DALI threads of the region decoder (and of a graph on the CPU).
        graph_threads: DALI threads of the graph as the user set them; None: ``num_threads`` on the CPU,
            ``GPU_GRAPH_THREADS`` on the GPU (there its CPU side only reads per-sample boxes and flags).
        locality: regions per shuffle window, "auto" (as many as ``cache_bytes`` holds) or None.
        augment: the transform codes drawn from (``augment.parse_augment``).
        shard: (shard_id, num_shards).
        The others as the loader's options of those names, checked.

    Raises:
        ValueError: ``nodata`` does not fit the images' sample type.
    """
    decoder = RegionDecoder(dtype=images.dtype, device=device, device_id=device_id, num_threads=num_threads,
                            verify=verify_decode, slow_path=images.slow_path)
    decoder.slow.warn(images.slow_path)
    nodata.check_dtype(images.dtype)
    store = RegionStore(images, decoder, channels, cache_bytes, nodata)
    regions = np.array([images.region_index[r] for r in table.region_ids], dtype=np.int64)
    window = store.regions_within(cache_bytes) if locality == "auto" else locality
    order = EpochOrder(len(table), batch_size, seed=seed, shuffle=shuffle, groups=regions, locality=window,
                       augment=augment, shard_id=shard[0], num_shards=shard[1])
    turns = any(c & 1 for c in augment)
    threads = graph_threads or (num_threads if device == "cpu" else GPU_GRAPH_THREADS)
    gain, offset = affine(images.dtype, channels.kept, **norm)
    on_device = device_store(store, device_id, device_cache_bytes) if device == "gpu" else None
    spec = GraphSpec(
        batch_size=batch_size, dim=dim, channels=channels.kept, frames=images.paths.shape[0], input_dtype=images.dtype,
        gain=gain, offset=offset, interpolation=interpolation, num_classes=channels.num_classes or 0,
        split_last=split_last, target_size=0 if split_last else len(table.target_names), device=device,
        device_id=device_id, num_threads=threads, turns=turns, flips=any(c & 6 for c in augment),
        source="crops" if on_device is None else "regions", **box_facts(table.sizes, dim, turns=turns))
    return BatchFeed(table, regions, order, store, spec, on_device)
