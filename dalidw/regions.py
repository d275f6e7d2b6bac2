"""The region store: each region's frames, decoded once and kept while they fit, in host memory
and (for the GPU graph) in device memory.

The unit of storage is a region *stack*: the images of all T labels of one region, with only the
channels used, as one (T, H, W, C) array in the images' sample type. A tile's T frames are then one
slice of one array, however many labels there are. Labels whose images are smaller than the largest
are zero-padded at the bottom and right; boxes are checked against every label's image beforehand,
so padding is never read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .bands import ChannelSpec
from .decode import RegionDecoder
from .errors import DecodeError, warn
from .nodata import NodataRule
from .validate import ImageSet, link_outside


class RegionCache:
    """A least-recently-used map of arrays whose total size stays under ``max_bytes``.

    ``max_bytes`` is an int >= 0, checked with the loader's options. An array larger than it is never
    kept; ``max_bytes=0`` keeps nothing. Works for numpy and CuPy arrays alike (anything with ``nbytes``).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        """The array under ``key``, marked as most recently used, or None."""
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
        """Lower the bound to ``max_bytes``, dropping the least recently used arrays."""
        self.max_bytes = max(0, int(max_bytes))
        while self.nbytes > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes


class RegionStore:
    """Region stacks (T, H, W, C) in host memory, decoded on demand and cached within a byte bound.

    Thread-safe: the numpy path and the TensorFlow input thread may ask at the same time.

    Args:
        images: the checked image set (paths and sizes of every label of every region).
        decoder: decodes whole images.
        channels: which channels to keep.
        cache_bytes: bound of the cache of stacks, in bytes.
        nodata: which samples are invalid and what they become, applied once per decoded image.
    """

    def __init__(self, images: ImageSet, decoder: RegionDecoder, channels: ChannelSpec, cache_bytes: int,
                 nodata: NodataRule | None = None):
        self.images = images
        self.nodata = nodata or NodataRule()
        self._nan_reported: set[str] = set()
        self.decoder = decoder
        self.channels = channels
        self.cache = RegionCache(cache_bytes)
        self.decoded_images = 0
        self._lock = threading.Lock()
        t = images.paths.shape[0]
        self.stack_shapes = [(t, int(images.heights[:, r].max()), int(images.widths[:, r].max()), channels.kept)
                             for r in range(images.paths.shape[1])]

    @property
    def dtype(self) -> np.dtype:
        """The sample type of the stacks."""
        return self.decoder.dtype

    def stack_nbytes(self, region: int) -> int:
        """Bytes of region ``region``'s stack."""
        return int(np.prod(self.stack_shapes[region])) * self.dtype.itemsize

    def regions_within(self, max_bytes: int) -> int:
        """How many of the largest region stacks fit in ``max_bytes`` (at least 1)."""
        largest = max(self.stack_nbytes(r) for r in range(len(self.stack_shapes)))
        return max(1, int(max_bytes) // max(largest, 1))

    def stacks(self, regions: Sequence[int]) -> dict[int, np.ndarray]:
        """The stacks of ``regions`` (region columns), decoding those not in the cache.

        The returned stacks stay valid as long as they are referenced, cached or not; they are
        never written to after decoding.
        """
        wanted = sorted({int(r) for r in regions})
        out: dict[int, np.ndarray] = {}
        with self._lock:
            missing = []
            for region in wanted:
                stack = self.cache.get(region)
                if stack is None:
                    missing.append(region)
                else:
                    out[region] = stack
            for region in missing:
                out[region] = self._decode(region)
                self.cache.put(region, out[region])
        return out

    def _decode(self, region: int) -> np.ndarray:
        labels = range(self.images.paths.shape[0])
        paths = [str(self.images.paths[t, region]) for t in labels]
        if self.images.root is not None:  # a link may have been redirected since the loader was built
            for path in paths:
                if why := link_outside(path, self.images.root):
                    raise DecodeError(path, f"it changed since the loader was built: {why}")
        shapes = [(int(self.images.heights[t, region]), int(self.images.widths[t, region])) for t in labels]
        stack = np.zeros(self.stack_shapes[region], dtype=self.dtype)
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
    """Region stacks resident in GPU memory (CuPy arrays), uploaded once per region from the host
    store and kept least-recently-used within ``cache_bytes`` of device memory.

    CuPy holds the arrays because DALI's GPU external source takes any ``__cuda_array_interface__``
    array without a copy, and CuPy's allocator is separate from the DALI pipeline's own pools, so a
    stack outlives the iteration that uploaded it.

    Args:
        host: the host store that decodes the stacks.
        device_id: the GPU.
        cache_bytes: bound in bytes; None takes half of the device's free memory at construction.
    """

    def __init__(self, host: RegionStore, device_id: int, cache_bytes: int | None = None):
        cp = import_cupy()
        self.host = host
        self.device_id = int(device_id)
        with cp.cuda.Device(self.device_id):
            if cache_bytes is None:
                free, _ = cp.cuda.runtime.memGetInfo()
                cache_bytes = int(free) // 2
        self.cache = RegionCache(cache_bytes)
        self._lock = threading.Lock()

    def stacks(self, regions: Sequence[int]) -> dict[int, Any]:
        """The device stacks of ``regions``, uploading those not resident."""
        cp = import_cupy()
        wanted = sorted({int(r) for r in regions})
        out: dict[int, Any] = {}
        with self._lock, cp.cuda.Device(self.device_id):
            for region in wanted:
                resident = self.cache.get(region)
                if resident is not None:
                    out[region] = resident
            missing = [r for r in wanted if r not in out]
            if missing:
                host = self.host.stacks(missing)
                for region in missing:
                    out[region] = self._upload(region, host[region])
                    self.cache.put(region, out[region])
                cp.cuda.get_current_stream().synchronize()  # uploaded before DALI reads them on its own stream
        return out

    def _upload(self, region: int, stack: np.ndarray) -> Any:
        cp = import_cupy()
        try:
            device = cp.asarray(stack)
        except cp.cuda.memory.OutOfMemoryError:
            shrunk = self.cache.nbytes // 2
            warn(f"dalidw: the GPU ran out of memory while uploading a region; the device cache shrinks "
                          f"from {self.cache.max_bytes} to {shrunk} bytes (device_cache_bytes).")
            self.cache.shrink(shrunk)
            cp.get_default_memory_pool().free_all_blocks()
            try:
                device = cp.asarray(stack)
            except cp.cuda.memory.OutOfMemoryError:
                path = str(self.host.images.paths[0, region])
                raise DecodeError(path, f"its region ({stack.nbytes} bytes) does not fit in GPU memory") from None
        return device


def import_cupy():
    """CuPy, or an ImportError saying what to install."""
    try:
        import cupy
    except ImportError:
        raise ImportError("The GPU region store needs CuPy: pip install 'cupy-cuda12x>=13' "
                          "(or pip install 'dalidw[gpu]')") from None
    return cupy
