"""BatchFeed: the order, the region store and the graph spec -> the inputs of one batch.

This module is the one home of three rules (the batch sizes of the first are counted by
``order.shard_batch_sizes``; every path takes its batches from the feed):

**Partial batches.** An epoch of N tiles in batches of B is ceil(N / B) batches; the last one holds
the N mod B tiles left (when B does not divide N) and nothing is padded, repeated or dropped. With
the data set [t0 .. t6] and batch size 3 an unshuffled epoch is [t0 t1 t2], [t3 t4 t5], [t6]. With
shards, shard s holds every ``num_shards``-th tile of the epoch order and every shard has the same
number of batches (see ``order.shard_batch_sizes``): 7 tiles over 2 shards with batch size 3 gives
shard 0 [t0 t2 t4], [t6] and shard 1 [t1 t3], [t5] (a shard whose last batch would be empty ends
with B-1 and 1 instead).

**Target shape.** One target column gives y (B,); k columns give y (B, k); "last-image" gives the
last frame, (B, H, W, C), and no target input.

**Per-replica batch size.** Under a strategy with R replicas, ``batch_size`` is the global batch
and each replica's shard has batches of ``batch_size // R``, which must divide evenly.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

from .augment import as_graph_ops
from .errors import OptionError
from .index import TileTable
from .order import EpochOrder
from .pipeline import (
    BOX,
    FLIP_H,
    FLIP_V,
    FRAMES,
    SHAPE,
    TARGET,
    TRANSPOSE,
    GraphSpec,
    build_pipeline,
    feed_batch,
    stack_references,
)
from .regions import DeviceRegionStore, RegionStore


def per_replica_batch(batch_size: int, replicas: int) -> int:
    """The batch of each of ``replicas`` replicas for a global ``batch_size``.

    Raises:
        ValueError: ``batch_size`` does not split evenly.
    """
    if replicas < 1 or batch_size % replicas:
        raise OptionError(f"batch_size={batch_size} is the global batch: it must split evenly over "
                         f"{replicas} replicas")
    return batch_size // replicas


class BatchFeed:
    """The inputs of the DALI graph, batch by batch.

    Args:
        table: the tiles.
        regions: int64 (n_tiles,) the region (column of the image set) of each tile.
        order: which tiles make each batch of each epoch.
        store: the host region store.
        spec: the graph the inputs are for (``spec.inputs`` names them).
        device_store: the GPU region store, for a "regions" graph on the GPU.
    """

    def __init__(self, table: TileTable, regions: np.ndarray, order: EpochOrder, store: RegionStore,
                 spec: GraphSpec, device_store: DeviceRegionStore | None = None):
        self.table = table
        self.regions = regions
        self.order = order
        self.store = store
        self.spec = spec
        self.device_store = device_store
        self._pipe, self._lock = None, threading.Lock()
        self._sizes = np.ascontiguousarray(table.sizes, dtype=np.int32)  # (h, w)
        self._boxes = np.ascontiguousarray(np.hstack([table.boxes[:, [1, 0]], self._sizes]), dtype=np.int32)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.order)

    @property
    def batch_sizes(self) -> np.ndarray:
        """int64 (batches,) tiles in each batch of an epoch (the same every epoch)."""
        return self.order.batch_sizes.copy()

    def box(self) -> tuple[int, int]:
        """(h, w) of the first tile's box: of every tile's, unless the graph is ``ragged``."""
        h, w = (int(v) for v in self._sizes[0])
        return h, w

    def replace(self, *, order: EpochOrder | None = None, device_store: Any = False, **spec_changes: Any) -> BatchFeed:
        """This feed with another order, device store or graph spec fields (``batch_size``, ``source``, ...)."""
        return BatchFeed(self.table, self.regions, order or self.order, self.store,
                         dataclasses.replace(self.spec, **spec_changes),
                         self.device_store if device_store is False else device_store)

    def check_unsharded(self, caller: str) -> None:
        """The one rule for splitting a feed: only an unsharded one splits into shards.

        Raises:
            ValueError: naming ``caller`` (e.g. "shard()"), when this feed is a shard already.
        """
        if self.order.num_shards != 1:
            raise OptionError(f"{caller} splits an unsharded loader; this one is already shard {self.order.shard_id} "
                             f"of {self.order.num_shards}: build it without shard_id/num_shards")

    def for_shard(self, shard_id: int, num_shards: int, *, batch_size: int, device: str,
                  device_id: int | None) -> BatchFeed:
        """The feed of shard ``shard_id`` of ``num_shards`` of this feed, sharing the table and the host
        store; its graph on ``device``. The caller checks first, before it resolves a device or builds
        anything: :meth:`check_unsharded` and ``options.check_shard``."""
        order = self.order.for_shard(shard_id, num_shards, batch_size=batch_size)
        return self.replace(order=order, device_store=None, batch_size=batch_size, device=device,
                            device_id=device_id, source="crops")

    def inputs(self, epoch: int, index: int, names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The graph inputs of batch ``index`` of ``epoch`` (those in ``names``, default all): see
        :meth:`inputs_at`."""
        positions = self.order.positions(epoch, index)
        names = self.spec.inputs if names is None else names
        wants_codes = bool({TRANSPOSE, FLIP_H, FLIP_V} & set(names))
        return self.inputs_at(positions, self.order.codes(epoch, positions) if wants_codes else None, names)

    def inputs_at(self, positions: np.ndarray, codes: np.ndarray | None,
                  names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The graph inputs for the tiles at table ``positions`` with augmentation ``codes`` (None: none).

        Returns:
            name -> a batch: "frames" a (b, T, h, w, C) array (for a "regions" graph a list of
            b DALI tensors, each sharing its region stack's memory), "box" int32 (b, 4) as
            (y, x, h, w), "shape" int32 (b, 2) as (h, w), "transpose" bool (b,), "flip_h" and
            "flip_v" int32 (b,), "target" float32 (b,) or (b, k).
        """
        names = self.spec.inputs if names is None else names
        if {TRANSPOSE, FLIP_H, FLIP_V} & set(names):
            transpose, flip_h, flip_v = as_graph_ops(np.zeros(len(positions), np.int8) if codes is None else codes)
        out: dict[str, Any] = {}
        for name in names:
            if name == FRAMES:
                out[name] = self.frames(positions)
            elif name == BOX:
                out[name] = self._boxes[positions]
            elif name == SHAPE:
                out[name] = self._sizes[positions]
            elif name == TRANSPOSE:
                out[name] = transpose
            elif name == FLIP_H:
                out[name] = flip_h.astype(np.int32)
            elif name == FLIP_V:
                out[name] = flip_v.astype(np.int32)
            elif name == TARGET:
                targets = self.table.targets[positions]
                out[name] = np.ascontiguousarray(targets[:, 0] if self.spec.target_size == 1 else targets)
        return out

    def run(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The numpy path: the graph run once on ``inputs`` (from :meth:`inputs` or :meth:`inputs_at`)
        in the calling thread, built on first use. Returns numpy (x, y) as the graph's outputs."""
        with self._lock:
            if self._pipe is None:
                self._pipe = build_pipeline(self.spec, prefetch_queue_depth=1)
                self._pipe.build()
            feed_batch(self._pipe, inputs)
            x, y = self._pipe.run()
        if self.spec.device == "gpu":
            x, y = x.as_cpu(), y.as_cpu()
        return x.as_array(), y.as_array()

    def frames(self, positions: np.ndarray) -> Any:
        """The "frames" input for the tiles at ``positions``: their region stacks (a "regions"
        graph: no pixel is copied) or their crops, cut from the host stacks with one slice per tile
        and zero-padded to the batch's largest box when sizes differ."""
        regions = self.regions[positions]
        if self.spec.source == "regions":
            store = self.device_store if self.device_store is not None else self.store
            return stack_references(store.stacks(np.unique(regions)), regions)
        stacks = self.store.stacks(np.unique(regions))
        sizes = self._sizes[positions]
        height, width = (int(v) for v in sizes.max(axis=0))
        frames, channels = self.spec.frames, self.spec.channels
        ragged = bool((sizes != sizes[0]).any())
        out = (np.zeros if ragged else np.empty)((len(positions), frames, height, width, channels), self.store.dtype)
        boxes = self.table.boxes[positions].tolist()
        for slot, (region, (xmin, ymin, xmax, ymax)) in enumerate(zip(regions.tolist(), boxes)):
            out[slot, :, : ymax - ymin, : xmax - xmin] = stacks[region][:, ymin:ymax, xmin:xmax]
        return out
