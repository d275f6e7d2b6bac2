"""The region store: each region's tiles, decoded once and kept while they fit, in host memory and
(for a graph on the GPU) in device memory, and the one cut of a batch's frames out of them.

A region is decoded whole: the images of its T labels, with only the channels used, become one
(T, H, W, C) *stack* in the images' sample type (labels whose images are smaller than the largest
are zero-padded at the bottom and right; boxes are checked against every label's image beforehand,
so padding is never read). What is kept of it is the region's *tiles*:

- as **blocks** (the usual case): for each box size (h, w), the region's tiles of that size cut
  once into one (n, T, h, w, C) array, so a batch is gathered from a few arrays with no per-tile
  slicing (a grid of 256 tiles takes one copy of 9.7 MB);
- as the **stack** itself where the blocks would hold more bytes (tiles that overlap, a stride
  below the tile size): each tile is then sliced from it as a batch asks for it.

The cut (:meth:`RegionTiles.cut`) is written once for NumPy and CuPy arrays alike: the host store
and the device store cut the same way into a (b, T, h, w, C) buffer of their own kind.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bands import ChannelSpec
from .decode import RegionDecoder
from .errors import DecodeError, warn
from .nodata import NodataRule
from .validate import ImageSet, link_outside


class RegionCache:
    """A least-recently-used map of values whose total size (``nbytes``) stays under ``max_bytes``.

    ``max_bytes`` is an int >= 0, checked with the loader's options. A value larger than it is never
    kept; ``max_bytes=0`` keeps nothing.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key``, marked as most recently used, or None."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, item: Any) -> None:
        """Keep ``item``, dropping the least recently used ones to stay under the bound."""
        if item.nbytes > self.max_bytes or key in self._items:
            return
        while self.nbytes + item.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes
        self._items[key] = item
        self.nbytes += item.nbytes

    def shrink(self, max_bytes: int) -> None:
        """Lower the bound to ``max_bytes``, dropping the least recently used values."""
        self.max_bytes = max(0, int(max_bytes))
        while self.nbytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes


@dataclass(frozen=True)
class TileLayout:
    """Where every tile of the table lives among its region's tiles.

    Tiles are grouped by (region, box size); group g holds ``tiles[g]`` (table positions, in table
    order) and, as a block, row k of it is tile ``tiles[g][k]``.

    Attributes:
        regions: int64 (N,) the region (column of the image set) of each tile.
        boxes: int64 (N, 4) ``(xmin, ymin, xmax, ymax)`` of each tile, pixels.
        sizes: int64 (N, 2) ``(h, w)`` of each tile, pixels.
        group: int64 (N,) the group of each tile.
        row: int64 (N,) the row of each tile in its group's block.
        tiles: per group, int64 table positions of its tiles.
        region_groups: per region, its groups.
        stack_shapes: per region, (T, H, W, C) of its stack.
        as_blocks: per region, whether it is kept as blocks (else as its stack).
        itemsize: bytes per sample.
    """

    regions: np.ndarray
    boxes: np.ndarray
    sizes: np.ndarray
    group: np.ndarray
    row: np.ndarray
    tiles: tuple[np.ndarray, ...]
    region_groups: tuple[tuple[int, ...], ...]
    stack_shapes: tuple[tuple[int, int, int, int], ...]
    as_blocks: tuple[bool, ...]
    itemsize: int

    @classmethod
    def plan(cls, regions: np.ndarray, boxes: np.ndarray, stack_shapes: Sequence[tuple[int, int, int, int]],
             itemsize: int) -> TileLayout:
        """The layout of tiles in ``regions`` with ``boxes`` over regions of ``stack_shapes``: a region
        is kept as blocks unless they would hold more bytes than its stack."""
        regions, boxes = np.asarray(regions, dtype=np.int64), np.asarray(boxes, dtype=np.int64)
        sizes = boxes[:, [3, 2]] - boxes[:, [1, 0]]
        key = np.stack([regions, sizes[:, 0], sizes[:, 1]], axis=1)
        names, group = np.unique(key, axis=0, return_inverse=True)
        group = group.reshape(-1)
        order = np.argsort(group, kind="stable")
        starts = np.searchsorted(group[order], np.arange(len(names) + 1))
        tiles = tuple(order[starts[g] : starts[g + 1]] for g in range(len(names)))
        row = np.empty(len(group), dtype=np.int64)
        for members in tiles:
            row[members] = np.arange(len(members))
        region_groups = tuple(tuple(int(g) for g in np.flatnonzero(names[:, 0] == r)) for r in range(len(stack_shapes)))
        as_blocks = []  # blocks unless their pixels (per frame and channel) outnumber the stack's
        for r, (_, h, w, _) in enumerate(stack_shapes):
            blocks = sum(len(tiles[g]) * int(names[g, 1]) * int(names[g, 2]) for g in region_groups[r])
            as_blocks.append(blocks <= h * w)
        return cls(regions, boxes, sizes, group, row, tiles, region_groups, tuple(tuple(s) for s in stack_shapes),
                   tuple(as_blocks), int(itemsize))

    def nbytes(self, region: int) -> int:
        """Bytes a region's tiles are kept in (its blocks, or its stack)."""
        t, h, w, c = self.stack_shapes[region]
        if not self.as_blocks[region]:
            return t * h * w * c * self.itemsize
        return t * c * self.itemsize * int(sum(int(np.prod(self.sizes[self.tiles[g][0]])) * len(self.tiles[g])
                                                for g in self.region_groups[region]))


