"""Decoded region images, bounded in bytes, and the per-tile frame stacks cut from them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from .augment import transform, turned_shape
from .bands import ChannelSpec
from .decode import RegionDecoder
from .index import TileTable
from .validate import ImageSet


class RegionCache:
    """A least-recently-used map of decoded images whose total size stays under ``max_bytes``.

    An image larger than ``max_bytes`` is never kept; ``max_bytes=0`` keeps nothing.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"Expected `cache_bytes` to be >= 0. Received: cache_bytes={max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> np.ndarray | None:
        """The image under ``key``, marked as most recently used, or None."""
        image = self._items.get(key)
        if image is not None:
            self._items.move_to_end(key)
        return image

    def put(self, key: Hashable, image: np.ndarray) -> None:
        """Keep ``image``, dropping the least recently used ones to stay under the bound."""
        if image.nbytes > self.max_bytes or key in self._items:
            return
        while self.nbytes + image.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes
        self._items[key] = image
        self.nbytes += image.nbytes


class FrameSource:
    """Cuts the T frames of tiles out of their region images, decoding each region at most once
    while it stays in the cache. The cache holds only the channels asked for (``channels.select``).

    Thread-safe: the numpy path and the TensorFlow input thread may ask at the same time.
    """

    def __init__(self, table: TileTable, images: ImageSet, decoder: RegionDecoder, cache: RegionCache,
                 channels: ChannelSpec):
        self.table = table
        self.images = images
        self.decoder = decoder
        self.cache = cache
        self.channels = channels
        self._region_cols = np.array([images.region_index[r] for r in table.region_ids], dtype=np.int64)
        self._lock = threading.Lock()
        self.decoded_images = 0

    def frames(self, positions: np.ndarray, labels: range | list[int],
               codes: np.ndarray | None = None, *, dense: bool = False) -> list[np.ndarray] | np.ndarray:
        """The frames of the tiles at ``positions``.

        Args:
            positions: tile positions in the table.
            labels: which labels (indices into the image set's labels), in frame order.
            codes: int (len(positions),) augmentation transform per tile (see ``augment``), applied
                alike to all its frames; None for none.

        Returns:
            one array per tile, (F, h, w, C) with F = len(labels) and (h, w) its box size
            (swapped by a quarter turn); with ``dense``, where all of them have one shape, a
            single (B, F, h, w, C) array instead.
        """
        labels = list(labels)
        boxes = self.table.boxes[positions]
        cols = self._region_cols[positions]
        codes = np.zeros(len(positions), dtype=np.int8) if codes is None else np.asarray(codes)
        channels = self.channels.n_channels
        shapes = [(len(labels), *turned_shape(b[3] - b[1], b[2] - b[0], c), channels) for b, c in zip(boxes, codes)]
        if dense:
            if len(set(shapes)) != 1:
                raise ValueError(f"dense frames need one box shape; this batch has {sorted(set(shapes))}")
            stack = np.empty((len(shapes), *shapes[0]), dtype=self.decoder.dtype)
            out = list(stack)
        else:
            out = [np.empty(shape, dtype=self.decoder.dtype) for shape in shapes]
        wanted: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for slot, col in enumerate(cols):
            for f, t in enumerate(labels):
                wanted.setdefault((t, int(col)), []).append((slot, f))

        with self._lock:
            missing = []
            for key, uses in wanted.items():
                image = self.cache.get(key)
                if image is None:
                    missing.append(key)
                else:
                    self._cut(image, uses, boxes, codes, out)
            step = self.decoder.max_batch
            for start in range(0, len(missing), step):
                keys = missing[start : start + step]
                paths = [self.images.paths[t, c] for t, c in keys]
                shapes = [(int(self.images.heights[t, c]), int(self.images.widths[t, c])) for t, c in keys]
                for key, path, image in zip(keys, paths, self.decoder.decode(paths, shapes)):
                    self.decoded_images += 1
                    image = self.channels.select(image, path)
                    self._cut(image, wanted[key], boxes, codes, out)
                    self.cache.put(key, image)
        return stack if dense else out

    @staticmethod
    def _cut(image: np.ndarray, uses: list[tuple[int, int]], boxes: np.ndarray, codes: np.ndarray,
             out: list[np.ndarray]) -> None:
        for slot, f in uses:
            xmin, ymin, xmax, ymax = boxes[slot]
            crop = image[ymin:ymax, xmin:xmax]
            out[slot][f] = transform(crop, codes[slot]) if codes[slot] else crop
