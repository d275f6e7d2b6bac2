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

**Target shape** (:func:`target_shape`). One target column gives y (B,); k columns give y (B, k);
"last-image" gives the last frame, (B, H, W, C), and no target input.

**Per-replica batch size** (:func:`per_replica_batch`). Under a strategy with R replicas,
``batch_size`` is the global batch and each replica's shard has batches of ``batch_size // R``,
which must divide evenly.

The feed also chooses how a batch's frames reach DALI: on the CPU as each tile's own array (a block
row of the region store, no copy); on a GPU with the regions resident there
(:class:`regions.DeviceRegionStore`) cut on the device into one contiguous device buffer; for
DALI's TensorFlow plugin cut on the host into one contiguous host buffer.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

from .augment import as_graph_ops
from .bands import ChannelSpec
from .errors import DataError, OptionError, warn
from .index import TileTable
from .order import EpochOrder
from .pipeline import (
    FLIP_H,
    FLIP_V,
    FRAMES,
    GPU_GRAPH_THREADS,
    SHAPE,
    TARGET,
    TRANSPOSE,
    GraphSpec,
    build_pipeline,
    feed_batch,
    sample_list,
)
from .regions import DeviceRegionStore, RegionStore, import_cupy


def per_replica_batch(batch_size: int, replicas: int) -> int:
    """The batch of each of ``replicas`` replicas for a global ``batch_size``.

    Raises:
        OptionError: ``batch_size`` does not split evenly.
    """
    if replicas < 1 or batch_size % replicas:
        raise OptionError(f"batch_size={batch_size} is the global batch: it must split evenly over "
                          f"{replicas} replicas")
    return batch_size // replicas


def target_shape(target_size: int, split_last: bool, dim: tuple[int, int], out_channels: int) -> tuple[int, ...]:
    """The shape of one sample's y: () for one target column, (k,) for k, (H, W, C) for the last
    frame ("last-image", ``split_last``)."""
    if split_last:
        return (*dim, out_channels)
    return () if target_size == 1 else (target_size,)


def graph_spec(*, batch_size: int, dim: tuple[int, int], channels: ChannelSpec, frames: int, dtype: np.dtype,
               gain: tuple[float, ...], offset: tuple[float, ...], interpolation: str, split_last: bool,
               target_size: int, sizes: np.ndarray, augment: tuple[int, ...], device: str, device_id: int | None,
               num_threads: int, frames_from_host: bool = False) -> GraphSpec:
    """The graph of a loader's checked options: the one constructor of :class:`GraphSpec`.

    Args:
        frames: T, labels per tile.
        gain, offset: the affine map per channel (``normalize.affine``).
        target_size: k, target columns (0 for "last-image").
        sizes: int (N, 2) (h, w) of every box, pixels: the graph's frames input, whether boxes
            differ (``ragged``), whether any frame is shrunk (``antialias``) or resized at all.
        augment: the transform codes drawn from (``augment.parse_augment``).
        The others as the loader's options, checked.
    """
    turns = any(c & 1 for c in augment)
    box = (int(sizes[:, 0].max()), int(sizes[:, 1].max()))
    reach = (max(box), max(box)) if turns else box  # a quarter turn swaps h and w
    same = bool((sizes == np.asarray(dim)).all()) and (not turns or dim[0] == dim[1])
    grows = box[0] * box[1] < dim[0] * dim[1]  # the affine map touches fewer samples before the resize
    return GraphSpec(
        batch_size=batch_size, dim=dim, channels=channels.kept, frames=frames, input_dtype=np.dtype(dtype),
        gain=gain, offset=offset, interpolation=interpolation, num_classes=channels.num_classes or 0,
        split_last=split_last, y_shape=target_shape(target_size, split_last, dim, channels.out_channels), box=box,
        device=device, device_id=device_id, num_threads=num_threads, frames_from_host=frames_from_host,
        antialias=bool(reach[0] > dim[0] or reach[1] > dim[1]), ragged=bool((sizes != sizes[0]).any()),
        turns=turns, flips=any(c & 6 for c in augment), resize=not same, affine_first=not same and grows)


def graph_threads(device: str, num_threads: int, user_threads: int | None) -> int:
    """DALI threads of a graph on ``device``: the user's ``num_threads`` where set; else every core
    on the CPU and ``GPU_GRAPH_THREADS`` on the GPU, where its CPU side only reads flags."""
    return user_threads or (num_threads if device == "cpu" else GPU_GRAPH_THREADS)


def device_store(store: RegionStore, device: str, device_id: int | None,
                 cache_bytes: int | None) -> DeviceRegionStore | None:
    """The GPU region store of a graph on ``device``, or None: on the CPU, or (with a warning)
    where CuPy is missing or cannot use the GPU, the frames then cut on the host and copied over by DALI."""
    if device != "gpu":
        return None
    try:
        return DeviceRegionStore(store, device_id, cache_bytes)
    except ImportError as err:
        warn(f"dalidw: {err}. Until then the frames are cut on the host and copied to the GPU batch by batch.")
    except RuntimeError as err:  # CuPy's CUDARuntimeError: it imports but cannot use the GPU (driver, toolkit)
        warn(f"dalidw: CuPy cannot use GPU {device_id} ({type(err).__name__}: {err}); the frames are cut on the "
             "host and copied to the GPU batch by batch.")
    return None