@dataclass
class RegionTiles:
    """One region's tiles, kept as ``blocks`` (group -> (n, T, h, w, C) array) or as its ``stack``
    (T, H, W, C). NumPy or CuPy arrays; never written to once made."""

    region: int
    blocks: dict[int, Any] | None = None
    stack: Any = None

    @classmethod
    def from_stack(cls, layout: TileLayout, region: int, stack: np.ndarray) -> RegionTiles:
        """The region's tiles cut from its decoded ``stack``, as ``layout`` plans them."""
        if not layout.as_blocks[region]:
            return cls(region, stack=stack)
        blocks = {}
        for g in layout.region_groups[region]:
            members = layout.tiles[g]
            xmin, ymin, xmax, ymax = (int(v) for v in layout.boxes[members[0]])
            block = np.empty((len(members), stack.shape[0], ymax - ymin, xmax - xmin, stack.shape[3]), stack.dtype)
            for k, (x0, y0, x1, y1) in enumerate(layout.boxes[members].tolist()):
                block[k] = stack[:, y0:y1, x0:x1]
            blocks[g] = block
        return cls(region, blocks=blocks)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        if self.blocks is not None:
            return sum(int(b.nbytes) for b in self.blocks.values())
        return int(self.stack.nbytes)

    def map(self, convert: Callable[[Any], Any]) -> RegionTiles:
        """The same tiles with every array passed through ``convert`` (e.g. uploaded to the GPU)."""
        if self.blocks is not None:
            return RegionTiles(self.region, blocks={g: convert(b) for g, b in self.blocks.items()})
        return RegionTiles(self.region, stack=convert(self.stack))

    def cut(self, layout: TileLayout, positions: np.ndarray, slots: np.ndarray, out: Any) -> None:
        """Write the T frames of each tile at table ``positions`` (all of this region) into
        ``out[slots[i], :, :h, :w]``; ``out`` (b, T, H, W, C) is an array of the same kind (NumPy or
        CuPy) and its padding beyond each box is left as it is."""
        if self.blocks is None:
            for slot, (x0, y0, x1, y1) in zip(slots.tolist(), layout.boxes[positions].tolist()):
                out[slot, :, : y1 - y0, : x1 - x0] = self.stack[:, y0:y1, x0:x1]
            return
        groups = layout.group[positions]
        for g in np.unique(groups).tolist():
            block = self.blocks[g]
            mine = groups == g
            rows, where = _like(out, layout.row[positions[mine]]), _like(out, slots[mine])
            if block.shape[2:4] == out.shape[2:4]:
                out[where] = block[rows]
            else:
                out[where, :, : block.shape[2], : block.shape[3]] = block[rows]


def tile_frames(layout: TileLayout, tiles: dict[int, RegionTiles], positions: np.ndarray) -> list[np.ndarray]:
    """The (T, h, w, C) frames of each tile at table ``positions``, from ``tiles`` (region -> its
    tiles, every region of the batch; host arrays), each one contiguous array: a row of its block (a
    view, no copy) or, for a region kept as its stack, a copy of its box."""
    out = []
    for position, region, group, row in zip(positions.tolist(), layout.regions[positions].tolist(),
                                            layout.group[positions].tolist(), layout.row[positions].tolist()):
        kept = tiles[region]
        if kept.blocks is not None:
            out.append(kept.blocks[group][row])
        else:
            x0, y0, x1, y1 = layout.boxes[position].tolist()
            out.append(np.ascontiguousarray(kept.stack[:, y0:y1, x0:x1]))
    return out