class BatchFeed:
    """The inputs of the DALI graph, batch by batch.

    Args:
        table: the tiles.
        order: which tiles make each batch of each epoch.
        store: the host region store.
        spec: the graph the inputs are for (``spec.inputs`` names them).
        device_store: the GPU region store, where the frames are cut on the GPU.
        device_cache_bytes: its bound (None: half the free device memory), for feeds moved to a GPU.
        cores: DALI threads of a graph moved to the CPU, unless the user set ``user_threads``.
        user_threads: the loader's ``num_threads`` as the user set it (None: the device's default).
    """

    def __init__(self, table: TileTable, order: EpochOrder, store: RegionStore, spec: GraphSpec, *,
                 device_store: DeviceRegionStore | None = None, device_cache_bytes: int | None = None,
                 cores: int = 1, user_threads: int | None = None, errors: list[DataError] | None = None):
        self.table = table
        self.order = order
        self.store = store
        self.spec = spec
        self.device_store = device_store
        self.device_cache_bytes = device_cache_bytes
        self.cores, self.user_threads = cores, user_threads
        self._errors = [] if errors is None else errors  # shared by the feeds moved from this one
        self._pipe, self._lock = None, threading.Lock()
        self._sizes = np.ascontiguousarray(table.sizes, dtype=np.int32)  # (h, w)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.order)

    @property
    def batch_sizes(self) -> np.ndarray:
        """int64 (batches,) tiles in each batch of an epoch (the same every epoch)."""
        return self.order.batch_sizes.copy()

    @property
    def last_error(self) -> DataError | None:
        """The last DataError raised while this feed (or one moved from it) prepared a batch, or None."""
        return self._errors[-1] if self._errors else None

    @property
    def frames_on_device(self) -> bool:
        """Whether the frames are cut on the GPU (into device buffers)."""
        return self.device_store is not None and not self.spec.frames_from_host

    @property
    def stream(self) -> Any:
        """The CUDA stream device frames are cut on, or None."""
        return self.device_store.stream if self.frames_on_device else None

    @property
    def regions(self) -> np.ndarray:
        """int64 (N,) the region (column of the image set) of each tile of the table."""
        return self.store.layout.regions

    @property
    def resident_bytes(self) -> int:
        """Bytes of region tiles held where the frames are cut: on the GPU, else in the host cache."""
        return (self.device_store if self.frames_on_device else self.store).cache.nbytes

    def positions(self, epoch: int, index: int) -> np.ndarray:
        """int64 (b,) table positions of batch ``index`` of ``epoch``, in the order of its x and y."""
        return self.order.positions(epoch, index)

    def box(self) -> tuple[int, int]:
        """(h, w) of the frames input: every box's, unless the graph is ``ragged``."""
        return self.spec.box

    def check_unsharded(self, caller: str) -> None:
        """The one rule for splitting a feed: only an unsharded one splits into shards.

        Raises:
            OptionError: naming ``caller`` (e.g. "shard()"), when this feed is a shard already.
        """
        if self.order.num_shards != 1:
            raise OptionError(f"{caller} splits an unsharded loader; this one is already shard "
                              f"{self.order.shard_id} of {self.order.num_shards}: build it without "
                              "shard_id/num_shards")

    def moved(self, *, order: EpochOrder | None = None, batch_size: int | None = None, device: str | None = None,
              device_id: int | None = None, host_frames: bool = False) -> BatchFeed:
        """This feed with another order, batch size or device, sharing the table, the host store and
        the record of errors. What follows from the device follows it: the graph's threads, and where
        the frames are cut (on a GPU, from its resident regions: this feed's device store where it
        is on that GPU, else a new one; on the host with ``host_frames``, as TensorFlow's plugin
        needs, or where CuPy is missing)."""
        device = self.spec.device if device is None else device
        if device_id is None:
            device_id = self.spec.device_id if device == self.spec.device else (0 if device == "gpu" else None)
        if device == "cpu" or host_frames:
            on_device = None
        elif self.device_store is not None and self.device_store.device_id == device_id:
            on_device = self.device_store
        else:
            on_device = device_store(self.store, device, device_id, self.device_cache_bytes)
        spec = dataclasses.replace(
            self.spec, batch_size=self.spec.batch_size if batch_size is None else batch_size, device=device,
            device_id=device_id, num_threads=graph_threads(device, self.cores, self.user_threads),
            frames_from_host=device == "gpu" and on_device is None)
        return self._derived(order or self.order, spec, on_device)

    def with_graph(self, **changes: Any) -> BatchFeed:
        """This feed (sharing everything, the device store too) with graph spec fields changed: for
        tools that compare variants of the graph, e.g. ``resize_minibatch``."""
        return self._derived(self.order, dataclasses.replace(self.spec, **changes), self.device_store)

    def _derived(self, order: EpochOrder, spec: GraphSpec, on_device: DeviceRegionStore | None) -> BatchFeed:
        """A feed of ``order``, ``spec`` and ``on_device`` sharing this one's table, host store, bounds,
        threads and record of errors."""
        return BatchFeed(self.table, order, self.store, spec, device_store=on_device,
                         device_cache_bytes=self.device_cache_bytes, cores=self.cores,
                         user_threads=self.user_threads, errors=self._errors)

    def for_shard(self, shard_id: int, num_shards: int, *, batch_size: int, device: str,
                  device_id: int | None, host_frames: bool = False) -> BatchFeed:
        """The feed of shard ``shard_id`` of ``num_shards`` of this feed, its graph on ``device``
        (see :meth:`moved`). The caller checks first, before it resolves a device or builds
        anything: :meth:`check_unsharded` and ``options.check_shard``."""
        order = self.order.for_shard(shard_id, num_shards, batch_size=batch_size)
        return self.moved(order=order, batch_size=batch_size, device=device, device_id=device_id,
                          host_frames=host_frames)

    def new_frames(self, batch: int, *, host: bool = False) -> Any:
        """An empty "frames" buffer for ``batch`` samples: a CuPy array where the frames are cut on the
        GPU (:attr:`frames_on_device`, unless ``host``), else a NumPy array."""
        shape, dtype = self.spec.frames_shape(batch), self.store.dtype
        if self.frames_on_device and not host:
            cupy = import_cupy()
            with cupy.cuda.Device(self.device_store.device_id), self.device_store.stream:
                return cupy.empty(shape, dtype)
        return np.empty(shape, dtype)

    def inputs(self, epoch: int, index: int, names: tuple[str, ...] | None = None, *,
               frames: Any = None) -> dict[str, Any]:
        """The graph inputs of batch ``index`` of ``epoch`` (those in ``names``, default all): see
        :meth:`inputs_at`."""
        positions = self.order.positions(epoch, index)
        names = self.spec.inputs if names is None else names
        wants_codes = bool({TRANSPOSE, FLIP_H, FLIP_V} & set(names))
        return self.inputs_at(positions, self.order.codes(epoch, positions) if wants_codes else None, names,
                              frames=frames)

    def inputs_at(self, positions: np.ndarray, codes: np.ndarray | None, names: tuple[str, ...] | None = None, *,
                  frames: Any = None) -> dict[str, Any]:
        """The graph inputs for the tiles at table ``positions`` with augmentation ``codes`` (None: none).

        Args:
            frames: a buffer to cut the frames into, (b, T, h, w, C) as :meth:`new_frames` makes
                them; None: the feed's own choice (:meth:`frames`).

        Returns:
            name -> a batch: "frames" (see :meth:`frames`), "shape" int32 (b, 2) as (h, w),
            "transpose" bool (b,), "flip_h" and "flip_v" int32 (b,), "target" float32
            (b, *spec.y_shape).

        Raises:
            DataError: a region cannot be decoded (a DecodeError naming its file); also kept as
                :attr:`last_error`, for the callers that only see it wrapped in another error.
        """
        names = self.spec.inputs if names is None else names
        if {TRANSPOSE, FLIP_H, FLIP_V} & set(names):
            transpose, flip_h, flip_v = as_graph_ops(np.zeros(len(positions), np.int8) if codes is None else codes)
        out: dict[str, Any] = {}
        for name in names:
            if name == FRAMES:
                out[name] = self.frames(positions, frames)
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
                out[name] = np.ascontiguousarray(targets.reshape(len(positions), *self.spec.y_shape))
        return out

    def frames(self, positions: np.ndarray, out: Any = None) -> Any:
        """The "frames" input of the tiles at ``positions``.

        Into ``out`` where given: cut on the GPU from the resident regions (queued on
        :attr:`stream`) for a CuPy ``out``, on the host for a NumPy one; (b, T, h, w, C), padded to
        the largest box where boxes differ. Without ``out``: on the CPU, a DALI tensor list of each
        tile's own frames (block rows of the region store, not copied; a tile of a region kept as its
        stack is copied out of it); on the GPU, a new buffer cut as above.

        Raises:
            DataError: as :meth:`inputs_at`.
        """
        try:
            if out is None and self.spec.device == "cpu":
                return sample_list(self.store.frames_of(positions))
            out = self.new_frames(len(positions)) if out is None else out
            if isinstance(out, np.ndarray):
                return self.store.cut(positions, out)
            return self.device_store.cut(positions, out)
        except DataError as err:
            self._errors.append(err)
            raise

    def run(self, inputs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The numpy path: the graph run once on ``inputs`` (from :meth:`inputs` or :meth:`inputs_at`)
        in the calling thread, built on first use. Returns numpy (x, y) as the graph's outputs."""
        with self._lock:
            if self._pipe is None:
                self._pipe = build_pipeline(self.spec, prefetch_queue_depth=1)
                self._pipe.build()
            feed_batch(self._pipe, inputs, cuda_stream=self.stream)
            x, y = self._pipe.run()
        if self.spec.device == "gpu":
            x, y = x.as_cpu(), y.as_cpu()
        return x.as_array(), y.as_array()