def cut_frames(layout: TileLayout, tiles: dict[int, RegionTiles], positions: np.ndarray, out: Any) -> Any:
    """Fill ``out`` (b, T, H, W, C), b = len(positions), with the frames of the tiles at table
    ``positions`` from ``tiles`` (region -> its tiles, every region of the batch), slot i for tile
    ``positions[i]``. On the host, where every box has the frame size of ``out`` and comes from a
    block, each tile's block row is copied into its slot whole (one contiguous copy per tile: 0.7 ms
    for 256 tiles of 7x40x45x3 on a 2-core machine); elsewhere each region gathers its own tiles
    (the code the GPU runs). Returns ``out``."""
    regions = layout.regions[positions]
    if isinstance(out, np.ndarray) and all(t.blocks is not None for t in tiles.values()) \
            and _one_size(layout, positions, out):
        for slot, frames in enumerate(tile_frames(layout, tiles, positions)):  # faster than np.stack's copy
            out[slot] = frames
        return out
    slots = np.arange(len(positions))
    for region in np.unique(regions).tolist():
        mine = regions == region
        tiles[region].cut(layout, positions[mine], slots[mine], out)
    return out


def _one_size(layout: TileLayout, positions: np.ndarray, out: Any) -> bool:
    """Whether every box at ``positions`` has the frame size of ``out``."""
    return bool((layout.sizes[positions] == out.shape[2:4]).all())


def _like(out: Any, index: np.ndarray) -> Any:
    """``index`` as an index array of ``out``'s library (NumPy, or CuPy on the device)."""
    if isinstance(out, np.ndarray):
        return index
    return import_cupy().asarray(index)


class RegionStore:
    """Region tiles in host memory, decoded on demand and cached within a byte bound.

    Thread-safe: the numpy path and the TensorFlow input thread may ask at the same time.

    Args:
        images: the checked image set (paths and sizes of every label of every region).
        decoder: decodes whole images.
        channels: which channels to keep.
        regions: int64 (N,) the region of each tile of the table.
        boxes: int64 (N, 4) the box of each tile.
        cache_bytes: bound of the cache of region tiles, in bytes.
        nodata: which samples are invalid and what they become, applied once per decoded image.
    """

    def __init__(self, images: ImageSet, decoder: RegionDecoder, channels: ChannelSpec, regions: np.ndarray,
                 boxes: np.ndarray, cache_bytes: int, nodata: NodataRule | None = None):
        self.images = images
        self.nodata = nodata or NodataRule()
        self._nan_reported: set[str] = set()
        self.decoder = decoder
        self.channels = channels
        self.cache = RegionCache(cache_bytes)
        self.decoded_images = 0
        self._lock = threading.Lock()
        t = images.paths.shape[0]
        stack_shapes = [(t, int(images.heights[:, r].max()), int(images.widths[:, r].max()), channels.kept)
                        for r in range(images.paths.shape[1])]
        self.layout = TileLayout.plan(regions, boxes, stack_shapes, self.dtype.itemsize)

    @property
    def dtype(self) -> np.dtype:
        """The sample type of the frames."""
        return self.decoder.dtype

    def regions_within(self, max_bytes: int) -> int:
        """How many of the largest regions' tiles fit in ``max_bytes`` (at least 1)."""
        largest = max(self.layout.nbytes(r) for r in range(len(self.layout.stack_shapes)))
        return max(1, int(max_bytes) // max(largest, 1))

    def tiles(self, regions: Sequence[int]) -> dict[int, RegionTiles]:
        """The tiles of ``regions`` (region columns), decoding the regions not in the cache. What is
        returned stays valid as long as it is referenced, cached or not; it is never written to."""
        wanted = sorted({int(r) for r in regions})
        with self._lock:
            out = {region: kept for region in wanted if (kept := self.cache.get(region)) is not None}
            for region in wanted:  # after every hit is held: a decode may evict a region of this batch
                if region not in out:
                    out[region] = RegionTiles.from_stack(self.layout, region, self._decode(region))
                    self.cache.put(region, out[region])
        return out

    def cut(self, positions: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out`` (b, T, H, W, C) filled with the frames of the tiles at table ``positions``."""
        return cut_frames(self.layout, self.tiles(self.layout.regions[positions]), positions, out)

    def frames_of(self, positions: np.ndarray) -> list[np.ndarray]:
        """The frames of each tile at table ``positions`` as its own contiguous array (see
        :func:`tile_frames`)."""
        return tile_frames(self.layout, self.tiles(self.layout.regions[positions]), positions)

    def _decode(self, region: int) -> np.ndarray:
        labels = range(self.images.paths.shape[0])
        paths = [str(self.images.paths[t, region]) for t in labels]
        if self.images.root is not None:  # a link may have been redirected since the loader was built
            for path in paths:
                if why := link_outside(path, self.images.root):
                    raise DecodeError(path, f"it changed since the loader was built: {why}")
        shapes = [(int(self.images.heights[t, region]), int(self.images.widths[t, region])) for t in labels]
        stack = np.zeros(self.layout.stack_shapes[region], dtype=self.dtype)
        step = self.decoder.max_batch
        for start in range(0, len(paths), step):
            chunk = slice(start, start + step)
            for t, path, image in zip(labels[chunk], paths[chunk], self.decoder.decode(paths[chunk], shapes[chunk])):
                self.decoded_images += 1
                if image.shape[2] != self.images.channels:
                    raise DecodeError(path, f"has {image.shape[2]} band(s) now; it had {self.images.channels} when "
                                            "the loader was built (was the file replaced?)")
                image = self.nodata.apply(image, path, self.images.nodata.get(path), self._nan_reported)
                picked = self.channels.select(image, path)
                stack[t, : picked.shape[0], : picked.shape[1]] = picked
        return stack


class DeviceRegionStore:
    """Region tiles resident in GPU memory (CuPy arrays), uploaded once per region from the host
    store and kept least-recently-used within ``cache_bytes`` of device memory; a batch's frames
    are cut from them on the device into a buffer of the caller's.

    Uploads and cuts run on one CUDA stream (``stream``), so an evicted region's memory, which CuPy's
    pool hands out again only to work on that stream, is never reused before a cut that reads it.

    Args:
        host: the host store that decodes the regions.
        device_id: the GPU.
        cache_bytes: bound in bytes; None takes half of the device's free memory at construction.

    Attributes:
        cut_with: the function that cuts a batch, ``(layout, tiles, positions, out) -> out``, called on
            :attr:`stream`: :func:`cut_frames` (CuPy operations per region of the batch); the GPU check
            also measures ``cut_kernel.cut_with_kernel`` (one launch per batch).
    """

    def __init__(self, host: RegionStore, device_id: int, cache_bytes: int | None = None):
        cp = import_cupy()
        self.host = host
        self.device_id = int(device_id)
        with cp.cuda.Device(self.device_id):
            if cache_bytes is None:
                free, _ = cp.cuda.runtime.memGetInfo()
                cache_bytes = int(free) // 2
            self.stream = cp.cuda.Stream(non_blocking=True)
        self.cache = RegionCache(cache_bytes)
        self.cut_with: Callable[[TileLayout, dict[int, RegionTiles], np.ndarray, Any], Any] = cut_frames
        self._lock = threading.Lock()

    def tiles(self, regions: Sequence[int]) -> dict[int, RegionTiles]:
        """The device tiles of ``regions``, uploading those not resident (on :attr:`stream`)."""
        cp = import_cupy()
        wanted = sorted({int(r) for r in regions})
        out: dict[int, RegionTiles] = {}
        with self._lock, cp.cuda.Device(self.device_id), self.stream:
            missing = []
            for region in wanted:
                resident = self.cache.get(region)
                if resident is None:
                    missing.append(region)
                else:
                    out[region] = resident
            if missing:
                host = self.host.tiles(missing)
                for region in missing:
                    out[region] = self._upload(host[region])
                    self.cache.put(region, out[region])
        return out

    def cut(self, positions: np.ndarray, out: Any) -> Any:
        """``out`` (b, T, H, W, C), a CuPy array, filled on :attr:`stream` with the frames of the
        tiles at table ``positions``. The work is queued, not waited for."""
        cp = import_cupy()
        tiles = self.tiles(self.host.layout.regions[positions])
        with cp.cuda.Device(self.device_id), self.stream:
            return self.cut_with(self.host.layout, tiles, positions, out)

    def _upload(self, tiles: RegionTiles) -> RegionTiles:
        """``tiles`` copied to the device; on an out-of-memory error the cache shrinks to half of what it
        holds (with a warning naming the region), CuPy's pool lets its free blocks go, and the copy is
        tried once more."""
        cp = import_cupy()
        try:
            return tiles.map(cp.asarray)
        except cp.cuda.memory.OutOfMemoryError:
            path = str(self.host.images.paths[0, tiles.region])
            if self.cache.nbytes:  # make room: half of what is resident goes
                shrunk = self.cache.nbytes // 2
                warn(f"dalidw: the GPU ran out of memory while uploading the region of {path} ({tiles.nbytes} "
                     f"bytes); the device cache shrinks from {self.cache.max_bytes} to {shrunk} bytes "
                     "(device_cache_bytes).")
                self.cache.shrink(shrunk)
            cp.get_default_memory_pool().free_all_blocks()
            try:
                return tiles.map(cp.asarray)
            except cp.cuda.memory.OutOfMemoryError:
                raise DecodeError(path, f"its region's tiles ({tiles.nbytes} bytes) do not fit in GPU memory") from None


def import_cupy():
    """CuPy, or an ImportError saying what to install."""
    try:
        import cupy
    except ImportError:
        raise ImportError("The GPU region store needs CuPy: pip install 'cupy-cuda12x>=13' "
                          "(or pip install 'dalidw[gpu]')") from None
    return cupy
